"""Collectives over a named mapped axis: psum, pmean, pmax, pmin, all_gather, axis_index.

Under ``vmap(f, axis_name='i')`` each batch member sees the whole axis through these
collectives, as data-parallel training code expects: ``psum(x, 'i')`` is the sum over all
members (the same value for each of them), ``axis_index('i')`` is the member's position.
A collective whose axis name no enclosing vmap binds raises ``NameError``.

>>> import functrax as ft, functrax.numpy as fnp
>>> from functrax import lax
>>> ft.vmap(lambda x: x / lax.psum(x, 'i'), axis_name='i')(fnp.array([1.0, 3.0])).tolist()
[0.25, 0.75]
"""
from __future__ import annotations

from .. import core
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.batching import BatchTrace
from ..interpreters.jvp import Zero
from . import elementwise as ew
from .reductions import reduce_max, reduce_min, reduce_sum
from .structural import broadcast_in_dim, convert_element_type, iota

__all__ = ["psum", "pmean", "pmax", "pmin", "all_gather", "axis_index", "psum_p", "pmax_p",
           "pmin_p", "all_gather_p"]


def _names(axis_name):
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def _axis_trace(name, op):
    """The vmap trace that binds ``name`` (innermost first)."""
    for main in reversed(core._state.stack):
        if main.trace_type is BatchTrace and main.payload.name == name:
            return BatchTrace(main)
    raise NameError(f"{op}: unbound axis name {name!r}. Collectives need an enclosing "
                    f"vmap(..., axis_name={name!r}).")


def _lift_to_axis(x, trace):
    """Lift x into the named axis's trace when it comes from below it (a constant, or a value
    of an enclosing transformation), so the collective meets that axis's rule. Values of
    inner transformations reach it on their own as their rules bind downwards."""
    if not isinstance(x, core.Tracer) or x._trace.main.level < trace.main.level:
        return trace.full_raise(x)
    return x


def _bind_collective(prim, x, axis_name, **params):
    names = _names(axis_name)
    for n in names:
        x = _lift_to_axis(x, _axis_trace(n, prim.name))
    return prim.bind(x, axis_name=names, **params)


def _unbound_impl(prim_name):
    def impl(x, *, axis_name, **params):
        raise NameError(f"{prim_name}: unbound axis name {axis_name!r}. Collectives need an "
                        f"enclosing vmap(..., axis_name=...).")
    return impl


def _same_aval(x, **params):
    return ShapedArray(x.shape, x.dtype, x.weak_type)


def _reducing_collective_rule(prim, reduce):
    """Reduce over this vmap's axis when its name is among ``axis_name``; pass the rest on."""
    def rule(axis_data, vals, dims, *, axis_name):
        (x,), (d,) = vals, dims
        if axis_data.name not in axis_name:
            return prim.bind(x, axis_name=axis_name), d
        if d is None:
            out = reduce_unbatched(x, axis_data.size)
        else:
            out = reduce(x, (d,))
        rest = tuple(n for n in axis_name if n != axis_data.name)
        if rest:
            out = prim.bind(out, axis_name=rest)
        return out, None

    def reduce_unbatched(x, size):
        if prim is psum_p:
            return ew.mul(x, convert_element_type(size, get_aval(x).dtype))
        return x  # max/min of identical members
    return rule


# ---------------------------------------------------------------------------------------------
# psum

psum_p = Primitive("psum")
psum_p.def_impl(_unbound_impl("psum"))
psum_p.def_abstract_eval(_same_aval)


def psum(x, axis_name):
    """Sum of x over every member of the named vmap axis (or axes)."""
    return _bind_collective(psum_p, x, axis_name)


batching.axis_batching_rules[psum_p] = _reducing_collective_rule(psum_p, reduce_sum)
# Each member's input feeds every member's output: the transpose of psum is psum.
ad.deflinear(psum_p, lambda ct, x, *, axis_name: [
    Zero(ad.tangent_aval(x.aval)) if ad.is_zero(ct) else psum_p.bind(ct, axis_name=axis_name)])


def pmean(x, axis_name):
    """Mean of x over the named axis (or axes)."""
    total = psum(x, axis_name)
    count = psum(1, axis_name)
    return ew.div(total, convert_element_type(count, get_aval(total).dtype))


# ---------------------------------------------------------------------------------------------
# pmax and pmin

pmax_p = Primitive("pmax")
pmax_p.def_impl(_unbound_impl("pmax"))
pmax_p.def_abstract_eval(_same_aval)
batching.axis_batching_rules[pmax_p] = _reducing_collective_rule(pmax_p, reduce_max)


def pmax(x, axis_name):
    return _bind_collective(pmax_p, x, axis_name)


pmin_p = Primitive("pmin")
pmin_p.def_impl(_unbound_impl("pmin"))
pmin_p.def_abstract_eval(_same_aval)
batching.axis_batching_rules[pmin_p] = _reducing_collective_rule(pmin_p, reduce_min)


def pmin(x, axis_name):
    return _bind_collective(pmin_p, x, axis_name)


def _pextremum_jvp(prim):
    # The derivative flows from the members holding the extremum, shared evenly at ties.
    def jvp(primals, tangents, *, axis_name):
        (x,), (t,) = primals, tangents
        ans = prim.bind(x, axis_name=axis_name)
        if ad.is_zero(t):
            return ans, Zero.from_value(ans)
        hit = convert_element_type(ew.eq(x, ans), get_aval(x).dtype)
        return ans, ew.div(psum_p.bind(ew.mul(t, hit), axis_name=axis_name),
                           psum_p.bind(hit, axis_name=axis_name))
    return jvp


ad.jvp_rules[pmax_p] = _pextremum_jvp(pmax_p)
ad.jvp_rules[pmin_p] = _pextremum_jvp(pmin_p)


# ---------------------------------------------------------------------------------------------
# all_gather

def _all_gather_abstract_eval(x, *, axis_name, axis, axis_size, tiled):
    shape = list(x.shape)
    if tiled:
        if not x.ndim:
            raise ValueError("all_gather: tiled=True needs an array of rank >= 1")
        shape[axis] *= axis_size
    else:
        shape.insert(axis, axis_size)
    return ShapedArray(shape, x.dtype, x.weak_type)


all_gather_p = Primitive("all_gather")
all_gather_p.def_impl(_unbound_impl("all_gather"))
all_gather_p.def_abstract_eval(_all_gather_abstract_eval)


def all_gather(x, axis_name, *, axis=0, tiled=False):
    """Every member receives the values of all members, stacked along ``axis`` (or
    concatenated along it with ``tiled=True``)."""
    if isinstance(axis_name, (tuple, list)):
        if len(axis_name) != 1:
            raise ValueError("all_gather: gather over one axis name at a time")
        axis_name = axis_name[0]
    trace = _axis_trace(axis_name, "all_gather")
    x = _lift_to_axis(x, trace)
    nd = get_aval(x).ndim + (0 if tiled else 1)
    return all_gather_p.bind(x, axis_name=(axis_name,), axis=axis % nd,
                             axis_size=trace.axis_data.size, tiled=bool(tiled))


def _all_gather_rule(axis_data, vals, dims, *, axis_name, axis, axis_size, tiled):
    (x,), (d,) = vals, dims
    if axis_data.name not in axis_name:
        # Another vmap's axis: gather each of our members independently.
        x = batching.moveaxis(x, d, 0) if d is not None else x
        out = all_gather_p.bind(x, axis_name=axis_name, axis=axis + (d is not None),
                                axis_size=axis_size, tiled=tiled)
        return out, (0 if d is not None else None)
    x = batching.bdim_at_front(x, d, axis_data.size)  # (size, *shape)
    out = batching.moveaxis(x, 0, axis)
    if tiled:
        shape = list(get_aval(x).shape[1:])
        shape[axis] *= axis_data.size
        from .structural import reshape
        out = reshape(out, tuple(shape))
    return out, None


batching.axis_batching_rules[all_gather_p] = _all_gather_rule


def _all_gather_transpose(ct, x, *, axis_name, axis, axis_size, tiled):
    # Member i's input reaches slot i of every member's output: sum the slots over members,
    # then each member keeps its own slot.
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    summed = psum_p.bind(ct, axis_name=axis_name)
    idx = axis_index(axis_name[0])
    shape = get_aval(summed).shape
    if tiled:
        from .structural import reshape
        split = list(shape)
        split[axis:axis + 1] = [axis_size, shape[axis] // axis_size]
        summed = reshape(summed, tuple(split))
        shape = tuple(split)
    mask = ew.eq(broadcast_in_dim(iota("int64", axis_size), shape, (axis,)), idx)
    picked = ew.select_n(mask, ew.mul(summed, 0), summed)
    return [reduce_sum(picked, (axis,))]


ad.deflinear(all_gather_p, _all_gather_transpose)


# ---------------------------------------------------------------------------------------------
# axis_index

def axis_index(axis_name):
    """This member's position along the named vmap axis (an int64 scalar)."""
    trace = _axis_trace(axis_name, "axis_index")
    return batching.BatchTracer(trace, iota("int64", trace.axis_data.size), 0)
