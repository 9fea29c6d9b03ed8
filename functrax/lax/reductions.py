"""Reductions over axes: sum, product, max, min, the logical/bitwise and, or, xor, and the
index reductions argmax and argmin.

``axes`` are normalized by the wrappers (non-negative, sorted, unique) before ``bind``; the
result keeps the operand's dtype (the numpy layer does numpy's widening of small integers).
Gradients: reduce_max/reduce_min share the tangent evenly among tied extrema; reduce_prod
multiplies each tangent by the product of the *other* elements, computed from exclusive
prefix and suffix products, so zeros in the input are handled exactly (no division by x).

>>> import numpy as np
>>> from functrax import lax
>>> lax.reduce_sum(np.ones((2, 3)), axes=(1,)).tolist()
[3.0, 3.0]
>>> lax.argmax(np.array([[1.0, 3.0, 2.0]]), axis=1, index_dtype=np.int32).tolist()
[1]
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ._util import array_namespace, check_axes
from . import elementwise as ew
from .structural import broadcast_in_dim, convert_element_type, reshape, transpose

__all__ = ["reduce_sum", "reduce_prod", "reduce_max", "reduce_min", "reduce_and", "reduce_or",
           "reduce_xor", "argmax", "argmin", "reduce_sum_p", "reduce_prod_p", "reduce_max_p",
           "reduce_min_p", "reduce_and_p", "reduce_or_p", "reduce_xor_p", "argmax_p",
           "argmin_p"]


def _reduce_abstract_eval(name, require=None, require_msg=""):
    def abstract_eval(x, *, axes):
        axes_n = check_axes(name, axes, x.ndim)
        if tuple(sorted(axes_n)) != tuple(axes):
            raise ValueError(f"{name}: axes must be normalized (non-negative, sorted, unique), "
                             f"got {axes}")
        if require is not None and not require(x.dtype):
            raise TypeError(f"{name}: {require_msg} (got {x.dtype.name})")
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return ShapedArray(shape, x.dtype, x.weak_type)
    return abstract_eval


def _normalize_axes(x, axes, name="reduce"):
    ndim = x.ndim if isinstance(x, np.ndarray) else get_aval(x).ndim
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (axes,)
    try:
        return tuple(sorted(check_axes(name, axes, ndim)))
    except ValueError as e:
        raise core._locate(e) from None


def _kept_dims(ndim, axes):
    return tuple(i for i in range(ndim) if i not in axes)


def _int_or_bool(dtype):
    return dtypes.is_integer(dtype) or dtypes.is_bool(dtype)


# ---------------------------------------------------------------------------------------------
# reduce_sum

def _reduce_sum_impl(x, *, axes):
    xp = array_namespace(x)
    x = xp.asarray(x)
    # numpy would widen small ints and bools; lax keeps the operand's dtype.
    return xp.sum(x, axis=axes, dtype=x.dtype)


reduce_sum_p = Primitive("reduce_sum")
reduce_sum_p.def_impl(_reduce_sum_impl)
reduce_sum_p.def_abstract_eval(_reduce_abstract_eval("reduce_sum"))


def reduce_sum(operand, axes=None):
    """Sum over ``axes`` (all axes if None)."""
    return reduce_sum_p.bind(operand, axes=_normalize_axes(operand, axes, "reduce_sum"))


def _reduce_sum_transpose(ct, x, *, axes):
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    return [broadcast_in_dim(ct, x.aval.shape, _kept_dims(x.aval.ndim, axes))]


ad.deflinear(reduce_sum_p, _reduce_sum_transpose)
batching.defreducer(reduce_sum_p)


# ---------------------------------------------------------------------------------------------
# reduce_prod

def _reduce_prod_impl(x, *, axes):
    xp = array_namespace(x)
    x = xp.asarray(x)
    return xp.prod(x, axis=axes, dtype=x.dtype)


reduce_prod_p = Primitive("reduce_prod")
reduce_prod_p.def_impl(_reduce_prod_impl)
reduce_prod_p.def_abstract_eval(_reduce_abstract_eval("reduce_prod"))


def reduce_prod(operand, axes=None):
    """Product over ``axes`` (all axes if None)."""
    return reduce_prod_p.bind(operand, axes=_normalize_axes(operand, axes, "reduce_prod"))


def _reduce_prod_jvp(primals, tangents, *, axes):
    from .cumulative import _shift, cumprod
    (x,), (t,) = primals, tangents
    ans = reduce_prod_p.bind(x, axes=axes)
    if ad.is_zero(t):
        return ans, Zero.from_value(ans)
    # d prod = sum_i t_i * prod_{j != i} x_j; the product of the others is the exclusive
    # prefix product times the exclusive suffix product along the flattened reduced axes.
    aval = get_aval(x)
    kept = _kept_dims(aval.ndim, axes)
    n = int(np.prod([aval.shape[a] for a in axes], dtype=np.int64))
    flat_shape = tuple(aval.shape[k] for k in kept) + (n,)

    def flatten(v):
        return reshape(transpose(v, kept + tuple(axes)), flat_shape)
    xf, tf = flatten(x), flatten(t)
    last = len(flat_shape) - 1
    before = _shift(cumprod(xf, last), last, 1, False)
    after = _shift(cumprod(xf, last, reverse=True), last, 1, True)
    others = ew.mul(before, after)
    return ans, reduce_sum_p.bind(ew.mul(tf, others), axes=(last,))


ad.jvp_rules[reduce_prod_p] = _reduce_prod_jvp
batching.defreducer(reduce_prod_p)


# ---------------------------------------------------------------------------------------------
# reduce_max and reduce_min: the tangent is shared evenly among the maximal elements

def _chooser_jvp(prim):
    def jvp(primals, tangents, *, axes):
        (x,), (t,) = primals, tangents
        ans = prim.bind(x, axes=axes)
        if ad.is_zero(t):
            return ans, Zero.from_value(ans)
        aval = get_aval(x)
        location = ew.eq(x, broadcast_in_dim(ans, aval.shape, _kept_dims(aval.ndim, axes)))
        location = convert_element_type(location, aval.dtype)
        counts = reduce_sum(location, axes)
        return ans, ew.div(reduce_sum(ew.mul(t, location), axes), counts)
    return jvp


def _lowest(dtype):
    if dtypes.is_inexact(dtype):
        return -np.inf
    if dtypes.is_bool(dtype):
        return False
    return np.iinfo(dtype).min


def _highest(dtype):
    if dtypes.is_inexact(dtype):
        return np.inf
    if dtypes.is_bool(dtype):
        return True
    return np.iinfo(dtype).max


def _extremum_impl(name, identity):
    def impl(x, *, axes):
        xp = array_namespace(x)
        x = xp.asarray(x)
        fn = getattr(xp, name)
        if x.size == 0 and x.dtype.kind != "c":
            # An empty reduction gives the identity (-inf for max), as in XLA.
            return fn(x, axis=axes, initial=identity(x.dtype))
        return fn(x, axis=axes)
    return impl


reduce_max_p = Primitive("reduce_max")
reduce_max_p.def_impl(_extremum_impl("max", _lowest))
reduce_max_p.def_abstract_eval(_reduce_abstract_eval("reduce_max"))
ad.jvp_rules[reduce_max_p] = _chooser_jvp(reduce_max_p)
batching.defreducer(reduce_max_p)


def reduce_max(operand, axes=None):
    """Maximum over ``axes`` (NaN propagates; -inf, or the lowest integer, when empty)."""
    return reduce_max_p.bind(operand, axes=_normalize_axes(operand, axes, "reduce_max"))


reduce_min_p = Primitive("reduce_min")
reduce_min_p.def_impl(_extremum_impl("min", _highest))
reduce_min_p.def_abstract_eval(_reduce_abstract_eval("reduce_min"))
ad.jvp_rules[reduce_min_p] = _chooser_jvp(reduce_min_p)
batching.defreducer(reduce_min_p)


def reduce_min(operand, axes=None):
    """Minimum over ``axes`` (NaN propagates; +inf, or the highest integer, when empty)."""
    return reduce_min_p.bind(operand, axes=_normalize_axes(operand, axes, "reduce_min"))


# ---------------------------------------------------------------------------------------------
# reduce_and, reduce_or, reduce_xor: logical on booleans, bitwise on integers

_LOGICAL_MSG = "requires boolean or integer operands"


def _logical_reducer(name, bool_ufunc, int_ufunc):
    def impl(x, *, axes):
        xp = array_namespace(x)
        x = xp.asarray(x)
        ufunc = getattr(xp, bool_ufunc if x.dtype == np.bool_ else int_ufunc)
        return ufunc.reduce(x, axis=axes).astype(x.dtype)
    p = Primitive(name)
    p.def_impl(impl)
    p.def_abstract_eval(_reduce_abstract_eval(name, _int_or_bool, _LOGICAL_MSG))
    ad.defjvp_zero(p)
    batching.defreducer(p)
    return p


reduce_and_p = _logical_reducer("reduce_and", "logical_and", "bitwise_and")
reduce_or_p = _logical_reducer("reduce_or", "logical_or", "bitwise_or")
reduce_xor_p = _logical_reducer("reduce_xor", "logical_xor", "bitwise_xor")


def reduce_and(operand, axes=None):
    """All-true (booleans) or bitwise and (integers) over ``axes``."""
    return reduce_and_p.bind(operand, axes=_normalize_axes(operand, axes, "reduce_and"))


def reduce_or(operand, axes=None):
    """Any-true (booleans) or bitwise or (integers) over ``axes``."""
    return reduce_or_p.bind(operand, axes=_normalize_axes(operand, axes, "reduce_or"))


def reduce_xor(operand, axes=None):
    """Parity (booleans) or bitwise xor (integers) over ``axes``."""
    return reduce_xor_p.bind(operand, axes=_normalize_axes(operand, axes, "reduce_xor"))


# ---------------------------------------------------------------------------------------------
# argmax and argmin: the index of the first extremum along one axis; a NaN counts as the
# extremum (the first NaN wins), as in numpy.

def _arg_abstract_eval(name):
    def abstract_eval(x, *, axes, index_dtype):
        if len(axes) != 1 or not 0 <= axes[0] < x.ndim:
            raise ValueError(f"{name}: axis {axes[0] if len(axes) == 1 else axes} is out of "
                             f"bounds for an operand of shape {x.shape}")
        if x.shape[axes[0]] == 0:
            raise ValueError(f"{name}: cannot take the {name} over the empty axis {axes[0]} "
                             f"of an operand of shape {x.shape}")
        if not dtypes.is_integer(index_dtype):
            raise TypeError(f"{name}: index_dtype must be an integer dtype, got "
                            f"{np.dtype(index_dtype).name}")
        shape = tuple(d for i, d in enumerate(x.shape) if i != axes[0])
        return ShapedArray(shape, index_dtype)
    return abstract_eval


def _arg_primitive(name):
    def impl(x, *, axes, index_dtype):
        xp = array_namespace(x)
        return getattr(xp, name)(xp.asarray(x), axis=axes[0]).astype(index_dtype)
    p = Primitive(name)
    p.def_impl(impl)
    p.def_abstract_eval(_arg_abstract_eval(name))
    ad.defjvp_zero(p)
    batching.defreducer(p)
    return p


argmax_p = _arg_primitive("argmax")
argmin_p = _arg_primitive("argmin")


def _arg_wrapper(p, name, operand, axis, index_dtype):
    ndim = get_aval(operand).ndim
    try:
        (axis,) = check_axes(name, (axis,), ndim)
    except ValueError as e:
        raise core._locate(e) from None
    index_dtype = np.dtype(index_dtype)
    return p.bind(operand, axes=(axis,), index_dtype=index_dtype)


def argmax(operand, axis, index_dtype):
    """Index of the first maximum along ``axis`` (a NaN is the maximum)."""
    return _arg_wrapper(argmax_p, "argmax", operand, axis, index_dtype)


def argmin(operand, axis, index_dtype):
    """Index of the first minimum along ``axis`` (a NaN is the minimum)."""
    return _arg_wrapper(argmin_p, "argmin", operand, axis, index_dtype)
