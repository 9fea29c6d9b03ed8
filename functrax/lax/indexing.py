"""gather and the scatter family (set, add, mul, min, max), with JAX/XLA semantics.

``gather`` reads one window per index vector: ``start_indices[..., :]`` is an index vector (the
last dim of ``start_indices``), its entries are the window's start along the operand dims
``start_index_map``; ``slice_sizes`` gives the window; ``collapsed_slice_dims`` (size-1 window
dims) disappear from the output; the remaining window dims appear at the output positions
``offset_dims``, the index batch dims fill the other output positions in order.
``operand_batching_dims``/``start_indices_batching_dims`` pair operand dims with index dims
that walk together (what ``vmap`` of a gather with batched operand and indices needs).

``scatter*`` is the mirror image: ``updates`` windows (dims ``update_window_dims``) are
combined into the operand at the windows picked by ``scatter_indices``. Repeated indices
accumulate for add/mul/min/max (like ``np.add.at``); for ``scatter`` (set) one of the
repeated updates wins.

``mode``: ``"clip"`` clamps each start so that the whole window is in bounds; ``"fill"``
(the default; ``"drop"`` is a synonym) makes gather return ``fill_value`` for windows that are
out of bounds and makes scatter skip such updates. ``"promise_in_bounds"`` means clip for
gather and drop for scatter.

>>> import numpy as np
>>> from functrax import lax
>>> x = np.arange(10.0)
>>> dn = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,),
...                                 start_index_map=(0,))
>>> lax.gather(x, np.array([[2], [7]]), dn, (1,)).tolist()
[2.0, 7.0]
>>> sdn = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
...                                   scatter_dims_to_operand_dims=(0,))
>>> lax.scatter_add(np.zeros(3), np.array([[1], [1]]), np.array([1.0, 2.0]), sdn).tolist()
[0.0, 3.0, 0.0]
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules
from ._util import array_namespace, ufunc_at
from . import elementwise as ew
from .structural import convert_element_type, full, iota, reshape

__all__ = ["GatherDimensionNumbers", "ScatterDimensionNumbers", "GatherScatterMode",
           "gather", "gather_p", "scatter", "scatter_p", "scatter_add", "scatter_add_p",
           "scatter_mul", "scatter_mul_p", "scatter_min", "scatter_min_p", "scatter_max",
           "scatter_max_p"]


class GatherDimensionNumbers(NamedTuple):
    """How the dims of gather's operand, indices and output relate (see the module doc)."""
    offset_dims: tuple
    collapsed_slice_dims: tuple
    start_index_map: tuple
    operand_batching_dims: tuple = ()
    start_indices_batching_dims: tuple = ()


class ScatterDimensionNumbers(NamedTuple):
    """How the dims of scatter's operand, indices and updates relate (see the module doc)."""
    update_window_dims: tuple
    inserted_window_dims: tuple
    scatter_dims_to_operand_dims: tuple
    operand_batching_dims: tuple = ()
    scatter_indices_batching_dims: tuple = ()


class GatherScatterMode:
    """The accepted spellings of ``mode`` (plain strings work as well)."""
    CLIP = "clip"
    FILL_OR_DROP = "fill"
    PROMISE_IN_BOUNDS = "promise_in_bounds"


def _canonical_mode(mode, for_gather):
    if mode is None:
        return "fill"
    mode = str(getattr(mode, "value", mode)).lower()
    if mode in ("clip",):
        return "clip"
    if mode in ("fill", "drop", "fill_or_drop"):
        return "fill"
    if mode == "promise_in_bounds":
        return "clip" if for_gather else "fill"
    raise ValueError(f"{'gather' if for_gather else 'scatter'}: unknown mode {mode!r}; use "
                     f"'clip', 'fill' (or 'drop') or 'promise_in_bounds'")


def _tuple_ints(xs):
    return tuple(int(x) for x in xs)


def _default_fill(dtype):
    dtype = np.dtype(dtype)
    if dtypes.is_inexact(dtype):
        return np.nan
    if dtype.kind == "i":
        return int(np.iinfo(dtype).min)
    if dtype.kind == "u":
        return int(np.iinfo(dtype).max)
    return True


# --- shared impl helpers ----------------------------------------------------------------------

def _start_matrix(xp, indices, rank, index_map, operand_batching_dims, index_batching_dims):
    """(B, rank) window starts in operand coordinates, one row per index vector."""
    batch_shape = tuple(indices.shape[:-1])
    b = int(np.prod(batch_shape, dtype=np.int64))
    idx = indices.reshape(b, indices.shape[-1]).astype(np.int64)
    starts = xp.zeros((b, rank), np.int64)
    for k, d in enumerate(index_map):
        starts[:, d] = idx[:, k]
    if operand_batching_dims:
        grid = xp.indices(batch_shape).reshape(len(batch_shape), b)
        for od, idim in zip(operand_batching_dims, index_batching_dims):
            starts[:, od] = grid[idim]
    return starts


def _window_index(xp, starts, window):
    """Advanced-index arrays addressing every window: broadcast shape (B,) + window."""
    b, rank = starts.shape
    out = []
    for d in range(rank):
        s = starts[:, d].reshape((b,) + (1,) * rank)
        r_shape = [1] * (rank + 1)
        r_shape[d + 1] = window[d]
        out.append(s + xp.arange(window[d]).reshape(r_shape))
    return tuple(out)


def _in_bounds(xp, starts, dims, limits):
    ok = xp.ones(starts.shape[0], bool)
    for d in dims:
        ok &= (starts[:, d] >= 0) & (starts[:, d] <= limits[d])
    return ok


def _window_operand_dims(dn, rank):
    """The operand dims that a scatter's update windows span, in order: the dims that are
    neither inserted (size-1, not in the window) nor batching dims."""
    return [d for d in range(rank) if d not in dn.inserted_window_dims
            and d not in dn.operand_batching_dims]


def _scatter_window(dn, rank, updates_shape):
    """The size, along every operand dim, of the window one index vector scatters into."""
    window = [1] * rank
    for k, d in enumerate(_window_operand_dims(dn, rank)):
        window[d] = updates_shape[dn.update_window_dims[k]]
    return window


def _check_dims(name, what, dims, bound, allow_unsorted=True):
    if len(set(dims)) != len(dims) or any(not 0 <= d < bound for d in dims):
        raise TypeError(f"{name}: {what} {dims} must be distinct dims in [0, {bound})")
    if not allow_unsorted and list(dims) != sorted(dims):
        raise TypeError(f"{name}: {what} {dims} must be sorted")


# ---------------------------------------------------------------------------------------------
# gather


def _gather_impl(operand, indices, *, dimension_numbers, slice_sizes, mode, fill_value):
    xp = array_namespace(operand, indices)
    operand, indices = xp.asarray(operand), xp.asarray(indices)
    dn = dimension_numbers
    rank = operand.ndim
    batch_shape = tuple(indices.shape[:-1])
    starts = _start_matrix(xp, indices, rank, dn.start_index_map, dn.operand_batching_dims,
                           dn.start_indices_batching_dims)
    b = starts.shape[0]
    limits = np.array(operand.shape, np.int64) - np.array(slice_sizes, np.int64)
    valid = _in_bounds(xp, starts, dn.start_index_map, limits) if mode == "fill" else None
    starts = xp.clip(starts, 0, xp.asarray(np.maximum(limits, 0)))
    if rank == 0:
        windows = xp.broadcast_to(operand, (b,))
    else:
        windows = operand[_window_index(xp, starts, slice_sizes)]
    if valid is not None and not bool(valid.all()):
        fill = _default_fill(operand.dtype) if fill_value is None else fill_value
        windows = xp.where(valid.reshape((b,) + (1,) * rank), windows,
                           xp.asarray(fill, dtype=operand.dtype))
    dropped = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
    kept = tuple(slice_sizes[d] for d in range(rank) if d not in dropped)
    windows = windows.reshape(batch_shape + kept)
    nb = len(batch_shape)
    perm, next_batch = [], 0
    for j in range(nb + len(kept)):
        if j in dn.offset_dims:
            perm.append(nb + dn.offset_dims.index(j))
        else:
            perm.append(next_batch)
            next_batch += 1
    out = windows.transpose(perm)
    # ascontiguousarray returns at least 1-d: a 0-d result (one scalar gathered) keeps rank 0.
    return xp.ascontiguousarray(out).reshape(out.shape)


def _gather_shape(operand, indices, dn, slice_sizes):
    name = "gather"
    if not dtypes.is_integer(indices.dtype):
        raise TypeError(f"{name}: start_indices must be integers, got {indices.str_short()}")
    if indices.ndim < 1:
        raise TypeError(f"{name}: start_indices must have rank >= 1 (the last dim holds the "
                        f"index vectors), got {indices.str_short()}")
    if indices.shape[-1] != len(dn.start_index_map):
        raise TypeError(f"{name}: the last dim of start_indices {indices.shape} must equal "
                        f"len(start_index_map) = {len(dn.start_index_map)}")
    rank = operand.ndim
    if len(slice_sizes) != rank:
        raise TypeError(f"{name}: slice_sizes {slice_sizes} needs one entry per dim of the "
                        f"operand {operand.str_short()}")
    for d, s in zip(operand.shape, slice_sizes):
        if not 0 <= s <= d:
            raise ValueError(f"{name}: slice_sizes {slice_sizes} must fit in the operand shape "
                             f"{operand.shape}")
    _check_dims(name, "collapsed_slice_dims", dn.collapsed_slice_dims, rank)
    _check_dims(name, "start_index_map", dn.start_index_map, rank)
    _check_dims(name, "operand_batching_dims", dn.operand_batching_dims, rank)
    _check_dims(name, "start_indices_batching_dims", dn.start_indices_batching_dims,
                indices.ndim - 1)
    if set(dn.collapsed_slice_dims) & set(dn.operand_batching_dims):
        raise TypeError(f"{name}: collapsed_slice_dims {dn.collapsed_slice_dims} and "
                        f"operand_batching_dims {dn.operand_batching_dims} overlap")
    if set(dn.start_index_map) & set(dn.operand_batching_dims):
        raise TypeError(f"{name}: start_index_map {dn.start_index_map} and "
                        f"operand_batching_dims {dn.operand_batching_dims} overlap")
    if len(dn.operand_batching_dims) != len(dn.start_indices_batching_dims):
        raise TypeError(f"{name}: operand_batching_dims {dn.operand_batching_dims} and "
                        f"start_indices_batching_dims {dn.start_indices_batching_dims} differ "
                        f"in length")
    for od, idim in zip(dn.operand_batching_dims, dn.start_indices_batching_dims):
        if operand.shape[od] != indices.shape[idim]:
            raise TypeError(f"{name}: operand batching dim {od} (size {operand.shape[od]}) "
                            f"and indices batching dim {idim} (size {indices.shape[idim]}) "
                            f"differ")
    for d in tuple(dn.collapsed_slice_dims) + tuple(dn.operand_batching_dims):
        if slice_sizes[d] != 1:
            raise TypeError(f"{name}: collapsed and batching dims need slice size 1, got "
                            f"slice_sizes {slice_sizes} at dim {d}")
    dropped = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
    kept = [slice_sizes[d] for d in range(rank) if d not in dropped]
    out_rank = indices.ndim - 1 + len(kept)
    if len(dn.offset_dims) != len(kept):
        raise TypeError(f"{name}: offset_dims {dn.offset_dims} must have one entry per "
                        f"non-collapsed window dim ({len(kept)})")
    _check_dims(name, "offset_dims", dn.offset_dims, out_rank, allow_unsorted=False)
    shape, batch_it, kept_it = [], iter(indices.shape[:-1]), iter(kept)
    for j in range(out_rank):
        shape.append(next(kept_it) if j in dn.offset_dims else next(batch_it))
    return tuple(shape)


def _gather_abstract_eval(operand, indices, *, dimension_numbers, slice_sizes, mode,
                          fill_value):
    shape = _gather_shape(operand, indices, dimension_numbers, slice_sizes)
    return ShapedArray(shape, operand.dtype, operand.weak_type)


gather_p = Primitive("gather")
gather_p.def_impl(_gather_impl)
gather_p.def_abstract_eval(_gather_abstract_eval)


def _gather_dnums(dn):
    dn = GatherDimensionNumbers(*dn) if not isinstance(dn, GatherDimensionNumbers) else dn
    return GatherDimensionNumbers(*[_tuple_ints(f) for f in dn])


def gather(operand, start_indices, dimension_numbers, slice_sizes, *, unique_indices=False,
           indices_are_sorted=False, mode=None, fill_value=None):
    """XLA's gather (see the module doc). ``unique_indices``/``indices_are_sorted`` are hints
    and are accepted for JAX compatibility."""
    if fill_value is not None:
        fill_value = np.asarray(fill_value).item()
    return gather_p.bind(operand, start_indices,
                         dimension_numbers=_gather_dnums(dimension_numbers),
                         slice_sizes=_tuple_ints(slice_sizes),
                         mode=_canonical_mode(mode, True), fill_value=fill_value)


def _gather_jvp(primals, tangents, *, dimension_numbers, slice_sizes, mode, fill_value):
    (operand, indices), (t_op, _) = primals, tangents
    ans = gather_p.bind(operand, indices, dimension_numbers=dimension_numbers,
                        slice_sizes=slice_sizes, mode=mode, fill_value=fill_value)
    if ad.is_zero(t_op):
        return ans, Zero.from_value(ans)
    # Filled windows do not depend on the operand: their tangent is zero.
    return ans, gather_p.bind(t_op, indices, dimension_numbers=dimension_numbers,
                              slice_sizes=slice_sizes, mode=mode, fill_value=0)


ad.jvp_rules[gather_p] = _gather_jvp


def _gather_transpose(ct, operand, indices, *, dimension_numbers, slice_sizes, mode,
                      fill_value):
    if is_undefined_primal(indices):
        raise ValueError("gather: not linear in the indices")
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(operand.aval)), None]
    dn = dimension_numbers
    sdn = ScatterDimensionNumbers(
        update_window_dims=dn.offset_dims, inserted_window_dims=dn.collapsed_slice_dims,
        scatter_dims_to_operand_dims=dn.start_index_map,
        operand_batching_dims=dn.operand_batching_dims,
        scatter_indices_batching_dims=dn.start_indices_batching_dims)
    zeros = full(operand.aval.shape, 0, get_aval(ct).dtype)
    return [scatter_add_p.bind(zeros, indices, ct, dimension_numbers=sdn, mode=mode), None]


transpose_rules[gather_p] = _gather_transpose


def _shift(dims, by=1):
    return tuple(d + by for d in dims)


def _gather_batch(vals, dims, *, dimension_numbers, slice_sizes, mode, fill_value):
    (operand, indices), (d_op, d_idx) = vals, dims
    dn = dimension_numbers
    params = dict(mode=mode, fill_value=fill_value)
    if d_idx is None:
        # The batch dim becomes one more window dim, read whole.
        operand = batching.moveaxis(operand, d_op, 0)
        size = get_aval(operand).shape[0]
        new = GatherDimensionNumbers(
            offset_dims=(0,) + _shift(dn.offset_dims),
            collapsed_slice_dims=_shift(dn.collapsed_slice_dims),
            start_index_map=_shift(dn.start_index_map),
            operand_batching_dims=_shift(dn.operand_batching_dims),
            start_indices_batching_dims=dn.start_indices_batching_dims)
        return gather_p.bind(operand, indices, dimension_numbers=new,
                             slice_sizes=(size,) + slice_sizes, **params), 0
    indices = batching.moveaxis(indices, d_idx, 0)
    if d_op is None:
        # The batch dim becomes the first index batch dim (output dim 0).
        new = GatherDimensionNumbers(
            offset_dims=_shift(dn.offset_dims),
            collapsed_slice_dims=dn.collapsed_slice_dims,
            start_index_map=dn.start_index_map,
            operand_batching_dims=dn.operand_batching_dims,
            start_indices_batching_dims=_shift(dn.start_indices_batching_dims))
        return gather_p.bind(operand, indices, dimension_numbers=new,
                             slice_sizes=slice_sizes, **params), 0
    # Both batched: pair the two batch dims as gather batching dims.
    operand = batching.moveaxis(operand, d_op, 0)
    new = GatherDimensionNumbers(
        offset_dims=_shift(dn.offset_dims),
        collapsed_slice_dims=_shift(dn.collapsed_slice_dims),
        start_index_map=_shift(dn.start_index_map),
        operand_batching_dims=(0,) + _shift(dn.operand_batching_dims),
        start_indices_batching_dims=(0,) + _shift(dn.start_indices_batching_dims))
    return gather_p.bind(operand, indices, dimension_numbers=new,
                         slice_sizes=(1,) + slice_sizes, **params), 0


batching.batching_rules[gather_p] = _gather_batch


# ---------------------------------------------------------------------------------------------
# The scatter family: one impl and one abstract eval, five primitives.


def _scatter_impl(kind):
    def impl(operand, indices, updates, *, dimension_numbers, mode):
        xp = array_namespace(operand, indices, updates)
        operand, indices = xp.asarray(operand), xp.asarray(indices)
        updates = xp.asarray(updates)
        out = operand.copy()
        dn = dimension_numbers
        scalar = out.ndim == 0
        if scalar:
            # Give a rank-0 operand a dim to index; it is removed again below.
            out = out.reshape(1)
        rank = out.ndim
        window = [1] if scalar else _scatter_window(dn, rank, updates.shape)
        scatter_dims = [i for i in range(updates.ndim) if i not in dn.update_window_dims]
        upd = xp.transpose(updates, scatter_dims + list(dn.update_window_dims))
        b = int(np.prod(indices.shape[:-1], dtype=np.int64))
        upd = upd.reshape((b,) + tuple(window))
        starts = _start_matrix(xp, indices, rank, dn.scatter_dims_to_operand_dims,
                               dn.operand_batching_dims, dn.scatter_indices_batching_dims)
        limits = np.array(out.shape, np.int64) - np.array(window, np.int64)
        if mode == "fill":
            ok = _in_bounds(xp, starts, dn.scatter_dims_to_operand_dims, limits)
            if not bool(ok.all()):
                starts, upd = starts[ok], upd[ok]
        starts = xp.clip(starts, 0, xp.asarray(np.maximum(limits, 0)))
        idx = _window_index(xp, starts, window)
        upd = upd.astype(out.dtype, copy=False)
        if kind == "set":
            out[idx] = upd
        else:
            ufunc_at(xp, kind, out, idx, upd)  # cupyx.scatter_* on a GPU
        return out.reshape(()) if scalar else out
    return impl


def _scatter_abstract_eval(name):
    def abstract_eval(operand, indices, updates, *, dimension_numbers, mode):
        dn = dimension_numbers
        if not dtypes.is_integer(indices.dtype):
            raise TypeError(f"{name}: scatter_indices must be integers, got "
                            f"{indices.str_short()}")
        if indices.ndim < 1:
            raise TypeError(f"{name}: scatter_indices must have rank >= 1 (the last dim holds "
                            f"the index vectors), got {indices.str_short()}")
        if indices.shape[-1] != len(dn.scatter_dims_to_operand_dims):
            raise TypeError(f"{name}: the last dim of scatter_indices {indices.shape} must "
                            f"equal len(scatter_dims_to_operand_dims) = "
                            f"{len(dn.scatter_dims_to_operand_dims)}")
        if operand.dtype != updates.dtype:
            raise TypeError(f"{name}: updates dtype {updates.dtype.name} differs from operand "
                            f"dtype {operand.dtype.name}")
        rank = operand.ndim
        _check_dims(name, "update_window_dims", dn.update_window_dims, updates.ndim,
                    allow_unsorted=False)
        _check_dims(name, "inserted_window_dims", dn.inserted_window_dims, rank)
        _check_dims(name, "scatter_dims_to_operand_dims", dn.scatter_dims_to_operand_dims, rank)
        _check_dims(name, "operand_batching_dims", dn.operand_batching_dims, rank)
        _check_dims(name, "scatter_indices_batching_dims", dn.scatter_indices_batching_dims,
                    indices.ndim - 1)
        if set(dn.inserted_window_dims) & set(dn.operand_batching_dims):
            raise TypeError(f"{name}: inserted_window_dims and operand_batching_dims overlap")
        if len(dn.operand_batching_dims) != len(dn.scatter_indices_batching_dims):
            raise TypeError(f"{name}: operand_batching_dims {dn.operand_batching_dims} and "
                            f"scatter_indices_batching_dims {dn.scatter_indices_batching_dims} "
                            f"differ in length")
        n_window = rank - len(dn.inserted_window_dims) - len(dn.operand_batching_dims)
        if len(dn.update_window_dims) != n_window:
            raise TypeError(f"{name}: update_window_dims {dn.update_window_dims} must have one "
                            f"entry per operand dim that is not inserted or batching "
                            f"({n_window}) for operand {operand.str_short()}")
        if updates.ndim != indices.ndim - 1 + n_window:
            raise TypeError(f"{name}: updates {updates.str_short()} must have rank "
                            f"{indices.ndim - 1 + n_window} (the index batch dims of "
                            f"{indices.str_short()} plus {n_window} window dims)")
        scatter_sizes = tuple(s for i, s in enumerate(updates.shape)
                              if i not in dn.update_window_dims)
        if scatter_sizes != tuple(indices.shape[:-1]):
            raise TypeError(f"{name}: the scatter dims of updates {updates.shape} "
                            f"({scatter_sizes}) must equal the batch dims of the indices "
                            f"{indices.shape[:-1]}")
        for k, d in enumerate(_window_operand_dims(dn, rank)):
            if updates.shape[dn.update_window_dims[k]] > operand.shape[d]:
                raise ValueError(f"{name}: update window {updates.shape} does not fit in the "
                                 f"operand {operand.shape} along operand dim {d}")
        for od, idim in zip(dn.operand_batching_dims, dn.scatter_indices_batching_dims):
            if operand.shape[od] != indices.shape[idim]:
                raise TypeError(f"{name}: operand batching dim {od} (size {operand.shape[od]}) "
                                f"and indices batching dim {idim} (size "
                                f"{indices.shape[idim]}) differ")
        return ShapedArray(operand.shape, operand.dtype, operand.weak_type)
    return abstract_eval


def _scatter_primitive(name, kind):
    p = Primitive(name)
    p.def_impl(_scatter_impl(kind))
    p.def_abstract_eval(_scatter_abstract_eval(name))
    batching.batching_rules[p] = lambda vals, dims, **params: _scatter_batch(
        p, vals, dims, **params)
    return p


def _scatter_dnums(dn):
    dn = ScatterDimensionNumbers(*dn) if not isinstance(dn, ScatterDimensionNumbers) else dn
    return ScatterDimensionNumbers(*[_tuple_ints(f) for f in dn])


def _scatter_bind(p, operand, scatter_indices, updates, dimension_numbers, mode):
    return p.bind(operand, scatter_indices, updates,
                  dimension_numbers=_scatter_dnums(dimension_numbers),
                  mode=_canonical_mode(mode, False))


def _gather_of_scatter(dn, updates_shape, rank):
    """The gather that reads, for every update element, the operand element it lands on."""
    gdn = GatherDimensionNumbers(
        offset_dims=dn.update_window_dims, collapsed_slice_dims=dn.inserted_window_dims,
        start_index_map=dn.scatter_dims_to_operand_dims,
        operand_batching_dims=dn.operand_batching_dims,
        start_indices_batching_dims=dn.scatter_indices_batching_dims)
    return gdn, tuple(_scatter_window(dn, rank, updates_shape))


def _gather_at_updates(x, indices, updates_shape, dimension_numbers, mode):
    gdn, sizes = _gather_of_scatter(dimension_numbers, updates_shape, get_aval(x).ndim)
    return gather_p.bind(x, indices, dimension_numbers=gdn, slice_sizes=sizes, mode=mode,
                         fill_value=0)


def _tangent_or_zeros(t, x):
    if not ad.is_zero(t):
        return ad.instantiate_zeros(t)
    aval = get_aval(x)
    return full(aval.shape, 0, ad.tangent_aval(aval).dtype)


def _scatter_batch(p, vals, dims, *, dimension_numbers, mode):
    (operand, indices, updates), (d_op, d_idx, d_upd) = vals, dims
    dn = dimension_numbers
    size = batching.batch_size_of(vals, dims)
    operand = batching.bdim_at_front(operand, d_op, size)
    updates = batching.bdim_at_front(updates, d_upd, size)
    if d_idx is None:
        # Shared indices: the batch dim is one more (whole) window dim of every update.
        new = ScatterDimensionNumbers(
            update_window_dims=(0,) + _shift(dn.update_window_dims),
            inserted_window_dims=_shift(dn.inserted_window_dims),
            scatter_dims_to_operand_dims=_shift(dn.scatter_dims_to_operand_dims),
            operand_batching_dims=_shift(dn.operand_batching_dims),
            scatter_indices_batching_dims=dn.scatter_indices_batching_dims)
        return p.bind(operand, indices, updates, dimension_numbers=new, mode=mode), 0
    indices = batching.moveaxis(indices, d_idx, 0)
    new = ScatterDimensionNumbers(
        update_window_dims=_shift(dn.update_window_dims),
        inserted_window_dims=_shift(dn.inserted_window_dims),
        scatter_dims_to_operand_dims=_shift(dn.scatter_dims_to_operand_dims),
        operand_batching_dims=(0,) + _shift(dn.operand_batching_dims),
        scatter_indices_batching_dims=(0,) + _shift(dn.scatter_indices_batching_dims))
    return p.bind(operand, indices, updates, dimension_numbers=new, mode=mode), 0


# --- scatter_add: linear in (operand, updates); its transpose is a gather --------------------

scatter_add_p = _scatter_primitive("scatter_add", "add")


def scatter_add(operand, scatter_indices, updates, dimension_numbers, *,
                indices_are_sorted=False, unique_indices=False, mode=None):
    """operand with updates added at the scattered windows; repeated indices accumulate."""
    return _scatter_bind(scatter_add_p, operand, scatter_indices, updates, dimension_numbers,
                         mode)


def _scatter_add_jvp(primals, tangents, *, dimension_numbers, mode):
    (operand, indices, updates), (t_op, _, t_upd) = primals, tangents
    ans = scatter_add_p.bind(operand, indices, updates, dimension_numbers=dimension_numbers,
                             mode=mode)
    if ad.is_zero(t_op) and ad.is_zero(t_upd):
        return ans, Zero.from_value(ans)
    t_op = _tangent_or_zeros(t_op, operand)
    if ad.is_zero(t_upd):
        return ans, t_op
    return ans, scatter_add_p.bind(t_op, indices, ad.instantiate_zeros(t_upd),
                                   dimension_numbers=dimension_numbers, mode=mode)


ad.jvp_rules[scatter_add_p] = _scatter_add_jvp


def _scatter_add_transpose(ct, operand, indices, updates, *, dimension_numbers, mode):
    if is_undefined_primal(indices):
        raise ValueError("scatter_add: not linear in the indices")
    upd_aval = updates.aval if is_undefined_primal(updates) else get_aval(updates)
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(operand.aval)) if is_undefined_primal(operand) else None,
                None, Zero(ad.tangent_aval(upd_aval)) if is_undefined_primal(updates) else None]
    ct_op = ct if is_undefined_primal(operand) else None
    ct_upd = None
    if is_undefined_primal(updates):
        # Dropped (out-of-bounds) updates read the fill value 0: no cotangent.
        ct_upd = _gather_at_updates(ct, indices, upd_aval.shape, dimension_numbers, mode)
    return [ct_op, None, ct_upd]


transpose_rules[scatter_add_p] = _scatter_add_transpose


# --- scatter (set) ----------------------------------------------------------------------------

scatter_p = _scatter_primitive("scatter", "set")


def scatter(operand, scatter_indices, updates, dimension_numbers, *, indices_are_sorted=False,
            unique_indices=False, mode=None):
    """operand with the scattered windows replaced by updates (one of repeated updates wins)."""
    return _scatter_bind(scatter_p, operand, scatter_indices, updates, dimension_numbers, mode)


def _scatter_jvp(primals, tangents, *, dimension_numbers, mode):
    (operand, indices, updates), (t_op, _, t_upd) = primals, tangents
    params = dict(dimension_numbers=dimension_numbers, mode=mode)
    ans = scatter_p.bind(operand, indices, updates, **params)
    if ad.is_zero(t_op) and ad.is_zero(t_upd):
        return ans, Zero.from_value(ans)
    # With repeated indices only one update lands in each place. Scatter distinct ids the same
    # way to learn which one (and which operand places were overwritten), then combine the
    # tangents with masks and scatter_add, which is linear and has a transpose.
    op_aval, upd_aval = get_aval(operand), get_aval(updates)
    ids = ew.add(reshape(iota(np.int64, upd_aval.size), upd_aval.shape), 1)
    landed = scatter_p.bind(full(op_aval.shape, 0, np.int64), indices, ids, **params)
    t_op = _tangent_or_zeros(t_op, operand)
    t_op = ew.select_n(ew.eq(landed, 0), ew._zeros_like(t_op), t_op)
    if ad.is_zero(t_upd):
        return ans, t_op
    t_upd = ad.instantiate_zeros(t_upd)
    won = ew.eq(_gather_at_updates(landed, indices, upd_aval.shape, dimension_numbers, mode),
                ids)
    t_upd = ew.select_n(won, ew._zeros_like(t_upd), t_upd)
    return ans, scatter_add_p.bind(t_op, indices, t_upd, **params)


ad.jvp_rules[scatter_p] = _scatter_jvp


# --- scatter_mul: linear in the operand for fixed updates --------------------------------------

scatter_mul_p = _scatter_primitive("scatter_mul", "multiply")


def scatter_mul(operand, scatter_indices, updates, dimension_numbers, *,
                indices_are_sorted=False, unique_indices=False, mode=None):
    """operand multiplied by the scattered updates; repeated indices multiply together."""
    return _scatter_bind(scatter_mul_p, operand, scatter_indices, updates, dimension_numbers,
                         mode)


def _scatter_mul_jvp(primals, tangents, *, dimension_numbers, mode):
    (operand, indices, updates), (t_op, _, t_upd) = primals, tangents
    params = dict(dimension_numbers=dimension_numbers, mode=mode)
    ans = scatter_mul_p.bind(operand, indices, updates, **params)
    out_t = Zero.from_value(ans)
    if not ad.is_zero(t_op):
        out_t = scatter_mul_p.bind(ad.instantiate_zeros(t_op), indices, updates, **params)
    if ad.is_zero(t_upd):
        return ans, out_t
    # d out / d u_j = operand * (product of the other updates landing on the same place).
    # Computed without dividing by zero: count the zero updates per place and multiply the
    # nonzero ones; "the others" is then product/u_j, or the product when u_j is the only zero.
    # The first derivative is exact everywhere; the selects make the second derivative miss
    # the terms through other zero updates at the same place (exact away from zeros).
    op_aval, upd_aval = get_aval(operand), get_aval(updates)
    shape = upd_aval.shape
    is_zero_u = ew.eq(updates, ew._zeros_like(updates))
    safe = ew.select_n(is_zero_u, updates, ew._ones_like(updates))
    prod_nz = scatter_mul_p.bind(full(op_aval.shape, 1, op_aval.dtype), indices, safe, **params)
    n_zero = scatter_add_p.bind(full(op_aval.shape, 0, op_aval.dtype), indices,
                                convert_element_type(is_zero_u, op_aval.dtype), **params)
    g_prod = _gather_at_updates(prod_nz, indices, shape, dimension_numbers, mode)
    g_nzero = _gather_at_updates(n_zero, indices, shape, dimension_numbers, mode)
    g_op = _gather_at_updates(operand, indices, shape, dimension_numbers, mode)
    zeros = ew._zeros_like(updates)
    others_nz = ew.select_n(ew.eq(g_nzero, zeros), zeros, ew.div(g_prod, safe))
    others_z = ew.select_n(ew.eq(g_nzero, ew._ones_like(updates)), zeros, g_prod)
    others = ew.select_n(is_zero_u, others_nz, others_z)
    contrib = ew.mul(ew.mul(g_op, others), ad.instantiate_zeros(t_upd))
    from_upd = scatter_add_p.bind(full(op_aval.shape, 0, op_aval.dtype), indices, contrib,
                                  **params)
    return ans, ad.add_tangents(out_t, from_upd)


ad.jvp_rules[scatter_mul_p] = _scatter_mul_jvp


def _scatter_mul_transpose(ct, operand, indices, updates, *, dimension_numbers, mode):
    if is_undefined_primal(updates) or is_undefined_primal(indices):
        raise ValueError("scatter_mul: linear only in the operand")
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(operand.aval)), None, None]
    return [scatter_mul_p.bind(ct, indices, updates, dimension_numbers=dimension_numbers,
                               mode=mode), None, None]


transpose_rules[scatter_mul_p] = _scatter_mul_transpose


# --- scatter_min / scatter_max: the tangent is shared evenly among the extremal values -------

def _scatter_chooser_jvp(p):
    def jvp(primals, tangents, *, dimension_numbers, mode):
        (operand, indices, updates), (t_op, _, t_upd) = primals, tangents
        params = dict(dimension_numbers=dimension_numbers, mode=mode)
        ans = p.bind(operand, indices, updates, **params)
        if ad.is_zero(t_op) and ad.is_zero(t_upd):
            return ans, Zero.from_value(ans)
        op_aval, upd_aval = get_aval(operand), get_aval(updates)
        dt = op_aval.dtype
        zeros = full(op_aval.shape, 0, dt)
        op_hit = convert_element_type(ew.eq(operand, ans), dt)
        g_ans = _gather_at_updates(ans, indices, upd_aval.shape, dimension_numbers, mode)
        upd_hit = convert_element_type(ew.eq(updates, g_ans), dt)
        # Dropped updates never reach the count or the sum: scatter_add drops them too.
        count = ew.add(op_hit, scatter_add_p.bind(zeros, indices, upd_hit, **params))
        num = Zero.from_value(ans)
        if not ad.is_zero(t_op):
            num = ew.mul(op_hit, ad.instantiate_zeros(t_op))
        if not ad.is_zero(t_upd):
            num = ad.add_tangents(num, scatter_add_p.bind(
                zeros, indices, ew.mul(upd_hit, ad.instantiate_zeros(t_upd)), **params))
        return ans, ew.div(num, count)
    return jvp


scatter_min_p = _scatter_primitive("scatter_min", "minimum")
ad.jvp_rules[scatter_min_p] = _scatter_chooser_jvp(scatter_min_p)


def scatter_min(operand, scatter_indices, updates, dimension_numbers, *,
                indices_are_sorted=False, unique_indices=False, mode=None):
    """Elementwise minimum of the operand and the scattered updates (np.minimum.at)."""
    return _scatter_bind(scatter_min_p, operand, scatter_indices, updates, dimension_numbers,
                         mode)


scatter_max_p = _scatter_primitive("scatter_max", "maximum")
ad.jvp_rules[scatter_max_p] = _scatter_chooser_jvp(scatter_max_p)


def scatter_max(operand, scatter_indices, updates, dimension_numbers, *,
                indices_are_sorted=False, unique_indices=False, mode=None):
    """Elementwise maximum of the operand and the scattered updates (np.maximum.at)."""
    return _scatter_bind(scatter_max_p, operand, scatter_indices, updates, dimension_numbers,
                         mode)

