"""Weight initializers with JAX's calling convention: a factory returns ``init(key, shape,
dtype=float64)``.

``variance_scaling(scale, mode, distribution)`` is the general form: the samples have variance
``scale / n`` where ``n`` is the fan-in, the fan-out or their average (``mode``). The fans of
a weight of shape ``(..., in, out)`` are ``in * receptive`` and ``out * receptive``, with
``receptive`` the product of the other dims (the spatial dims of a convolution kernel).
Glorot (Xavier), He (Kaiming) and LeCun are its named cases.

>>> from functrax import random
>>> from functrax.nn import initializers
>>> w = initializers.glorot_normal()(random.key(0), (64, 32))
>>> w.shape, w.dtype.name
((64, 32), 'float64')
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes, lax
from .. import random as _random

__all__ = [
    "zeros", "ones", "constant", "uniform", "normal", "truncated_normal", "variance_scaling",
    "glorot_uniform", "glorot_normal", "xavier_uniform", "xavier_normal", "he_uniform",
    "he_normal", "kaiming_uniform", "kaiming_normal", "lecun_uniform", "lecun_normal",
    "orthogonal",
]


def _shape(shape):
    return core.canonicalize_shape(shape, "initializer shape")


def _dtype(dtype):
    return dtypes.canonicalize(dtype)


def zeros(key, shape, dtype=np.float64):
    """All zeros (the key is ignored)."""
    return lax.full(_shape(shape), 0, _dtype(dtype))


def ones(key, shape, dtype=np.float64):
    """All ones (the key is ignored)."""
    return lax.full(_shape(shape), 1, _dtype(dtype))


def constant(value, dtype=np.float64):
    """An initializer filling with ``value``."""
    def init(key, shape, dtype=dtype):
        return lax.full(_shape(shape), value, _dtype(dtype))
    return init


def uniform(scale=1e-2, dtype=np.float64):
    """Uniform in [0, scale)."""
    def init(key, shape, dtype=dtype):
        return _random.uniform(key, _shape(shape), _dtype(dtype), 0.0, scale)
    return init


def normal(stddev=1e-2, dtype=np.float64):
    """Normal with mean 0 and standard deviation ``stddev``."""
    def init(key, shape, dtype=dtype):
        dtype = _dtype(dtype)
        return lax.mul(_random.normal(key, _shape(shape), dtype), np.array(stddev, dtype))
    return init


def truncated_normal(stddev=1e-2, dtype=np.float64, lower=-2.0, upper=2.0):
    """A normal truncated to [lower, upper] standard deviations, scaled by ``stddev``."""
    def init(key, shape, dtype=dtype):
        dtype = _dtype(dtype)
        z = _random.truncated_normal(key, lower, upper, _shape(shape), dtype)
        return lax.mul(z, np.array(stddev, dtype))
    return init


def _fans(shape, in_axis, out_axis, batch_axis):
    if len(shape) < 2:
        raise ValueError(f"variance_scaling: cannot compute the fans of a weight of shape "
                         f"{shape}: it needs at least 2 dimensions (input and output)")
    nd = len(shape)
    batch = {a % nd for a in ((batch_axis,) if isinstance(batch_axis, int) else batch_axis)}
    in_axes = {a % nd for a in ((in_axis,) if isinstance(in_axis, int) else in_axis)}
    out_axes = {a % nd for a in ((out_axis,) if isinstance(out_axis, int) else out_axis)}
    fan_in_size = int(np.prod([shape[a] for a in in_axes], dtype=np.int64))
    fan_out_size = int(np.prod([shape[a] for a in out_axes], dtype=np.int64))
    receptive = int(np.prod([d for i, d in enumerate(shape)
                             if i not in in_axes | out_axes | batch], dtype=np.int64))
    return fan_in_size * receptive, fan_out_size * receptive


# The standard deviation of a unit normal truncated to [-2, 2]: dividing by it makes the
# truncated samples have the requested variance.
_TRUNC_STD = 0.87962566103423978


def variance_scaling(scale, mode, distribution, in_axis=-2, out_axis=-1, batch_axis=(),
                     dtype=np.float64):
    """Samples with variance ``scale / n``: ``mode`` is "fan_in", "fan_out" or "fan_avg";
    ``distribution`` is "truncated_normal", "normal" or "uniform"."""
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: mode must be 'fan_in', 'fan_out' or 'fan_avg', "
                         f"got {mode!r}")
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(f"variance_scaling: distribution must be 'truncated_normal', 'normal' "
                         f"or 'uniform', got {distribution!r}")

    def init(key, shape, dtype=dtype):
        shape = _shape(shape)
        dtype = _dtype(dtype)
        fan_in, fan_out = _fans(shape, in_axis, out_axis, batch_axis)
        denom = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(denom, 1)
        if distribution == "truncated_normal":
            z = _random.truncated_normal(key, -2.0, 2.0, shape, dtype)
            return lax.mul(z, np.array(np.sqrt(variance) / _TRUNC_STD, dtype))
        if distribution == "normal":
            return lax.mul(_random.normal(key, shape, dtype), np.array(np.sqrt(variance), dtype))
        limit = np.array(np.sqrt(3.0 * variance), dtype)
        return _random.uniform(key, shape, dtype, -limit, limit)
    return init


def glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=(), dtype=np.float64):
    """Uniform with variance 1 / fan_avg (Glorot & Bengio, 2010)."""
    return variance_scaling(1.0, "fan_avg", "uniform", in_axis, out_axis, batch_axis, dtype)


def glorot_normal(in_axis=-2, out_axis=-1, batch_axis=(), dtype=np.float64):
    """Truncated normal with variance 1 / fan_avg."""
    return variance_scaling(1.0, "fan_avg", "truncated_normal", in_axis, out_axis, batch_axis,
                            dtype)


def lecun_uniform(in_axis=-2, out_axis=-1, batch_axis=(), dtype=np.float64):
    """Uniform with variance 1 / fan_in."""
    return variance_scaling(1.0, "fan_in", "uniform", in_axis, out_axis, batch_axis, dtype)


def lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(), dtype=np.float64):
    """Truncated normal with variance 1 / fan_in."""
    return variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis,
                            dtype)


def he_uniform(in_axis=-2, out_axis=-1, batch_axis=(), dtype=np.float64):
    """Uniform with variance 2 / fan_in (He et al., 2015), for ReLU networks."""
    return variance_scaling(2.0, "fan_in", "uniform", in_axis, out_axis, batch_axis, dtype)


def he_normal(in_axis=-2, out_axis=-1, batch_axis=(), dtype=np.float64):
    """Truncated normal with variance 2 / fan_in."""
    return variance_scaling(2.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis,
                            dtype)


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal


def orthogonal(scale=1.0, column_axis=-1, dtype=np.float64):
    """A (scaled) matrix with orthonormal columns, or rows when there are fewer rows than
    columns: the Q of the QR decomposition of a normal matrix, signs fixed by R's diagonal so
    that the distribution is uniform (Haar). Dims other than ``column_axis`` are flattened
    into rows."""
    def init(key, shape, dtype=dtype):
        shape = _shape(shape)
        dtype = _dtype(dtype)
        if len(shape) < 2:
            raise ValueError(f"orthogonal: the shape {shape} needs at least 2 dimensions")
        col = column_axis % len(shape)
        n_cols = shape[col]
        n_rows = int(np.prod(shape, dtype=np.int64)) // max(n_cols, 1)
        wide = n_rows < n_cols
        mat_shape = (n_cols, n_rows) if wide else (n_rows, n_cols)
        a = _random.normal(key, mat_shape, dtype)
        q, r = lax.linalg.qr(a, full_matrices=False)
        k = min(mat_shape)
        diag = lax.reduce_sum(lax.mul(r, lax.convert_element_type(
            lax.eq(lax.broadcasted_iota(np.int32, (k, k), 0),
                   lax.broadcasted_iota(np.int32, (k, k), 1)), dtype)), (0,))
        # sign(0) would zero a column: use +1 there.
        signs = lax.select(lax.ge(diag, np.array(0, dtype)), lax.full((k,), 1, dtype),
                           lax.full((k,), -1, dtype))
        q = lax.mul(q, lax.broadcast_in_dim(signs, _shape_of(q), (1,)))
        if wide:
            q = lax.transpose(q, (1, 0))
        rest = shape[:col] + shape[col + 1:]
        q = lax.reshape(q, rest + (n_cols,))
        perm = list(range(len(rest)))
        perm.insert(col, len(rest))
        q = lax.transpose(q, tuple(perm))
        return lax.mul(q, np.array(scale, dtype))
    return init


def _shape_of(x):
    return core.get_aval(x).shape
