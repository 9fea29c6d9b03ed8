"""numpy indexing for traced and concrete arrays, and the functional updates behind ``x.at``.

``getitem(x, index)`` follows numpy: integers (negative count from the end), slices with any
step, ``None``/``newaxis``, ``...``, integer arrays (advanced indexing, with numpy's rule for
where the advanced dims go: in place when the advanced indices are adjacent, first otherwise)
and boolean masks (only when the mask is concrete: under ``jit`` a mask's number of True
entries, hence the result's shape, is unknown). Static pieces lower to ``slice``/``rev``/
``squeeze``/``reshape``, traced integer scalars to ``dynamic_slice`` and integer arrays to one
``gather``. In ``x[index]`` out-of-bounds static indices raise ``IndexError`` as in numpy and
out-of-bounds traced indices are clamped, as in JAX. ``getitem(x, index, mode=...)`` (what
``x.at[index].get(mode=...)`` calls) and ``index_update`` follow JAX's ``mode`` for every
integer index, concrete or traced, and never raise for out-of-bounds ones: a get clamps them
('clip', and the default 'promise_in_bounds') or returns ``fill_value`` ('fill'/'drop'); an
update drops them (the default, 'drop', 'fill') or clamps them ('clip').

``index_update(x, index, values, op)`` (``op`` in set/add/mul/min/max) is
``x.at[index].set(values)`` and friends: it never changes ``x``, and repeated indices
accumulate for add/mul/min/max (``np.add.at`` semantics).

``nonzero``/``argwhere``/``flatnonzero``/``where(cond)`` read the values of their input; under
``jit``/``vmap`` they need ``size=`` (the static length of the result: the first ``size``
indices, padded with ``fill_value``), and are then built from ``cumsum`` and one ``scatter``.

>>> import functrax.numpy as fnp
>>> x = fnp.arange(6.0).reshape(2, 3)
>>> getitem(x, (slice(None), [2, 0])).tolist()
[[2.0, 0.0], [5.0, 3.0]]
>>> index_update(fnp.zeros(3), [0, 0, 2], 1.0, "add").tolist()
[2.0, 0.0, 1.0]
"""
from __future__ import annotations

import operator

import numpy as np

from .. import core, dtypes, lax
from ..core import Tracer, get_aval
from ..lax._util import array_namespace, is_cupy, ufunc_at
from ._util import asarray_arg, holds_tracer, user_line as _user_line

__all__ = ["getitem", "index_update", "take", "take_along_axis", "where", "select",
           "nonzero", "argwhere", "flatnonzero", "diag", "diagonal", "tril", "triu"]


_INDEX_ERROR = ("only integers, slices (`:`), ellipsis (`...`), numpy.newaxis (`None`) and "
                "integer or boolean arrays are valid indices")


# ---------------------------------------------------------------------------------------------
# Parsing an index into entries


def _concrete_mask(m, what):
    if isinstance(m, Tracer):
        try:
            return np.asarray(core.concrete_or_error(
                m, f"boolean mask indexing ({what})"))
        except core.ConcretizationTypeError as e:
            raise IndexError(
                f"{what}: boolean mask indexing needs a concrete mask: the result's shape "
                f"depends on how many entries are True, and under jit/vmap only the mask's "
                f"shape ({m.aval.str_short()}) is known, while shapes must be static. Use "
                f"functrax.numpy.where(mask, x, other) to select values, or compute the "
                f"mask outside the transformed function. ({e.args[0].splitlines()[0]})"
            ) from None
    return np.asarray(m)


def _classify(item, what):
    """(kind, value) for one index item."""
    if item is None:
        return ("none", None)
    if item is Ellipsis:
        return ("ellipsis", None)
    if isinstance(item, slice):
        return ("slice", item)
    if isinstance(item, (bool, np.bool_)):
        return ("bool", bool(item))
    if isinstance(item, (int, np.integer)):
        return ("int", int(item))
    if isinstance(item, Tracer):
        aval = item.aval
        if dtypes.is_bool(aval.dtype):
            m = _concrete_mask(item, what)
            return ("bool", bool(m)) if m.ndim == 0 else ("mask", m)
        if not dtypes.is_integer(aval.dtype):
            raise IndexError(f"{what}: {_INDEX_ERROR}; got a traced {aval.str_short()}")
        return ("dyn", item) if aval.ndim == 0 else ("array", item)
    if isinstance(item, (list, tuple)):
        from .creation import array
        arr = array(item) if holds_tracer(item) else np.asarray(item)
        if not isinstance(arr, Tracer) and arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)  # numpy reads an empty list as an empty int index
        return _classify(arr, what)
    if hasattr(item, "__array__") or isinstance(item, np.ndarray):
        arr = np.asarray(item)
        if arr.dtype == np.bool_:
            return ("bool", bool(arr)) if arr.ndim == 0 else ("mask", arr)
        if not dtypes.is_integer(arr.dtype):
            raise IndexError(f"{what}: {_INDEX_ERROR}; got an array of dtype {arr.dtype}")
        return ("int", int(arr)) if arr.ndim == 0 else ("array", arr)
    raise IndexError(f"{what}: {_INDEX_ERROR}; got {type(item).__name__}")


def _parse(x, index, what):
    """Returns (x with size-1 axes inserted for scalar booleans, entries): every entry is
    ('none'|'slice'|'int'|'dyn'|'array', value), and the entries that are not 'none' match
    the dims of the returned x one to one. ``adjacent`` entries from one mask are marked."""
    if not isinstance(index, tuple):
        index = (index,)
    raw = [_classify(i, what) for i in index]
    entries = []
    for kind, val in raw:
        if kind == "mask":
            entries.append(("mask", val))
        else:
            entries.append((kind, val))
    if sum(k == "ellipsis" for k, _ in entries) > 1:
        raise IndexError(f"{what}: an index can only have a single ellipsis ('...')")
    ndim = get_aval(x).ndim
    consumed = sum(1 if k in ("slice", "int", "dyn", "array") else
                   (v.ndim if k == "mask" else 0) for k, v in entries)
    if consumed > ndim:
        raise IndexError(f"{what}: too many indices for array: array is {ndim}-dimensional, "
                         f"but {consumed} were indexed")
    fill = [("slice", slice(None))] * (ndim - consumed)
    if any(k == "ellipsis" for k, _ in entries):
        at = [k for k, _ in entries].index("ellipsis")
        entries = entries[:at] + fill + entries[at + 1:]
    else:
        entries = entries + fill
    # Masks become the integer arrays of their True positions; scalar booleans index a new
    # size-1 axis with [0] (True) or [] (False), which is what numpy does.
    shape = list(get_aval(x).shape)
    out, dim, new_axes = [], 0, []
    for kind, val in entries:
        if kind == "mask":
            want = tuple(shape[dim:dim + val.ndim])
            if val.shape != want:
                for j, (a, b) in enumerate(zip(val.shape, want)):
                    if a != b:
                        raise IndexError(
                            f"{what}: boolean index did not match indexed array along axis "
                            f"{dim + j}; size of axis is {b} but size of corresponding "
                            f"boolean axis is {a}")
            for arr in np.nonzero(val):
                out.append(("array", arr))
                dim += 1
        elif kind == "bool":
            new_axes.append(dim + len(new_axes))
            out.append(("array", np.zeros(int(val), np.int64)))
        elif kind == "none":
            out.append((kind, val))
        else:
            out.append((kind, val))
            dim += 1
    if new_axes:
        x = lax.expand_dims(x, tuple(new_axes))
    return x, out


# ---------------------------------------------------------------------------------------------
# getitem


def _static_int(v, what, context):
    return int(core.concrete_or_error(v, f"{what}: {context}"))


def _normalize_array(idx, size, axis, what, check, wrap_negative=True):
    """Negative entries count from the end (unless ``wrap_negative`` is False: then they are
    out of bounds); with ``check``, concrete out-of-bounds entries raise."""
    if isinstance(idx, Tracer):
        if not wrap_negative:
            return idx
        return lax.select_n(lax.lt(idx, 0), idx, lax.add(idx, size))
    idx = np.asarray(idx)
    low = -size if wrap_negative else 0
    if check and idx.size:
        bad = (idx < low) | (idx >= size)
        if bad.any():
            raise IndexError(f"{what}: index {int(idx[bad].flat[0])} is out of bounds for axis "
                             f"{axis} with size {size}")
    if not wrap_negative:
        return idx.astype(np.int64)
    return np.where(idx < 0, idx + size, idx).astype(np.int64)


def _basic(x, entries, what):
    """Apply slices, static ints and traced scalar ints (when there are no index arrays)."""
    shape = get_aval(x).shape
    start, limit, stride, rev_dims, squeeze_dims = [], [], [], [], []
    dyn = {}
    consuming = [(k, v) for k, v in entries if k != "none"]
    for d, (kind, val) in enumerate(consuming):
        size = shape[d]
        if kind == "slice":
            s = slice(*[None if b is None else _static_int(
                b, what, "slice bounds must be static (use lax.dynamic_slice for a traced "
                "start)") for b in (val.start, val.stop, val.step)])
            if s.step == 0:
                raise ValueError(f"{what}: slice step cannot be zero")
            b, e, st = s.indices(size)
            n = len(range(b, e, st))
            if st > 0:
                start.append(b), limit.append(b + (n - 1) * st + 1 if n else b)
                stride.append(st)
            else:
                last = b + (n - 1) * st
                start.append(last if n else 0), limit.append(b + 1 if n else 0)
                stride.append(-st)
                if n > 1:
                    rev_dims.append(d)
        elif kind == "int":
            if not -size <= val < size:
                raise IndexError(f"{what}: index {val} is out of bounds for axis {d} with "
                                 f"size {size}")
            i = val % size
            start.append(i), limit.append(i + 1), stride.append(1)
            squeeze_dims.append(d)
        elif kind == "dyn":
            start.append(0), limit.append(size), stride.append(1)
            dyn[d] = val
            squeeze_dims.append(d)
        else:  # an index array: its dim is kept whole for the gather
            start.append(0), limit.append(size), stride.append(1)
    if (start != [0] * len(shape) or limit != list(shape) or any(s != 1 for s in stride)):
        x = lax.slice(x, start, limit, stride)
    if rev_dims:
        x = lax.rev(x, rev_dims)
    if dyn:
        sizes = list(get_aval(x).shape)
        starts = [0] * len(sizes)
        for d, i in dyn.items():
            sizes[d] = 1
            starts[d] = lax.select_n(lax.lt(i, 0), i, lax.add(i, shape[d]))
        x = lax.dynamic_slice(x, starts, sizes)
    if squeeze_dims:
        x = lax.squeeze(x, squeeze_dims)
    return x


def _getitem(x, index, what, mode=None, fill_value=None, wrap_negative=True):
    """``mode`` None is numpy's ``x[index]`` (concrete out-of-bounds indices raise, traced ones
    are clamped); 'clip' or 'fill' is the gather mode for every integer index, concrete or
    traced, with no IndexError (how ``x.at[index].get(mode=...)`` reads)."""
    x = asarray_arg(x)
    x, entries = _parse(x, index, what)
    strict = mode is None
    has_adv = any(k == "array" for k, _ in entries)
    if has_adv or ((not strict or not wrap_negative)
                   and any(k in ("int", "dyn") for k, _ in entries)):
        # With index arrays present numpy treats integers as (0-d) index arrays too; an
        # explicit mode does the same so that the gather applies it to integers as well.
        entries = [("array", v) if k in ("int", "dyn") else (k, v) for k, v in entries]
        has_adv = True
    y = _basic(x, entries, what)
    if not has_adv:
        new = [i for i, (k, _) in enumerate(e for e in entries if e[0] != "int"
                                            and e[0] != "dyn") if k == "none"]
        return lax.expand_dims(y, tuple(new)) if new else y
    shape = get_aval(x).shape
    y_dims = [(k, v) for k, v in entries if k != "none"]
    adv_dims = [d for d, (k, _) in enumerate(y_dims) if k == "array"]
    arrays = [_normalize_array(y_dims[d][1], shape[d], d, what, check=strict,
                               wrap_negative=wrap_negative) for d in adv_dims]
    try:
        bshape = np.broadcast_shapes(*[get_aval(a).shape for a in arrays])
    except ValueError:
        raise IndexError(f"{what}: shape mismatch: indexing arrays could not be broadcast "
                         f"together with shapes "
                         f"{' '.join(str(get_aval(a).shape) for a in arrays)}") from None
    if not any(isinstance(a, Tracer) for a in arrays) and core._state.dynamic is None:
        indices = np.stack([np.broadcast_to(a, bshape) for a in arrays], axis=-1)
    else:
        cols = [lax.broadcast_in_dim(lax.convert_element_type(a, np.int64), bshape + (1,),
                                     tuple(range(len(bshape) - get_aval(a).ndim, len(bshape))))
                for a in arrays]
        indices = lax.concatenate(cols, len(bshape)) if len(cols) > 1 else cols[0]
    y_shape = get_aval(y).shape
    n_rest = len(y_shape) - len(adv_dims)
    positions = [i for i, (k, _) in enumerate(entries) if k == "array"]
    contiguous = positions == list(range(positions[0], positions[0] + len(positions)))
    nb = len(bshape)
    if contiguous:
        q = sum(1 for k, _ in entries[:positions[0]] if k == "slice")
        offset_dims = tuple(range(q)) + tuple(range(q + nb, nb + n_rest))
    else:
        offset_dims = tuple(range(nb, nb + n_rest))
    dn = lax.GatherDimensionNumbers(offset_dims=offset_dims,
                                    collapsed_slice_dims=tuple(adv_dims),
                                    start_index_map=tuple(adv_dims))
    sizes = tuple(1 if d in adv_dims else s for d, s in enumerate(y_shape))
    out = lax.gather(y, indices, dn, sizes, mode="clip" if strict else mode,
                     fill_value=fill_value)
    # Finally the new axes: lay out the result's dims in numpy's order.
    layout = []
    if not contiguous:
        layout += ["adv"] * nb
    for i, (k, _) in enumerate(entries):
        if k == "slice":
            layout.append("y")
        elif k == "none":
            layout.append("new")
        elif contiguous and i == positions[0]:
            layout += ["adv"] * nb
    new = tuple(i for i, t in enumerate(layout) if t == "new")
    return lax.expand_dims(out, new) if new else out


def _has_tracer(index):
    if isinstance(index, Tracer):
        return True
    if isinstance(index, (tuple, list)):
        return any(_has_tracer(i) for i in index)
    return False


# JAX's out-of-bounds modes for x.at[...] (lax.GatherScatterMode): None is
# 'promise_in_bounds', which reads as 'clip' in a get and as 'drop' in an update; 'fill' and
# 'drop' are one mode (a get returns fill_value, an update is skipped).
_OOB_MODES = ("promise_in_bounds", "clip", "drop", "fill")


def _oob_mode(mode, what):
    """'promise_in_bounds', 'clip' or 'fill' (for 'drop' too) from a user's ``mode``."""
    if mode is None:
        return "promise_in_bounds"
    m = getattr(mode, "value", mode)  # an enum member reads as its value
    if isinstance(m, str) and m.lower() in _OOB_MODES:
        m = m.lower()
        return "fill" if m == "drop" else m
    hint = (f" ({mode!r} is an update operation: pass it as op=, e.g. "
            f"index_update(x, index, values, {mode!r}))" if m in _UPDATES else "")
    raise ValueError(f"{what}: unknown mode {mode!r}; valid modes are None, "
                     f"{', '.join(repr(o) for o in _OOB_MODES)}{hint}")


def _fill_scalar(fill_value, what):
    if fill_value is None:
        return None
    fill = np.asarray(core.concrete_or_error(fill_value, f"{what}: fill_value (it must be "
                                                         f"a concrete scalar)"))
    if fill.ndim != 0:
        raise ValueError(f"{what}: fill_value must be a scalar, got shape {fill.shape}")
    return fill.item()


@_user_line
def getitem(x, index, *, mode=None, fill_value=None, indices_are_sorted=False,
            unique_indices=False, wrap_negative_indices=True):
    """``x[index]`` as numpy (see the module doc); with ``mode``, as x.at[index].get(mode).

    With a ``mode``: 'clip'/'promise_in_bounds' clamp out-of-bounds integer indices,
    'fill'/'drop' give ``fill_value`` there (NaN for inexact dtypes, the smallest signed /
    largest unsigned integer, True for bools), with no IndexError either way. ``wrap_negative_indices=False`` makes negative indices out of bounds instead of
    counting from the end. ``indices_are_sorted``/``unique_indices`` are hints (accepted as
    in JAX; results never depend on them).

    >>> import functrax.numpy as fnp
    >>> x = fnp.arange(5.0)
    >>> getitem(x, 7, mode="clip").item(), getitem(x, [1, 7], mode="fill").tolist()
    (4.0, [1.0, nan])
    """
    del indices_are_sorted, unique_indices  # hints: gather has no faster path for them
    if mode is None and wrap_negative_indices:
        if not isinstance(x, Tracer) and core._state.dynamic is None and not _has_tracer(index):
            return core.wrap_array(np.asarray(x)[index])
        return _getitem(x, index, "getitem")
    what = "x.at[...].get"
    gmode = _oob_mode(mode, what) if mode is not None else None
    gmode = "clip" if gmode == "promise_in_bounds" else gmode
    return _getitem(x, index, what, mode=gmode, fill_value=_fill_scalar(fill_value, what),
                    wrap_negative=wrap_negative_indices)


# ---------------------------------------------------------------------------------------------
# index_update (x.at[index].set/add/mul/min/max)

_UPDATES = {"set": (lax.scatter, None), "add": (lax.scatter_add, np.add),
            "mul": (lax.scatter_mul, np.multiply), "min": (lax.scatter_min, np.minimum),
            "max": (lax.scatter_max, np.maximum)}


def _fit_values(values, shape, what):
    vshape = get_aval(values).shape
    while len(vshape) > len(shape) and vshape[0] == 1:
        values = lax.reshape(values, vshape[1:])
        vshape = vshape[1:]
    try:
        if np.broadcast_shapes(vshape, shape) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ValueError(f"{what}: values of shape {vshape} cannot be broadcast to the indexed "
                         f"shape {tuple(shape)}") from None
    return lax.broadcast_to(values, shape)


@_user_line
def index_update(x, index, values, op="set", *, mode=None, indices_are_sorted=False,
                 unique_indices=False, wrap_negative_indices=True):
    """x.at[index].<op>(values, mode=...): set, add, mul, min or max, into a copy of x.

    ``x[index]`` is combined with ``values``. Repeated indices accumulate (for set, one of
    them wins). ``mode`` says what out-of-bounds integer indices do, as in JAX:
    None/'promise_in_bounds', 'drop' and 'fill' skip their updates, 'clip' clamps them into
    range; there is no IndexError either way.
    ``wrap_negative_indices=False`` makes negative indices out of bounds.
    ``indices_are_sorted``/``unique_indices`` are hints (results never depend on them).

    >>> import functrax.numpy as fnp
    >>> index_update(fnp.zeros(3), [0, 5], 1.0, "add").tolist()
    [1.0, 0.0, 0.0]
    >>> index_update(fnp.zeros(3), [0, 5], 1.0, "add", mode="clip").tolist()
    [1.0, 0.0, 1.0]
    """
    del indices_are_sorted, unique_indices  # hints: the scatter has no faster path for them
    what = f"x.at[...].{op}"
    if op not in _UPDATES:
        raise ValueError(f"index_update: unknown op {op!r}; use one of {sorted(_UPDATES)}")
    oob = _oob_mode(mode, what)
    x = asarray_arg(x)
    values = asarray_arg(values)
    aval = get_aval(x)
    scatter, ufunc = _UPDATES[op]
    xp = array_namespace(x, values)
    if (oob != "clip" and wrap_negative_indices and not is_cupy(xp)
            and not isinstance(x, Tracer) and not isinstance(values, Tracer)
            and core._state.dynamic is None and not _has_tracer(index)):
        # numpy's own indexing, on the host or the simulated GPU. numpy raises IndexError for
        # out-of-bounds indices, which this mode drops: those take the general path below.
        # (CuPy wraps such indices around instead, so GPU arrays always take that path.)
        out = xp.array(x, copy=True)
        vals = xp.asarray(values).astype(aval.dtype, copy=False)
        idx = tuple(np.asarray(i) if isinstance(i, list) else i for i in index) \
            if isinstance(index, tuple) else (np.asarray(index) if isinstance(index, list)
                                              else index)
        try:
            target_shape = out[idx].shape
        except IndexError:
            target_shape = None
        if target_shape is not None:
            vals = xp.asarray(_fit_values(vals, target_shape, what))
            if ufunc is None:
                out[idx] = vals
            else:
                ufunc_at(xp, ufunc.__name__, out, idx, vals)
            return core.wrap_array(out)
    # Which flat positions of x the index selects, then one scatter on the flattened x. With
    # 'clip' the gather clamps out-of-bounds indices to real positions; otherwise they give
    # -1, which the scatter drops.
    positions = lax.reshape(lax.iota(np.int64, aval.size), aval.shape)
    if oob == "clip":
        pos = _getitem(positions, index, what, mode="clip", wrap_negative=wrap_negative_indices)
    else:
        pos = _getitem(positions, index, what, mode="fill", fill_value=-1,
                       wrap_negative=wrap_negative_indices)
    pos_shape = get_aval(pos).shape
    values = lax.convert_element_type(values, aval.dtype)
    values = _fit_values(values, pos_shape, what)
    dn = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                     scatter_dims_to_operand_dims=(0,))
    flat = lax.reshape(x, (aval.size,))
    out = scatter(flat, lax.reshape(pos, pos_shape + (1,)), values, dn, mode="fill")
    return lax.reshape(out, aval.shape)


# ---------------------------------------------------------------------------------------------
# take, take_along_axis


def _check_axis(name, axis, ndim):
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: axis {axis} is out of bounds for an array of dimension "
                         f"{ndim}")
    return axis % ndim


def _prepare_indices(name, indices, size, mode):
    """Indices per ``mode`` (None/'fill': negatives wrap, out of bounds filled; 'raise': like
    None but concrete out-of-bounds indices raise; 'clip'; 'wrap'), and the gather mode."""
    indices = asarray_arg(indices)
    aval = get_aval(indices)
    if not dtypes.is_integer(aval.dtype):
        raise TypeError(f"{name}: indices must be integers, got {aval.str_short()}")
    if mode in (None, "raise", "fill"):
        traced = isinstance(indices, Tracer)
        if mode == "raise" and traced:
            raise ValueError(f"{name}: mode='raise' needs concrete indices; under jit use "
                             f"mode='clip', 'wrap' or 'fill'")
        return _normalize_array(indices, size, 0, name, check=not traced and mode != "fill"), \
            "fill"
    if mode == "clip":
        return lax.max(lax.min(indices, size - 1), 0), "clip"
    if mode == "wrap":
        if isinstance(indices, Tracer):
            r = lax.rem(indices, size)
            return lax.select_n(lax.lt(r, 0), r, lax.add(r, size)), "clip"
        return np.mod(np.asarray(indices), size), "clip"
    raise ValueError(f"{name}: unknown mode {mode!r}; use 'raise', 'wrap', 'clip' or 'fill'")


@_user_line
def take(a, indices, axis=None, out=None, mode=None, unique_indices=False,
         indices_are_sorted=False, fill_value=None):
    """numpy.take; out-of-bounds traced indices give ``fill_value`` (NaN for floats) unless
    ``mode`` is 'clip' or 'wrap', as in JAX."""
    if out is not None:
        raise ValueError("take: the 'out' argument is not supported (arrays are immutable)")
    a = asarray_arg(a)
    if axis is None:
        a = lax.reshape(a, (get_aval(a).size,))
        axis = 0
    shape = get_aval(a).shape
    axis = _check_axis("take", axis, len(shape))
    idx, gmode = _prepare_indices("take", indices, shape[axis], mode)
    ishape = get_aval(idx).shape
    idx = lax.reshape(lax.convert_element_type(idx, np.int64), ishape + (1,))
    out_rank = len(shape) - 1 + len(ishape)
    offset = tuple(range(axis)) + tuple(range(axis + len(ishape), out_rank))
    dn = lax.GatherDimensionNumbers(offset_dims=offset, collapsed_slice_dims=(axis,),
                                    start_index_map=(axis,))
    sizes = tuple(1 if d == axis else s for d, s in enumerate(shape))
    return lax.gather(a, idx, dn, sizes, mode=gmode, fill_value=fill_value)


@_user_line
def take_along_axis(arr, indices, axis, mode=None, fill_value=None):
    """numpy.take_along_axis: ``indices`` has arr's rank and broadcasts against it in the
    other dims. One gather with batching dims pairs those dims."""
    arr = asarray_arg(arr)
    indices = asarray_arg(indices)
    if axis is None:
        arr = lax.reshape(arr, (get_aval(arr).size,))
        indices = lax.reshape(indices, (get_aval(indices).size,))
        axis = 0
    shape, ishape = get_aval(arr).shape, get_aval(indices).shape
    if len(shape) != len(ishape):
        raise ValueError(f"take_along_axis: indices of rank {len(ishape)} must have the rank "
                         f"of the array ({len(shape)})")
    axis = _check_axis("take_along_axis", axis, len(shape))
    idx, gmode = _prepare_indices("take_along_axis", indices, shape[axis], mode)
    others = [d for d in range(len(shape)) if d != axis]
    try:
        common = np.broadcast_shapes(tuple(shape[d] for d in others),
                                     tuple(ishape[d] for d in others))
    except ValueError:
        raise ValueError(f"take_along_axis: indices of shape {ishape} do not broadcast against "
                         f"the array of shape {shape} outside axis {axis}") from None
    a_shape, i_shape = list(common), list(common)
    a_shape.insert(axis, shape[axis])
    i_shape.insert(axis, ishape[axis])
    arr = lax.broadcast_to(arr, tuple(a_shape))
    idx = lax.broadcast_to(lax.convert_element_type(idx, np.int64), tuple(i_shape))
    idx = lax.reshape(idx, tuple(i_shape) + (1,))
    dn = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(axis,),
                                    start_index_map=(axis,),
                                    operand_batching_dims=tuple(others),
                                    start_indices_batching_dims=tuple(others))
    return lax.gather(arr, idx, dn, (1,) * len(shape), mode=gmode, fill_value=fill_value)


# ---------------------------------------------------------------------------------------------
# where, select, nonzero


def _as_bool(c):
    c = asarray_arg(c)
    if get_aval(c).dtype != np.bool_:
        c = lax.ne(c, lax.full((), 0, get_aval(c).dtype))
    return c


def _promote(*xs):
    xs = [asarray_arg(x) for x in xs]
    avals = [get_aval(x) for x in xs]
    dtype, weak = dtypes.promote_avals_dtype(avals)
    return [x if a.dtype == dtype else lax.convert_element_type(x, dtype, weak_type=weak)
            for x, a in zip(xs, avals)]


@_user_line
def where(condition, x=None, y=None, /, *, size=None, fill_value=None):
    """``x`` where ``condition`` else ``y`` (broadcasting); with only a condition, the
    indices of its nonzero entries, as ``nonzero`` (under jit/vmap pass ``size``, and
    optionally ``fill_value``, for a static length).

    >>> import functrax
    >>> import functrax.numpy as fnp
    >>> functrax.jit(lambda c: fnp.where(c, size=2)[0])(fnp.array([0, 1, 1, 1])).tolist()
    [1, 2]
    """
    if x is None and y is None:
        return nonzero(condition, size=size, fill_value=fill_value)
    if x is None or y is None:
        raise ValueError("where: either both or neither of x and y should be given")
    if size is not None or fill_value is not None:
        raise ValueError("where: size and fill_value only apply to the one-argument form "
                         "where(condition)")
    x, y = _promote(x, y)
    return lax.select_n(_as_bool(condition), y, x)


@_user_line
def select(condlist, choicelist, default=0):
    """numpy.select: the first true condition picks its choice, else ``default``."""
    if len(condlist) != len(choicelist):
        raise ValueError(f"select: condlist has {len(condlist)} entries but choicelist has "
                         f"{len(choicelist)}")
    if not condlist:
        raise ValueError("select: condlist and choicelist must not be empty")
    out = _promote(default, *choicelist)
    result, choices = out[0], out[1:]
    for c, v in zip(reversed(list(condlist)), reversed(choices)):
        result = where(c, v, result)
    return result


def _concrete_array(a, name):
    a = asarray_arg(a)
    if isinstance(a, Tracer):
        try:
            return np.asarray(core.concrete_or_error(a, name))
        except core.ConcretizationTypeError:
            raise core.ConcretizationTypeError(
                a, f"{name} without size= (the number of nonzero entries, hence the result's "
                   f"shape, depends on the values, which are not known under jit/vmap; pass "
                   f"size=N (and optionally fill_value=) for a result of static length N, or "
                   f"use fnp.where(cond, x, y) to select values)",
                a._trace.transform_name()) from None
    return np.asarray(a)


def _size_arg(size, name):
    size = core.concrete_or_error(size, f"{name}: size (the static length of the result)")
    try:
        size = operator.index(size if not isinstance(size, np.ndarray) else size.item())
    except TypeError:
        raise TypeError(f"{name}: size must be an integer, got {size!r}") from None
    if size < 0:
        raise ValueError(f"{name}: size must be non-negative, got {size}")
    return size


def _fill_values(fill_value, ndim, name):
    """One scalar fill per dim: fill_value is a scalar or a tuple with one per dim."""
    if fill_value is None:
        return (0,) * ndim
    fills = tuple(fill_value) if isinstance(fill_value, (tuple, list)) else (fill_value,) * ndim
    if len(fills) != ndim or any(get_aval(asarray_arg(f)).ndim != 0 for f in fills):
        raise ValueError(f"{name}: fill_value must be a scalar or a tuple of {ndim} scalars "
                         f"(one per dim), got {fill_value!r}")
    return fills


def _nonzero_sized(a, size, fill_value, name):
    """The first ``size`` nonzero positions of ``a`` (row-major), one int64 array per dim,
    padded with ``fill_value``: a static shape, so it traces. Each nonzero entry's rank among
    the nonzero entries (a cumsum) is the output slot it is scattered to; zero entries and
    ranks past ``size`` aim at slot ``size``, which the scatter drops."""
    a = asarray_arg(a)
    shape = get_aval(a).shape
    fills = _fill_values(fill_value, len(shape), name)
    n = int(np.prod(shape, dtype=np.int64))
    if n == 0 or size == 0:
        flat = lax.full((size,), 0, np.int64)
        valid = lax.full((size,), False, np.bool_)
    else:
        mask = lax.reshape(_as_bool(a), (n,))
        ones = lax.convert_element_type(mask, np.int64)
        rank = lax.cumsum(ones, 0)
        slot = lax.select_n(mask, lax.full((n,), size, np.int64), lax.sub(rank, 1))
        dn = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                         scatter_dims_to_operand_dims=(0,))
        flat = lax.scatter(lax.full((size,), 0, np.int64), lax.reshape(slot, (n, 1)),
                           lax.iota(np.int64, n), dn, mode="fill")
        count = lax.reduce_sum(ones, (0,))
        valid = lax.lt(lax.iota(np.int64, size), count)
    out = []
    for d, (dim, fill) in enumerate(zip(shape, fills)):
        # Unravel the flat (row-major) position; n == 0 gives only filled slots.
        stride = int(np.prod(shape[d + 1:], dtype=np.int64))
        idx = lax.div(flat, lax.full((), max(stride, 1), np.int64)) if stride > 1 else flat
        if d > 0:
            idx = lax.rem(idx, lax.full((), max(dim, 1), np.int64))
        idx, fill = _promote(idx, fill)
        out.append(lax.select_n(valid, lax.broadcast_to(fill, (size,)), idx))
    return tuple(out)


@_user_line
def nonzero(a, *, size=None, fill_value=None):
    """The indices of the nonzero entries, one array per dim; jit/vmap need ``size``.

    With ``size`` the result holds the first ``size`` indices, padded with ``fill_value``
    (default 0; a scalar or one per dim), as in JAX.

    >>> import functrax
    >>> import functrax.numpy as fnp
    >>> f = functrax.jit(lambda x: fnp.nonzero(x, size=3, fill_value=-1))
    >>> [i.tolist() for i in f(fnp.array([[0, 5], [7, 0]]))]
    [[0, 1, -1], [1, 0, -1]]
    """
    if get_aval(asarray_arg(a)).ndim == 0:
        raise ValueError("nonzero: calling nonzero on 0d arrays is not allowed; use "
                         "atleast_1d(a).nonzero()")
    if size is not None:
        return _nonzero_sized(a, _size_arg(size, "nonzero"), fill_value, "nonzero")
    a = _concrete_array(a, "nonzero")
    from .creation import asarray
    return tuple(asarray(o) for o in np.nonzero(a))


@_user_line
def argwhere(a, *, size=None, fill_value=None):
    """Indices of the nonzero entries as an (N, ndim) array; jit/vmap need ``size``.

    With ``size``, N = size: rows past the nonzero entries hold ``fill_value`` (default 0).

    >>> import functrax
    >>> import functrax.numpy as fnp
    >>> functrax.jit(lambda x: fnp.argwhere(x, size=2))(fnp.array([0, 0, 3])).tolist()
    [[2], [0]]
    """
    if size is not None:
        size = _size_arg(size, "argwhere")
        a = asarray_arg(a)
        if get_aval(a).ndim == 0:
            # numpy's (N, 0) result for a 0-d input: only the number of rows is data.
            return lax.full((size, 0), 0, np.int64)
        cols = _nonzero_sized(a, size, fill_value, "argwhere")
        return lax.concatenate([lax.reshape(c, (size, 1)) for c in cols], 1)
    a = _concrete_array(a, "argwhere")
    return core.wrap_array(np.argwhere(a))


@_user_line
def flatnonzero(a, *, size=None, fill_value=None):
    """Indices of the nonzero entries of the flattened ``a``; jit/vmap need ``size``.

    With ``size`` the result is padded with ``fill_value`` (default 0) or truncated.

    >>> import functrax
    >>> import functrax.numpy as fnp
    >>> functrax.jit(lambda x: fnp.flatnonzero(x, size=3))(fnp.eye(2)).tolist()
    [0, 3, 0]
    """
    if size is not None:
        a = asarray_arg(a)
        a = lax.reshape(a, (get_aval(a).size,))
        return _nonzero_sized(a, _size_arg(size, "flatnonzero"), fill_value, "flatnonzero")[0]
    a = _concrete_array(a, "flatnonzero")
    return core.wrap_array(np.flatnonzero(a))


# ---------------------------------------------------------------------------------------------
# diagonals and triangles


@_user_line
def diagonal(a, offset=0, axis1=0, axis2=1):
    """numpy.diagonal: the diagonal dim is last. A strided slice of the flattened matrices."""
    a = asarray_arg(a)
    nd = get_aval(a).ndim
    if nd < 2:
        raise ValueError(f"diagonal: requires an array of at least two dimensions, got {nd}")
    axis1, axis2 = _check_axis("diagonal", axis1, nd), _check_axis("diagonal", axis2, nd)
    if axis1 == axis2:
        raise ValueError("diagonal: axis1 and axis2 cannot be the same")
    perm = [d for d in range(nd) if d not in (axis1, axis2)] + [axis1, axis2]
    a = lax.transpose(a, perm)
    shape = get_aval(a).shape
    lead, (n, m) = shape[:-2], shape[-2:]
    offset = int(offset)
    if offset >= 0:
        a = lax.slice_in_dim(a, min(offset, m), m, 1, nd - 1)
    else:
        a = lax.slice_in_dim(a, min(-offset, n), n, 1, nd - 2)
    n2, m2 = get_aval(a).shape[-2:]
    length = min(n2, m2)
    if length == 0:
        return lax.full(lead + (0,), 0, get_aval(a).dtype)
    flat = lax.reshape(a, lead + (n2 * m2,))
    return lax.slice_in_dim(flat, 0, (length - 1) * (m2 + 1) + 1, m2 + 1, nd - 2)


@_user_line
def diag(v, k=0):
    """The k-th diagonal of a 2-D array, or a 2-D array with v on its k-th diagonal."""
    v = asarray_arg(v)
    aval = get_aval(v)
    if aval.ndim == 2:
        return diagonal(v, k)
    if aval.ndim != 1:
        raise ValueError(f"diag: input must be 1- or 2-d, got shape {aval.shape}")
    k = int(k)
    n = aval.shape[0]
    m = n + abs(k)
    padded = lax.pad(v, lax.full((), 0, aval.dtype), [(0, abs(k), 0)])
    spread = lax.broadcast_in_dim(padded, (m, m), (0,) if k >= 0 else (1,))
    rows = lax.broadcasted_iota(np.int64, (m, m), 0)
    cols = lax.broadcasted_iota(np.int64, (m, m), 1)
    mask = lax.eq(cols, lax.add(rows, k))
    return lax.select_n(mask, lax.full((m, m), 0, aval.dtype), spread)


def _triangle(name, m, k, lower):
    m = asarray_arg(m)
    aval = get_aval(m)
    if aval.ndim == 0:
        raise ValueError(f"{name}: input must be at least 1-d")
    if aval.ndim == 1:
        m = lax.broadcast_in_dim(m, (aval.shape[0],) * 2, (1,))
        aval = get_aval(m)
    n_r, n_c = aval.shape[-2:]
    rows = lax.broadcasted_iota(np.int64, (n_r, n_c), 0)
    cols = lax.broadcasted_iota(np.int64, (n_r, n_c), 1)
    limit = lax.add(rows, int(k))
    keep = lax.le(cols, limit) if lower else lax.ge(cols, limit)
    return lax.select_n(keep, lax.full((), 0, aval.dtype), m)


@_user_line
def tril(m, k=0):
    """Lower triangle of the last two dims (entries above the k-th diagonal zeroed)."""
    return _triangle("tril", m, k, True)


@_user_line
def triu(m, k=0):
    """Upper triangle of the last two dims (entries below the k-th diagonal zeroed)."""
    return _triangle("triu", m, k, False)
