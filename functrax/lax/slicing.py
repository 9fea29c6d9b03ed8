"""Slicing: static ``slice`` (start/limit/stride per dim), ``dynamic_slice`` and
``dynamic_update_slice`` (start indices are traced scalars, clamped as XLA does so that the
window stays in bounds), and the one-axis helpers built on them.

>>> import numpy as np
>>> from functrax import lax
>>> lax.slice(np.arange(10), (2,), (8,), (3,)).tolist()
[2, 5]
>>> lax.dynamic_slice(np.arange(10), (np.int64(8),), (4,)).tolist()  # start clamped to 6
[6, 7, 8, 9]
"""
from __future__ import annotations

import builtins

import numpy as np

from .. import core, dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules
from ._util import array_namespace

__all__ = ["slice", "slice_p", "slice_in_dim", "index_in_dim", "dynamic_slice",
           "dynamic_slice_p", "dynamic_update_slice", "dynamic_update_slice_p",
           "dynamic_slice_in_dim", "dynamic_update_slice_in_dim", "dynamic_index_in_dim",
           "dynamic_update_index_in_dim"]

# ---------------------------------------------------------------------------------------------
# slice


def _slice_impl(x, *, start_indices, limit_indices, strides):
    strides = strides or (1,) * len(start_indices)
    return x[tuple(builtins.slice(s, l, st)
                   for s, l, st in zip(start_indices, limit_indices, strides))]


def _slice_abstract_eval(x, *, start_indices, limit_indices, strides):
    strides = strides or (1,) * x.ndim
    if not len(start_indices) == len(limit_indices) == len(strides) == x.ndim:
        raise TypeError(f"slice: start_indices {start_indices}, limit_indices {limit_indices} "
                        f"and strides {strides} must each have one entry per dim of "
                        f"{x.str_short()}")
    shape = []
    for d, s, l, st in zip(x.shape, start_indices, limit_indices, strides):
        if not 0 <= s <= l <= d or st < 1:
            raise ValueError(f"slice: bounds start={start_indices} limit={limit_indices} "
                             f"strides={strides} are invalid for shape {x.shape}")
        shape.append((l - s + st - 1) // st)
    return ShapedArray(shape, x.dtype, x.weak_type)


slice_p = Primitive("slice")
slice_p.def_impl(_slice_impl)
slice_p.def_abstract_eval(_slice_abstract_eval)


def slice(x, start_indices, limit_indices, strides=None):  # noqa: A001 - lax's name
    """x[start:limit:stride] along every dim, with static bounds."""
    return slice_p.bind(x, start_indices=tuple(int(i) for i in start_indices),
                        limit_indices=tuple(int(i) for i in limit_indices),
                        strides=None if strides is None else tuple(int(s) for s in strides))


def slice_in_dim(x, start_index, limit_index, stride=1, axis=0):
    """Slice along one axis (None bounds mean the ends)."""
    shape = get_aval(x).shape
    axis = axis % len(shape)
    start = [0] * len(shape)
    limit = list(shape)
    strides = [1] * len(shape)
    size = shape[axis]
    start_index = 0 if start_index is None else start_index
    limit_index = size if limit_index is None else limit_index
    start[axis] = start_index + size if start_index < 0 else start_index
    limit[axis] = limit_index + size if limit_index < 0 else limit_index
    strides[axis] = stride
    return slice(x, start, limit, strides)


def _slice_transpose(ct, x, *, start_indices, limit_indices, strides):
    from .structural import full
    from .padding import pad
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    shape = x.aval.shape
    strides = strides or (1,) * len(shape)
    ct_shape = get_aval(ct).shape
    # Place the cotangent back with interior padding for the stride.
    lo = start_indices
    hi = [d - (s + (c - 1) * st + 1) if c else d - s
          for d, s, c, st in zip(shape, start_indices, ct_shape, strides)]
    interior = [st - 1 for st in strides]
    zero = full((), 0, x.aval.dtype)
    return [pad(ct, zero, tuple(zip(lo, hi, interior)))]


ad.deflinear(slice_p, _slice_transpose)


def _slice_batch(vals, dims, *, start_indices, limit_indices, strides):
    (x,), (d,) = vals, dims
    size = get_aval(x).shape[d]
    start = list(start_indices)
    limit = list(limit_indices)
    start.insert(d, 0)
    limit.insert(d, size)
    st = None
    if strides is not None:
        st = list(strides)
        st.insert(d, 1)
        st = tuple(st)
    return slice_p.bind(x, start_indices=tuple(start), limit_indices=tuple(limit),
                        strides=st), d


batching.batching_rules[slice_p] = _slice_batch



def index_in_dim(x, index, axis=0, keepdims=True):
    """x[..., index, ...] along ``axis`` with a static index (negative counts from the end)."""
    shape = get_aval(x).shape
    axis = _check_axis("index_in_dim", axis, len(shape))
    size = shape[axis]
    index = int(index)
    if not -size <= index < size:
        raise IndexError(f"index_in_dim: index {index} is out of bounds for axis {axis} with "
                         f"size {size}")
    index %= size
    out = slice_in_dim(x, index, index + 1, 1, axis)
    if keepdims:
        return out
    from .structural import squeeze
    return squeeze(out, (axis,))


def _check_axis(name, axis, ndim):
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: axis {axis} is out of bounds for an array of rank {ndim}")
    return axis % ndim


# ---------------------------------------------------------------------------------------------
# dynamic_slice


def _clamped_starts(starts, shape, sizes):
    return [builtins.min(builtins.max(int(s), 0), d - z) for s, d, z in zip(starts, shape, sizes)]


def _dynamic_slice_impl(x, *starts, slice_sizes):
    x = array_namespace(x).asarray(x)
    begin = _clamped_starts(starts, x.shape, slice_sizes)
    return x[tuple(builtins.slice(b, b + z) for b, z in zip(begin, slice_sizes))]


def _check_start_indices(name, x, starts):
    if len(starts) != x.ndim:
        raise TypeError(f"{name}: needs one start index per dim of {x.str_short()}, got "
                        f"{len(starts)}")
    for s in starts:
        if s.shape != () or not dtypes.is_integer(s.dtype):
            raise TypeError(f"{name}: start indices must be integer scalars, got "
                            f"{[a.str_short() for a in starts]}")


def _dynamic_slice_abstract_eval(x, *starts, slice_sizes):
    _check_start_indices("dynamic_slice", x, starts)
    if len(slice_sizes) != x.ndim or any(not 0 <= z <= d for z, d in zip(slice_sizes, x.shape)):
        raise TypeError(f"dynamic_slice: slice_sizes {slice_sizes} must have one entry per dim "
                        f"of {x.str_short()}, each between 0 and the dim's size")
    return ShapedArray(slice_sizes, x.dtype, x.weak_type)


dynamic_slice_p = Primitive("dynamic_slice")
dynamic_slice_p.def_impl(_dynamic_slice_impl)
dynamic_slice_p.def_abstract_eval(_dynamic_slice_abstract_eval)


def _index_scalars(starts):
    """Start indices as integer scalars of one dtype (Python ints become int64)."""
    starts = list(starts)
    avals = [get_aval(s) for s in starts]
    for a in avals:
        if a.shape != () or not dtypes.is_integer(a.dtype):
            raise TypeError(f"start indices must be integer scalars, got "
                            f"{[b.str_short() for b in avals]}")
    strong = {a.dtype for a in avals if not a.weak_type}
    dtype = strong.pop() if len(strong) == 1 else np.dtype(np.int64)
    from .structural import convert_element_type
    return [s if a.dtype == dtype and not a.weak_type else convert_element_type(s, dtype)
            for s, a in zip(starts, avals)]


def dynamic_slice(operand, start_indices, slice_sizes):
    """operand[start:start+size] per dim with traced start indices, clamped into bounds."""
    sizes = core.canonicalize_shape(slice_sizes, "dynamic_slice slice_sizes")
    return dynamic_slice_p.bind(operand, *_index_scalars(start_indices), slice_sizes=sizes)


def _dynamic_slice_jvp(primals, tangents, *, slice_sizes):
    x, *starts = primals
    ans = dynamic_slice_p.bind(x, *starts, slice_sizes=slice_sizes)
    if ad.is_zero(tangents[0]):
        return ans, Zero.from_value(ans)
    return ans, dynamic_slice_p.bind(tangents[0], *starts, slice_sizes=slice_sizes)


ad.jvp_rules[dynamic_slice_p] = _dynamic_slice_jvp


def _dynamic_slice_transpose(ct, x, *starts, slice_sizes):
    from .structural import full
    if any(is_undefined_primal(s) for s in starts):
        raise ValueError("dynamic_slice: not linear in the start indices")
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))] + [None] * len(starts)
    zeros = full(x.aval.shape, 0, get_aval(ct).dtype)
    return [dynamic_update_slice_p.bind(zeros, ct, *starts)] + [None] * len(starts)


transpose_rules[dynamic_slice_p] = _dynamic_slice_transpose


def _start_vector(starts, dims, size):
    """The start scalars of a batch as one (size, n) index array (for gather/scatter)."""
    from .structural import broadcast_in_dim, concatenate, convert_element_type, reshape
    cols = []
    for s, d in zip(starts, dims):
        s = convert_element_type(s, np.int64)
        cols.append(broadcast_in_dim(s, (size, 1), ()) if d is None else
                    reshape(s, (size, 1)))
    if not cols:
        return np.zeros((size, 0), np.int64)
    return concatenate(cols, 1) if len(cols) > 1 else cols[0]


def _dynamic_slice_batch(vals, dims, *, slice_sizes):
    x, *starts = vals
    dx, *dstarts = dims
    size = batching.batch_size_of(vals, dims)
    if all(d is None for d in dstarts):
        x = batching.moveaxis(x, dx, 0)
        zero = np.zeros((), get_aval(starts[0]).dtype if starts else np.int64)
        return dynamic_slice_p.bind(x, zero, *starts, slice_sizes=(size,) + slice_sizes), 0
    # Batched starts: one gather reads every member's window (clip = the same clamping).
    from .indexing import GatherDimensionNumbers, _gather_batch
    rank = len(slice_sizes)
    dn = GatherDimensionNumbers(offset_dims=tuple(range(rank)), collapsed_slice_dims=(),
                                start_index_map=tuple(range(rank)))
    idx = _start_vector(starts, dstarts, size)
    return _gather_batch([x, idx], [dx, 0], dimension_numbers=dn, slice_sizes=slice_sizes,
                         mode="clip", fill_value=None)


batching.batching_rules[dynamic_slice_p] = _dynamic_slice_batch


# ---------------------------------------------------------------------------------------------
# dynamic_update_slice


def _dynamic_update_slice_impl(x, update, *starts):
    xp = array_namespace(x, update)
    out = xp.array(x, copy=True)
    update = xp.asarray(update)
    begin = _clamped_starts(starts, out.shape, update.shape)
    out[tuple(builtins.slice(b, b + z) for b, z in zip(begin, update.shape))] = update
    return out


def _dynamic_update_slice_abstract_eval(x, update, *starts):
    _check_start_indices("dynamic_update_slice", x, starts)
    if update.ndim != x.ndim or any(u > d for u, d in zip(update.shape, x.shape)):
        raise TypeError(f"dynamic_update_slice: update {update.str_short()} must have the rank "
                        f"of the operand {x.str_short()} and fit inside it")
    if update.dtype != x.dtype:
        raise TypeError(f"dynamic_update_slice: update dtype {update.dtype.name} differs from "
                        f"operand dtype {x.dtype.name}")
    return ShapedArray(x.shape, x.dtype, x.weak_type)


dynamic_update_slice_p = Primitive("dynamic_update_slice")
dynamic_update_slice_p.def_impl(_dynamic_update_slice_impl)
dynamic_update_slice_p.def_abstract_eval(_dynamic_update_slice_abstract_eval)


def dynamic_update_slice(operand, update, start_indices):
    """operand with ``update`` written at traced ``start_indices`` (clamped into bounds)."""
    return dynamic_update_slice_p.bind(operand, update, *_index_scalars(start_indices))


def _dynamic_update_slice_jvp(primals, tangents):
    x, update, *starts = primals
    t_x, t_u = tangents[0], tangents[1]
    ans = dynamic_update_slice_p.bind(x, update, *starts)
    if ad.is_zero(t_x) and ad.is_zero(t_u):
        return ans, Zero.from_value(ans)
    t_x = ad.instantiate_zeros(t_x) if not ad.is_zero(t_x) else ad.zeros_like_value(x)
    t_u = ad.instantiate_zeros(t_u) if not ad.is_zero(t_u) else ad.zeros_like_value(update)
    return ans, dynamic_update_slice_p.bind(t_x, t_u, *starts)


ad.jvp_rules[dynamic_update_slice_p] = _dynamic_update_slice_jvp


def _dynamic_update_slice_transpose(ct, x, update, *starts):
    from .structural import full
    if any(is_undefined_primal(s) for s in starts):
        raise ValueError("dynamic_update_slice: not linear in the start indices")
    u_aval = update.aval if is_undefined_primal(update) else get_aval(update)
    x_aval = x.aval if is_undefined_primal(x) else get_aval(x)
    rest = [None] * len(starts)
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x_aval)) if is_undefined_primal(x) else None,
                Zero(ad.tangent_aval(u_aval)) if is_undefined_primal(update) else None] + rest
    ct_x = ct_u = None
    if is_undefined_primal(x):
        ct_x = dynamic_update_slice_p.bind(ct, full(u_aval.shape, 0, get_aval(ct).dtype),
                                           *starts)
    if is_undefined_primal(update):
        ct_u = dynamic_slice_p.bind(ct, *starts, slice_sizes=u_aval.shape)
    return [ct_x, ct_u] + rest


transpose_rules[dynamic_update_slice_p] = _dynamic_update_slice_transpose


def _dynamic_update_slice_batch(vals, dims):
    x, update, *starts = vals
    dx, du, *dstarts = dims
    size = batching.batch_size_of(vals, dims)
    if all(d is None for d in dstarts):
        x = batching.bdim_at_front(x, dx, size)
        update = batching.bdim_at_front(update, du, size)
        zero = np.zeros((), get_aval(starts[0]).dtype if starts else np.int64)
        return dynamic_update_slice_p.bind(x, update, zero, *starts), 0
    # Batched starts: one scatter with batching dims writes every member's window.
    from .indexing import ScatterDimensionNumbers, _scatter_batch, scatter_p
    rank = get_aval(update).ndim - (du is not None)
    dn = ScatterDimensionNumbers(update_window_dims=tuple(range(rank)), inserted_window_dims=(),
                                 scatter_dims_to_operand_dims=tuple(range(rank)))
    idx = _start_vector(starts, dstarts, size)
    return _scatter_batch(scatter_p, [x, idx, update], [dx, 0, du], dimension_numbers=dn,
                          mode="clip")


batching.batching_rules[dynamic_update_slice_p] = _dynamic_update_slice_batch


def dynamic_slice_in_dim(operand, start_index, slice_size, axis=0):
    """dynamic_slice along one axis (the other dims are kept whole)."""
    aval = get_aval(operand)
    axis = _check_axis("dynamic_slice_in_dim", axis, aval.ndim)
    starts = [0] * aval.ndim
    starts[axis] = start_index
    sizes = list(aval.shape)
    sizes[axis] = int(slice_size)
    return dynamic_slice(operand, starts, sizes)


def dynamic_index_in_dim(operand, index, axis=0, keepdims=True):
    """operand[..., index, ...] along ``axis`` with a traced index (clamped)."""
    out = dynamic_slice_in_dim(operand, index, 1, axis)
    if keepdims:
        return out
    from .structural import squeeze
    return squeeze(out, (_check_axis("dynamic_index_in_dim", axis, get_aval(operand).ndim),))


def dynamic_update_slice_in_dim(operand, update, start_index, axis):
    """dynamic_update_slice along one axis."""
    aval = get_aval(operand)
    axis = _check_axis("dynamic_update_slice_in_dim", axis, aval.ndim)
    starts = [0] * aval.ndim
    starts[axis] = start_index
    return dynamic_update_slice(operand, update, starts)


def dynamic_update_index_in_dim(operand, update, index, axis):
    """Write ``update`` (without the ``axis`` dim, or with it of size 1) at ``index``."""
    aval = get_aval(operand)
    axis = _check_axis("dynamic_update_index_in_dim", axis, aval.ndim)
    if get_aval(update).ndim == aval.ndim - 1:
        from .structural import expand_dims
        update = expand_dims(update, (axis,))
    return dynamic_update_slice_in_dim(operand, update, index, axis)
