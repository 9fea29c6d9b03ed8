"""``functrax.nn``: activation functions and friends, numerically stable at extreme inputs.

Every function is written with ``functrax.lax`` operations, so it traces, batches and
differentiates to any order. Where a textbook formula overflows or cancels (softplus,
log_sigmoid, log_softmax, logsumexp, elu, ...), the function is written so that the unused
branch of a ``select`` never sees an input that overflows: values *and* gradients stay finite
(``softplus(1000.) == 1000.`` with derivative 1, ``log_softmax([1000., 0.]) == [0., -1000.]``,
``logsumexp`` of ``-inf`` entries). Kinks take JAX's conventions: ``relu'(0) == 0``,
``relu6'`` is 0 at 0 and 6.

``functrax.nn.initializers`` holds the weight initializers (``glorot_normal()``, ...).

>>> import functrax, functrax.numpy as fnp
>>> from functrax import nn
>>> float(nn.softplus(1000.0)), float(functrax.grad(nn.softplus)(1000.0))
(1000.0, 1.0)
>>> nn.log_softmax(fnp.array([1000.0, 0.0])).tolist()
[0.0, -1000.0]
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes, lax
from ..core import get_aval
from . import initializers  # noqa: F401

__all__ = [
    "relu", "relu6", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "swish", "sigmoid",
    "log_sigmoid", "softplus", "soft_sign", "hard_tanh", "hard_sigmoid", "hard_silu",
    "hard_swish", "glu", "softmax", "log_softmax", "logsumexp", "one_hot", "standardize",
    "initializers",
]


def _float(x):
    """x as an array of an inexact dtype (integers and booleans become float64)."""
    aval = get_aval(x)
    if not dtypes.is_inexact(aval.dtype):
        return lax.convert_element_type(x, dtypes.default_float, weak_type=aval.weak_type)
    return x


def _const(x, v):
    """A scalar of x's dtype (keeps float32 inputs float32)."""
    return np.array(v, get_aval(x).dtype)


def _zeros(x):
    aval = get_aval(x)
    return lax.full(aval.shape, 0, aval.dtype)


def _axes(x, axis):
    ndim = get_aval(x).ndim
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of bounds for an array of rank {ndim}")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _keep(reduced, shape, axes):
    """A reduction result broadcast back to ``shape`` (as keepdims then broadcasting)."""
    kept = tuple(i for i in range(len(shape)) if i not in axes)
    return lax.broadcast_in_dim(reduced, shape, kept)


def _keepdims_shape(shape, axes):
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


# ---------------------------------------------------------------------------------------------
# Elementwise activations


def relu(x):
    """max(x, 0), with derivative 0 at 0 (JAX's convention)."""
    return lax.select(lax.gt(x, _const(x, 0)), x, _zeros(x))


def relu6(x):
    """min(max(x, 0), 6), with derivative 0 at both kinks (JAX's convention)."""
    zero, six = _const(x, 0), _const(x, 6)
    inside = lax.bitwise_and(lax.gt(x, zero), lax.lt(x, six))
    edge = lax.select(lax.ge(x, six), lax.full_like(x, 6), _zeros(x))
    return lax.select(inside, x, edge)


def leaky_relu(x, negative_slope=1e-2):
    """x where x >= 0, else negative_slope * x."""
    x = _float(x)
    return lax.select(lax.ge(x, _const(x, 0)), x, lax.mul(_const(x, negative_slope), x))


def _positive_and_safe(x):
    """(x > 0, x clamped to <= 0): exp of the clamped value never overflows, so the branch
    that is not selected has a finite value and a finite gradient."""
    pos = lax.gt(x, _const(x, 0))
    return pos, lax.select(pos, _zeros(x), x)


def elu(x, alpha=1.0):
    """x where x > 0, else alpha * (exp(x) - 1)."""
    x = _float(x)
    pos, safe = _positive_and_safe(x)
    return lax.select(pos, x, lax.mul(_const(x, alpha), lax.expm1(safe)))


def celu(x, alpha=1.0):
    """x where x > 0, else alpha * (exp(x / alpha) - 1)."""
    x = _float(x)
    pos, safe = _positive_and_safe(x)
    return lax.select(pos, x, lax.mul(_const(x, alpha),
                                      lax.expm1(lax.div(safe, _const(x, alpha)))))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(x):
    """Scaled ELU with the self-normalizing constants."""
    x = _float(x)
    return lax.mul(_const(x, _SELU_SCALE), elu(x, _SELU_ALPHA))


def gelu(x, approximate=True):
    """Gaussian error linear unit: ``x * Phi(x)``; with ``approximate=True`` the tanh
    approximation ``x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))``, else the exact
    ``x/2 * erfc(-x / sqrt(2))``."""
    x = _float(x)
    if approximate:
        c = _const(x, math.sqrt(2.0 / math.pi))
        inner = lax.mul(c, lax.add(x, lax.mul(_const(x, 0.044715), lax.integer_pow(x, 3))))
        return lax.mul(lax.mul(_const(x, 0.5), x), lax.add(_const(x, 1), lax.tanh(inner)))
    # erfc(-x/sqrt 2) keeps full relative precision in the far negative tail, where
    # 1 + erf(x/sqrt 2) would cancel to 0.
    return lax.mul(lax.mul(_const(x, 0.5), x),
                   lax.erfc(lax.mul(_const(x, -1.0 / math.sqrt(2.0)), x)))


def sigmoid(x):
    """1 / (1 + exp(-x)), stable at both ends."""
    return lax.logistic(_float(x))


def silu(x):
    """x * sigmoid(x) (also called swish)."""
    x = _float(x)
    return lax.mul(x, lax.logistic(x))


swish = silu


def softplus(x):
    """log(1 + exp(x)), computed as ``x + log1p(exp(-x))`` for x > 0 and ``log1p(exp(x))``
    otherwise, each branch fed an input on which it cannot overflow."""
    x = _float(x)
    pos = lax.gt(x, _const(x, 0))
    x_pos = lax.select(pos, x, _zeros(x))
    x_neg = lax.select(pos, _zeros(x), x)
    big = lax.add(x_pos, lax.log1p(lax.exp(lax.neg(x_pos))))
    small = lax.log1p(lax.exp(x_neg))
    return lax.select(pos, big, small)


def log_sigmoid(x):
    """log(sigmoid(x)) = -softplus(-x), finite for large negative x."""
    x = _float(x)
    return lax.neg(softplus(lax.neg(x)))


def soft_sign(x):
    """x / (|x| + 1)."""
    x = _float(x)
    return lax.div(x, lax.add(lax.abs(x), _const(x, 1)))


def hard_tanh(x):
    """x clipped to [-1, 1]."""
    x = _float(x)
    return lax.clamp(_const(x, -1), x, _const(x, 1))


def hard_sigmoid(x):
    """relu6(x + 3) / 6."""
    x = _float(x)
    return lax.div(relu6(lax.add(x, _const(x, 3))), _const(x, 6))


def hard_silu(x):
    """x * hard_sigmoid(x)."""
    x = _float(x)
    return lax.mul(x, hard_sigmoid(x))


hard_swish = hard_silu


def glu(x, axis=-1):
    """Gated linear unit: the first half of x along ``axis`` times sigmoid of the second."""
    x = _float(x)
    aval = get_aval(x)
    axis = _axes(x, axis)[0]
    n = aval.shape[axis]
    if n % 2:
        raise ValueError(f"glu: axis {axis} of shape {aval.shape} must have an even size")
    a = lax.slice_in_dim(x, 0, n // 2, axis=axis)
    b = lax.slice_in_dim(x, n // 2, n, axis=axis)
    return lax.mul(a, lax.logistic(b))


# ---------------------------------------------------------------------------------------------
# Normalizing functions over an axis


def _safe_max(x, axes):
    """max of x over axes with non-finite maxima replaced by 0: an all -inf slice then gives
    exp(-inf) = 0 rather than NaN, and +inf entries stay +inf."""
    m = lax.reduce_max(x, axes)
    return lax.select(lax.is_finite(m), m, lax.full_like(m, 0))


def _max_shift(x, axes):
    return _keep(_safe_max(x, axes), get_aval(x).shape, axes)


def logsumexp(a, axis=None, b=None, keepdims=False):
    """log(sum(b * exp(a))) over ``axis``, without overflow; ``-inf`` entries contribute 0
    (and receive a zero gradient); an all ``-inf`` slice gives ``-inf``."""
    a = _float(a)
    shape = get_aval(a).shape
    axes = _axes(a, axis)
    m = _safe_max(a, axes)
    e = lax.exp(lax.sub(a, _keep(m, shape, axes)))
    if b is not None:
        e = lax.mul(lax.broadcast_to(_float(b), shape), e)
    out = lax.add(lax.log(lax.reduce_sum(e, axes)), m)
    if keepdims:
        out = lax.reshape(out, _keepdims_shape(shape, axes))
    return out


def log_softmax(x, axis=-1):
    """x - logsumexp(x) over ``axis``: ``log_softmax([1000., 0.]) == [0., -1000.]``."""
    x = _float(x)
    shape = get_aval(x).shape
    axes = _axes(x, axis)
    shifted = lax.sub(x, _max_shift(x, axes))
    lse = lax.log(lax.reduce_sum(lax.exp(shifted), axes))
    return lax.sub(shifted, _keep(lse, shape, axes))


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) over ``axis``, shifted by the maximum so nothing overflows."""
    x = _float(x)
    shape = get_aval(x).shape
    axes = _axes(x, axis)
    e = lax.exp(lax.sub(x, _max_shift(x, axes)))
    return lax.div(e, _keep(lax.reduce_sum(e, axes), shape, axes))


def standardize(x, axis=-1, mean=None, variance=None, epsilon=1e-5):
    """(x - mean) / sqrt(variance + epsilon), the statistics taken over ``axis`` unless
    given (they must then broadcast against x, e.g. computed with keepdims)."""
    x = _float(x)
    shape = get_aval(x).shape
    axes = _axes(x, axis)
    count = float(np.prod([shape[i] for i in axes], dtype=np.int64)) if axes else 1.0
    if mean is None:
        mean = _keep(lax.div(lax.reduce_sum(x, axes), _const(x, count)), shape, axes)
    else:
        mean = lax.broadcast_to(mean, shape)
    centered = lax.sub(x, mean)
    if variance is None:
        variance = _keep(lax.div(lax.reduce_sum(lax.integer_pow(centered, 2), axes),
                                 _const(x, count)), shape, axes)
    else:
        variance = lax.broadcast_to(variance, shape)
    return lax.mul(centered, lax.rsqrt(lax.add(variance, _const(x, epsilon))))


def one_hot(x, num_classes, dtype=np.float64, axis=-1):
    """One-hot encoding of integer ``x``: a new axis (at ``axis``) of size ``num_classes``
    with 1 at index ``x`` and 0 elsewhere (all zeros for out-of-range indices)."""
    aval = get_aval(x)
    num_classes = int(num_classes)
    out_ndim = aval.ndim + 1
    if not -out_ndim <= axis < out_ndim:
        raise ValueError(f"one_hot: axis {axis} is out of bounds for the output of rank "
                         f"{out_ndim}")
    axis = axis % out_ndim
    out_shape = aval.shape[:axis] + (num_classes,) + aval.shape[axis:]
    dims = tuple(i for i in range(out_ndim) if i != axis)
    xb = lax.broadcast_in_dim(x, out_shape, dims)
    classes = lax.broadcasted_iota(aval.dtype if dtypes.is_integer(aval.dtype) else np.int64,
                                   out_shape, axis)
    if not dtypes.is_integer(aval.dtype):
        classes = lax.convert_element_type(classes, aval.dtype)
    return lax.convert_element_type(lax.eq(xb, classes), dtypes.canonicalize(dtype))
