"""Reductions over axes: sum, max, min (and, in the same style, the rest of the family).

>>> import numpy as np
>>> from functrax import lax
>>> lax.reduce_sum(np.ones((2, 3)), axes=(1,)).tolist()
[3.0, 3.0]
"""
from __future__ import annotations

from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ._util import array_namespace, check_axes
from . import elementwise as ew
from .structural import broadcast_in_dim, convert_element_type


def _reduce_abstract_eval(name):
    def abstract_eval(x, *, axes):
        axes_n = check_axes(name, axes, x.ndim)
        if tuple(axes_n) != tuple(axes):
            raise ValueError(f"{name}: axes must be normalized (non-negative, unique), "
                             f"got {axes}")
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return ShapedArray(shape, x.dtype, x.weak_type)
    return abstract_eval


def _normalize_axes(x, axes):
    ndim = get_aval(x).ndim
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    return tuple(sorted(a % ndim if ndim else a for a in check_axes("reduce", axes, ndim)))


def _kept_dims(ndim, axes):
    return tuple(i for i in range(ndim) if i not in axes)


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


def reduce_sum(x, axes=None):
    """Sum over ``axes`` (all axes if None)."""
    return reduce_sum_p.bind(x, axes=_normalize_axes(x, axes))


def _reduce_sum_transpose(ct, x, *, axes):
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    return [broadcast_in_dim(ct, x.aval.shape, _kept_dims(x.aval.ndim, axes))]


ad.deflinear(reduce_sum_p, _reduce_sum_transpose)
batching.defreducer(reduce_sum_p)


# ---------------------------------------------------------------------------------------------
# reduce_max and reduce_min: the gradient is shared evenly among the maximal elements

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


def _reduce_max_impl(x, *, axes):
    return array_namespace(x).max(x, axis=axes)


reduce_max_p = Primitive("reduce_max")
reduce_max_p.def_impl(_reduce_max_impl)
reduce_max_p.def_abstract_eval(_reduce_abstract_eval("reduce_max"))
ad.jvp_rules[reduce_max_p] = _chooser_jvp(reduce_max_p)
batching.defreducer(reduce_max_p)


def reduce_max(x, axes=None):
    return reduce_max_p.bind(x, axes=_normalize_axes(x, axes))


def _reduce_min_impl(x, *, axes):
    return array_namespace(x).min(x, axis=axes)


reduce_min_p = Primitive("reduce_min")
reduce_min_p.def_impl(_reduce_min_impl)
reduce_min_p.def_abstract_eval(_reduce_abstract_eval("reduce_min"))
ad.jvp_rules[reduce_min_p] = _chooser_jvp(reduce_min_p)
batching.defreducer(reduce_min_p)


def reduce_min(x, axes=None):
    return reduce_min_p.bind(x, axes=_normalize_axes(x, axes))

