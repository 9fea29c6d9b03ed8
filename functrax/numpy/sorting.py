"""Sorting and searching with numpy's conventions: sort, argsort (stable), lexsort,
searchsorted, unique.

``sort`` and ``argsort`` are ``lax.sort`` (NaNs last, as numpy); ``argsort`` sorts an ``iota``
alongside the keys. ``searchsorted`` is a vectorized binary search (``method='scan'``,
O(log n) gathers) or one broadcast comparison (``method='compare_all'``). ``unique`` has an
output shape that depends on the values, so it needs a concrete array (not under ``jit`` or
``vmap``).

>>> import functrax.numpy as fnp
>>> fnp.argsort(fnp.array([3.0, 1.0, 2.0])).tolist()
[1, 2, 0]
>>> fnp.searchsorted(fnp.array([1.0, 2.0, 3.0]), fnp.array([0.5, 2.0, 9.0])).tolist()
[0, 1, 3]
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes, lax
from ..core import Tracer, get_aval
from ..lax.sorting import take_along_axis_p
from ._util import asarray_arg
from .reductions import _AxisError

__all__ = ["sort", "argsort", "lexsort", "searchsorted", "unique"]


def _located(err):
    return core._locate(err)


def _axis_error(name, axis, ndim):
    return _located(_AxisError(f"{name}: axis {axis} is out of bounds for an array of "
                               f"dimension {ndim}"))


def _axis(name, x, axis):
    ndim = get_aval(x).ndim
    if isinstance(axis, (tuple, list)) or not isinstance(axis, (int, np.integer)):
        raise _located(TypeError(f"{name}: axis must be None or an int, got {axis!r}"))
    if not -ndim <= axis < ndim:
        raise _axis_error(name, axis, ndim)
    return int(axis) % ndim


def _prepare(name, a, axis, kind, order):
    if order is not None:
        raise _located(ValueError(f"{name}: order= (sorting structured arrays by field) is not "
                                  f"supported"))
    a = asarray_arg(a)
    if axis is None:
        a = lax.reshape(a, (get_aval(a).size,))
        return a, 0
    if get_aval(a).ndim == 0:
        raise _axis_error(name, axis, 0)
    return a, _axis(name, a, axis)


def _flip(x, axis):
    return lax.rev(x, (axis,))


def sort(a, axis=-1, kind=None, order=None, *, stable=True, descending=False):
    """numpy.sort (NaNs last); ``descending`` keeps equal elements in their original order."""
    a, ax = _prepare("sort", a, axis, kind, order)
    if descending:
        return _flip(lax.sort(_flip(a, ax), dimension=ax), ax)
    return lax.sort(a, dimension=ax)


def argsort(a, axis=-1, kind=None, order=None, *, stable=True, descending=False):
    """numpy.argsort, always stable, as int64; ``descending`` keeps equal elements in their
    original order."""
    a, ax = _prepare("argsort", a, axis, kind, order)
    aval = get_aval(a)
    iota = lax.broadcasted_iota(np.int64, aval.shape, ax)
    if descending:
        # Stable ascending sort of the reversed array, reversed back: descending, with ties in
        # their original order.
        _, perm = lax.sort((_flip(a, ax), iota), dimension=ax, num_keys=1)
        return lax.sub(aval.shape[ax] - 1, _flip(perm, ax))
    _, perm = lax.sort((a, iota), dimension=ax, num_keys=1)
    return perm


def lexsort(keys, axis=-1):
    """numpy.lexsort: the stable permutation sorting by the last key, then the one before..."""
    if isinstance(keys, (list, tuple)):
        keys = [asarray_arg(k) for k in keys]
    else:
        keys = asarray_arg(keys)
        k_aval = get_aval(keys)
        if k_aval.ndim == 0:
            raise _located(TypeError("lexsort: need a sequence of keys (got a 0-d array)"))
        keys = [lax.squeeze(lax.slice_in_dim(keys, i, i + 1, 1, 0), (0,))
                for i in range(k_aval.shape[0])]
    if not keys:
        raise _located(TypeError("lexsort: need at least one key"))
    shapes = {get_aval(k).shape for k in keys}
    if len(shapes) != 1:
        raise _located(ValueError(f"lexsort: all keys need to be the same shape, got "
                                  f"{[get_aval(k).shape for k in keys]}"))
    shape = shapes.pop()
    if not shape:
        raise _axis_error("lexsort", axis, 0)
    ax = _axis("lexsort", keys[0], axis)
    iota = lax.broadcasted_iota(np.int64, shape, ax)
    outs = lax.sort(tuple(reversed(keys)) + (iota,), dimension=ax, num_keys=len(keys))
    return outs[-1]


def _nan_aware_less(x, y, strict):
    """numpy's sort order, where NaN is larger than every number: x < y (or x <= y)."""
    base = lax.lt(x, y) if strict else lax.le(x, y)
    if not dtypes.is_inexact(get_aval(x).dtype) and not dtypes.is_inexact(get_aval(y).dtype):
        return base
    x_nan, y_nan = lax.ne(x, x), lax.ne(y, y)
    if strict:
        return lax.bitwise_or(base, lax.bitwise_and(y_nan, lax.bitwise_not(x_nan)))
    return lax.bitwise_or(base, y_nan)


def searchsorted(a, v, side="left", sorter=None, *, method="scan"):
    """numpy.searchsorted on a sorted 1-D ``a`` (NaNs last, as numpy sorts them), int64.

    ``method='scan'``: a binary search, vectorized over ``v`` (O(len(v) log len(a)));
    ``method='compare_all'``: one comparison of every ``v`` with every ``a``."""
    if side not in ("left", "right"):
        raise _located(ValueError(f"searchsorted: side must be 'left' or 'right', got "
                                  f"{side!r}"))
    if method not in ("scan", "compare_all"):
        raise _located(ValueError(f"searchsorted: method must be 'scan' or 'compare_all', got "
                                  f"{method!r}"))
    a, v = asarray_arg(a), asarray_arg(v)
    a_aval, v_aval = get_aval(a), get_aval(v)
    if a_aval.ndim != 1:
        raise _located(ValueError(f"searchsorted: a must be 1-D, got shape {a_aval.shape}"))
    if sorter is not None:
        a = take_along_axis_p.bind(a, asarray_arg(sorter), axis=0)
    dtype = dtypes.promote_avals_dtype([a_aval, v_aval])[0]
    a = lax.convert_element_type(a, dtype) if a_aval.dtype != dtype else a
    v = lax.convert_element_type(v, dtype) if v_aval.dtype != dtype or \
        v_aval.weak_type else v
    n = a_aval.shape[0]
    # "left": count the a[i] < v; "right": count the a[i] <= v.
    strict = side == "left"
    if n == 0:
        return lax.full(v_aval.shape, 0, np.int64)
    if method == "compare_all":
        below = _nan_aware_less(lax.broadcast_in_dim(a, v_aval.shape + (n,), (v_aval.ndim,)),
                                lax.broadcast_in_dim(v, v_aval.shape + (n,),
                                                     tuple(range(v_aval.ndim))), strict)
        return lax.reduce_sum(lax.convert_element_type(below, np.int64), (v_aval.ndim,))
    flat_v = lax.reshape(v, (v_aval.size,))
    found = lax.full((v_aval.size,), 0, np.int64)
    step = 1 << (n.bit_length() - 1)
    while step:
        # Invariant: a[:found] all satisfy the comparison; try to extend by ``step``.
        cand = lax.add(found, step)
        probe = take_along_axis_p.bind(a, lax.min(lax.sub(cand, 1), n - 1), axis=0)
        ok = lax.bitwise_and(lax.le(cand, n), _nan_aware_less(probe, flat_v, strict))
        found = lax.select_n(ok, found, cand)
        step >>= 1
    return lax.reshape(found, v_aval.shape)


def unique(ar, return_index=False, return_inverse=False, return_counts=False, axis=None, *,
           equal_nan=True):
    """numpy.unique. The number of unique values depends on the data, so ``ar`` must be
    concrete: under jit or vmap this raises an error that says so."""
    if isinstance(ar, Tracer):
        ar = core.concrete_or_error(
            ar, "functrax.numpy.unique(x), whose output shape depends on the values of x "
                "(call it on a concrete array, outside jit and vmap),")
    out = np.unique(np.asarray(ar), return_index=return_index, return_inverse=return_inverse,
                    return_counts=return_counts, axis=axis, equal_nan=equal_nan)
    if isinstance(out, tuple):
        return tuple(core.wrap_array(o) for o in out)
    return core.wrap_array(out)
