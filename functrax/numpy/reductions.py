"""Reductions with numpy's conventions: ``axis`` (None, an int, a tuple, negative values),
``keepdims``, ``dtype``, ``where=``, ``ddof``, and numpy's result dtypes (sums and products of
booleans and small integers accumulate in int64/uint64; means, variances and quantiles of
integers are float64). Also the NaN-ignoring variants, quantiles and cumulative sums.

Everything is written over ``functrax.lax`` and is differentiable where numpy's function is
(max/min share the gradient evenly among tied extrema; prod is exact with zeros; median and
quantile differentiate through the sort). A bad axis raises numpy's ``AxisError`` naming the
function.

>>> import functrax.numpy as fnp
>>> fnp.sum(fnp.ones((2, 3)), axis=0).tolist()
[2.0, 2.0, 2.0]
>>> fnp.quantile(fnp.array([1.0, 2.0, 3.0, 4.0]), 0.5).item()
2.5
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from .. import core, dtypes, lax
from ..core import Tracer, get_aval
from ..lax.sorting import take_along_axis_p
from ._util import asarray_arg

__all__ = ["sum", "prod", "mean", "var", "std", "max", "min", "amax", "amin", "all", "any",
           "argmax", "argmin", "median", "quantile", "percentile", "nansum", "nanprod",
           "nanmean", "nanvar", "nanstd", "nanmax", "nanmin", "nanargmax", "nanargmin",
           "nanmedian", "nanquantile", "nanpercentile", "average", "cumsum", "cumprod",
           "cumulative_sum", "cumulative_prod", "nancumsum", "nancumprod", "count_nonzero",
           "ptp"]


# ---------------------------------------------------------------------------------------------
# Argument handling


class _Info:
    """shape/dtype/ndim/size of a concrete ndarray, without building a ShapedArray: the eager
    path of every reduction reads these several times."""

    __slots__ = ("shape", "dtype", "ndim", "size", "weak_type")

    def __init__(self, x):
        self.shape, self.dtype, self.ndim, self.size = x.shape, x.dtype, x.ndim, x.size
        self.weak_type = False


def _aval(x):
    return _Info(x) if isinstance(x, np.ndarray) else get_aval(x)


def _located(err):
    """Point an error raised here (before any bind) at the user's line, as bind does."""
    return core._locate(err)


class _AxisError(np.exceptions.AxisError):
    # numpy's AxisError formats its message from private fields; keep ours (with the user's
    # line appended) as the message.
    def __str__(self):
        return self.args[0] if self.args else ""


def _axes(name, x, axis):
    """numpy's axis argument as a sorted tuple of non-negative axes."""
    ndim = _aval(x).ndim
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        axis = (int(axis),)
    elif isinstance(axis, (tuple, list)):
        axis = tuple(axis)
    else:
        raise _located(TypeError(f"{name}: axis must be None, an int or a tuple of ints, got "
                                 f"{axis!r}"))
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < ndim:
            raise _located(_AxisError(f"{name}: axis {a} is out of bounds for an array of "
                                      f"dimension {ndim}"))
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise _located(ValueError(f"{name}: duplicate value in 'axis': {axis}"))
    return tuple(sorted(out))


def _reduce(prim):
    """The reduction primitive applied to axes that are already normalized."""
    return lambda x, axes: prim.bind(x, axes=axes)


_SUM, _PROD = _reduce(lax.reduce_sum_p), _reduce(lax.reduce_prod_p)
_MAX, _MIN = _reduce(lax.reduce_max_p), _reduce(lax.reduce_min_p)


def _check_out(name, out):
    if out is not None:
        raise _located(TypeError(f"{name}: out= is not supported (functrax arrays are "
                                 f"immutable); use the returned array"))


def _keepdims(shape, r, axes):
    kept = tuple(1 if i in axes else d for i, d in enumerate(shape))
    return lax.reshape(r, kept)


def _finish(shape, r, axes, keepdims):
    return _keepdims(shape, r, axes) if keepdims else r


def _accum_dtype(dtype):
    """numpy's accumulator for sum/prod/cumsum: booleans and small ints widen to 64 bits."""
    if dtypes.is_bool(dtype) or (dtype.kind == "i" and dtype.itemsize < 8):
        return np.dtype(np.int64)
    if dtype.kind == "u" and dtype.itemsize < 8:
        return np.dtype(np.uint64)
    return dtype


def _float_dtype(dtype):
    """numpy's result dtype for mean/var/quantile: integers and booleans become float64."""
    return dtype if dtypes.is_inexact(dtype) else dtypes.default_float


def _as_dtype(x, dtype):
    aval = _aval(x)
    if aval.dtype == dtype:
        return x
    return lax.convert_element_type(x, dtype, weak_type=False)


def _isnan(x):
    aval = _aval(x)
    if not dtypes.is_inexact(aval.dtype):
        return lax.full(aval.shape, False, np.bool_)
    return lax.ne(x, x)


def _masked(x, where, fill):
    """x where ``where`` holds, ``fill`` elsewhere (x's shape and dtype)."""
    aval = _aval(x)
    where = asarray_arg(where)
    fill_arr = lax.full(aval.shape, fill, aval.dtype)
    out = lax.select_n(lax.broadcast_to(where, aval.shape), fill_arr, x)
    return out


def _count(name, x, axes, where):
    """The number of elements reduced (a Python int, or an array when ``where`` is given)."""
    aval = _aval(x)
    if where is None:
        return math.prod(aval.shape[a] for a in axes)
    mask = lax.broadcast_to(asarray_arg(where), aval.shape)
    return lax.reduce_sum(lax.convert_element_type(mask, np.int64), axes)


def _ravel(x):
    aval = _aval(x)
    return lax.reshape(x, (aval.size,))


# ---------------------------------------------------------------------------------------------
# sum, prod, mean, var, std


def _sum_like(name, reducer, identity, a, axis, dtype, out, keepdims, initial, where, combine):
    _check_out(name, out)
    a = asarray_arg(a)
    aval = _aval(a)
    axes = _axes(name, a, axis)
    target = np.dtype(dtype) if dtype is not None else _accum_dtype(aval.dtype)
    a = _as_dtype(a, target)
    if where is not None:
        a = _masked(a, where, identity)
    r = reducer(a, axes)
    if initial is not None:
        r = combine(r, _as_dtype(asarray_arg(initial), target))
    return _finish(aval.shape, r, axes, keepdims)


def sum(a, axis=None, dtype=None, out=None, keepdims=False, initial=None,  # noqa: A001
        where=None):
    """numpy.sum: booleans and small integers accumulate in int64 (uint64), as numpy does."""
    return _sum_like("sum", _SUM, 0, a, axis, dtype, out, keepdims, initial, where, lax.add)


def prod(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    """numpy.prod; its gradient is exact when some elements are zero."""
    return _sum_like("prod", _PROD, 1, a, axis, dtype, out, keepdims, initial, where, lax.mul)


def mean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=None):
    """numpy.mean: integer inputs give float64."""
    _check_out("mean", out)
    a = asarray_arg(a)
    aval = _aval(a)
    axes = _axes("mean", a, axis)
    target = np.dtype(dtype) if dtype is not None else _float_dtype(aval.dtype)
    a = _as_dtype(a, target)
    if where is not None:
        a = _masked(a, where, 0)
    n = _count("mean", a, axes, where)
    r = lax.div(lax.reduce_sum_p.bind(a, axes=axes),
                n if isinstance(n, int) else _as_dtype(n, target))
    return _finish(aval.shape, r, axes, keepdims)


def _var(name, a, axis, dtype, out, ddof, keepdims, where, mean_arg, correction, ignore_nan):
    _check_out(name, out)
    if correction is not None:
        if ddof != 0:
            raise _located(ValueError(f"{name}: ddof and correction can't be provided "
                                      f"simultaneously"))
        ddof = correction
    a = asarray_arg(a)
    aval = _aval(a)
    axes = _axes(name, a, axis)
    target = np.dtype(dtype) if dtype is not None else _float_dtype(aval.dtype)
    a = _as_dtype(a, target)
    valid = None
    if ignore_nan:
        valid = lax.bitwise_not(_isnan(a))
    if where is not None:
        w = lax.broadcast_to(asarray_arg(where), aval.shape)
        valid = w if valid is None else lax.bitwise_and(valid, w)
    n = _count(name, a, axes, valid)
    if mean_arg is not None:
        mu = _as_dtype(asarray_arg(mean_arg), target)
    else:
        summed = lax.reduce_sum(a if valid is None else _masked(a, valid, 0), axes)
        mu = _keepdims(aval.shape, lax.div(summed, n if isinstance(n, int)
                                           else _as_dtype(n, target)), axes)
    centered = lax.sub(a, mu)
    if dtypes.is_inexact(target) and target.kind == "c":
        sq = lax.real(lax.mul(centered, lax.conj(centered)))
    else:
        sq = lax.mul(centered, centered)
    if valid is not None:
        sq = _masked(sq, valid, 0)
    denom = n - ddof if isinstance(n, int) else lax.sub(_as_dtype(n, _aval(sq).dtype), ddof)
    if isinstance(denom, int):
        denom = builtins.max(denom, 0)
    else:
        denom = lax.max(denom, lax.full((), 0, _aval(denom).dtype))
    r = lax.div(lax.reduce_sum(sq, axes), denom)
    return _finish(aval.shape, r, axes, keepdims)


def var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None, mean=None,
        correction=None):
    """numpy.var: the mean of squared deviations, divided by N - ddof."""
    return _var("var", a, axis, dtype, out, ddof, keepdims, where, mean, correction, False)


def std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None, mean=None,
        correction=None):
    """numpy.std: the square root of var."""
    return lax.sqrt(_var("std", a, axis, dtype, out, ddof, keepdims, where, mean, correction,
                         False))


def nanvar(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None,
           mean=None, correction=None):
    """numpy.nanvar: var over the non-NaN elements."""
    return _var("nanvar", a, axis, dtype, out, ddof, keepdims, where, mean, correction, True)


def nanstd(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None,
           mean=None, correction=None):
    """numpy.nanstd: std over the non-NaN elements."""
    return lax.sqrt(_var("nanstd", a, axis, dtype, out, ddof, keepdims, where, mean,
                         correction, True))


# ---------------------------------------------------------------------------------------------
# max, min, ptp


def _extremum(name, ufunc_name, reducer, combine, lowest, a, axis, out, keepdims, initial,
              where):
    _check_out(name, out)
    a = asarray_arg(a)
    aval = _aval(a)
    axes = _axes(name, a, axis)
    if where is not None:
        if initial is None:
            raise _located(ValueError(
                f"{name}: reduction operation '{ufunc_name}' does not have an identity, so to "
                f"use a where mask one has to specify 'initial'"))
        a = _masked(a, where, lowest(aval.dtype))
    if initial is None and builtins.any(aval.shape[i] == 0 for i in axes):
        raise _located(ValueError(
            f"{name}: zero-size array to reduction operation {ufunc_name} which has no "
            f"identity (shape {aval.shape}, axis {axis}); pass initial="))
    r = reducer(a, axes)
    if initial is not None:
        r = combine(r, _as_dtype(asarray_arg(initial), aval.dtype))
    return _finish(aval.shape, r, axes, keepdims)


def _lowest(dtype):
    return -np.inf if dtypes.is_inexact(dtype) else (False if dtypes.is_bool(dtype)
                                                     else np.iinfo(dtype).min)


def _highest(dtype):
    return np.inf if dtypes.is_inexact(dtype) else (True if dtypes.is_bool(dtype)
                                                    else np.iinfo(dtype).max)


def max(a, axis=None, out=None, keepdims=False, initial=None, where=None):  # noqa: A001
    """numpy.max (NaN propagates); the gradient is shared evenly among tied maxima."""
    return _extremum("max", "maximum", _MAX, lax.max, _lowest, a, axis, out,
                     keepdims, initial, where)


def min(a, axis=None, out=None, keepdims=False, initial=None, where=None):  # noqa: A001
    """numpy.min (NaN propagates); the gradient is shared evenly among tied minima."""
    return _extremum("min", "minimum", _MIN, lax.min, _highest, a, axis, out,
                     keepdims, initial, where)


amax, amin = max, min


def ptp(a, axis=None, out=None, keepdims=False):
    """numpy.ptp: max - min along the axes."""
    return lax.sub(_extremum("ptp", "maximum", lax.reduce_max, lax.max, _lowest, a, axis, out,
                             keepdims, None, None),
                   _extremum("ptp", "minimum", lax.reduce_min, lax.min, _highest, a, axis,
                             out, keepdims, None, None))


# ---------------------------------------------------------------------------------------------
# all, any, count_nonzero


def _truth(a):
    aval = _aval(a)
    if dtypes.is_bool(aval.dtype):
        return a
    return lax.ne(a, lax.full((), 0, aval.dtype))


def all(a, axis=None, out=None, keepdims=False, *, where=None):  # noqa: A001
    """numpy.all: True where every element is nonzero."""
    _check_out("all", out)
    a = _truth(asarray_arg(a))
    aval = _aval(a)
    axes = _axes("all", a, axis)
    if where is not None:
        a = _masked(a, where, True)
    return _finish(aval.shape, lax.reduce_and(a, axes), axes, keepdims)


def any(a, axis=None, out=None, keepdims=False, *, where=None):  # noqa: A001
    """numpy.any: True where some element is nonzero."""
    _check_out("any", out)
    a = _truth(asarray_arg(a))
    aval = _aval(a)
    axes = _axes("any", a, axis)
    if where is not None:
        a = _masked(a, where, False)
    return _finish(aval.shape, lax.reduce_or(a, axes), axes, keepdims)


def count_nonzero(a, axis=None, *, keepdims=False):
    """numpy.count_nonzero, as an int64 array."""
    a = _truth(asarray_arg(a))
    aval = _aval(a)
    axes = _axes("count_nonzero", a, axis)
    r = lax.reduce_sum(lax.convert_element_type(a, np.int64), axes)
    return _finish(aval.shape, r, axes, keepdims)


# ---------------------------------------------------------------------------------------------
# argmax, argmin


def _argext(name, prim_fn, a, axis, out, keepdims):
    _check_out(name, out)
    a = asarray_arg(a)
    aval = _aval(a)
    if axis is None:
        if aval.size == 0:
            raise _located(ValueError(f"{name}: attempt to get {name} of an empty sequence"))
        r = prim_fn(_ravel(a), 0, np.int64)
        return lax.reshape(r, (1,) * aval.ndim) if keepdims else r
    if isinstance(axis, (tuple, list)):
        raise _located(TypeError(f"{name}: axis must be None or an int, got {axis!r}"))
    (ax,) = _axes(name, a, axis)
    if aval.shape[ax] == 0:
        raise _located(ValueError(f"{name}: attempt to get {name} of an empty sequence "
                                  f"(axis {axis} of shape {aval.shape})"))
    return _finish(aval.shape, prim_fn(a, ax, np.int64), (ax,), keepdims)


def argmax(a, axis=None, out=None, *, keepdims=False):
    """numpy.argmax: the first maximal index (the first NaN, if any), as int64."""
    return _argext("argmax", lax.argmax, a, axis, out, keepdims)


def argmin(a, axis=None, out=None, *, keepdims=False):
    """numpy.argmin: the first minimal index (the first NaN, if any), as int64."""
    return _argext("argmin", lax.argmin, a, axis, out, keepdims)


def _nanargext(name, prim_fn, fill, a, axis, out, keepdims):
    a = asarray_arg(a)
    aval = _aval(a)
    if not dtypes.is_inexact(aval.dtype):
        return _argext(name, prim_fn, a, axis, out, keepdims)
    nan = _isnan(a)
    all_nan = all(nan, axis=axis, keepdims=keepdims)
    if not isinstance(all_nan, Tracer) and np.any(np.asarray(all_nan)):
        raise _located(ValueError(f"{name}: All-NaN slice encountered"))
    return _argext(name, prim_fn, _masked(a, lax.bitwise_not(nan), fill(aval.dtype)), axis,
                   out, keepdims)


def nanargmax(a, axis=None, out=None, *, keepdims=False):
    """numpy.nanargmax: argmax ignoring NaNs (an all-NaN slice is an error when concrete)."""
    return _nanargext("nanargmax", lax.argmax, _lowest, a, axis, out, keepdims)


def nanargmin(a, axis=None, out=None, *, keepdims=False):
    """numpy.nanargmin: argmin ignoring NaNs (an all-NaN slice is an error when concrete)."""
    return _nanargext("nanargmin", lax.argmin, _highest, a, axis, out, keepdims)


# ---------------------------------------------------------------------------------------------
# NaN-ignoring reductions


def _without_nan(a, fill):
    a = asarray_arg(a)
    aval = _aval(a)
    if not dtypes.is_inexact(aval.dtype):
        return a
    return lax.select_n(_isnan(a), a, lax.full(aval.shape, fill, aval.dtype))


def nansum(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    """numpy.nansum: NaNs count as zero."""
    return sum(_without_nan(a, 0), axis, dtype, out, keepdims, initial, where)


def nanprod(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    """numpy.nanprod: NaNs count as one."""
    return prod(_without_nan(a, 1), axis, dtype, out, keepdims, initial, where)


def nanmean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=None):
    """numpy.nanmean: the mean of the non-NaN elements (NaN for an all-NaN slice)."""
    _check_out("nanmean", out)
    a = asarray_arg(a)
    aval = _aval(a)
    if not dtypes.is_inexact(aval.dtype):
        return mean(a, axis, dtype, None, keepdims, where=where)
    valid = lax.bitwise_not(_isnan(a))
    if where is not None:
        valid = lax.bitwise_and(valid, lax.broadcast_to(asarray_arg(where), aval.shape))
    return mean(a, axis, dtype, None, keepdims, where=valid)


def _nan_extremum(name, fn, fill, a, axis, out, keepdims, initial, where):
    a = asarray_arg(a)
    aval = _aval(a)
    if not dtypes.is_inexact(aval.dtype):
        return fn(a, axis, out, keepdims, initial, where)
    nan = _isnan(a)
    r = fn(_without_nan(a, fill), axis, out, keepdims, initial, where)
    # An all-NaN slice gives NaN, as in numpy.
    all_nan = all(nan, axis=axis, keepdims=keepdims, where=where)
    return lax.select_n(all_nan, r, lax.full(_aval(r).shape, np.nan, _aval(r).dtype))


def nanmax(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    """numpy.nanmax: max ignoring NaNs (NaN for an all-NaN slice)."""
    return _nan_extremum("nanmax", max, -np.inf, a, axis, out, keepdims, initial, where)


def nanmin(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    """numpy.nanmin: min ignoring NaNs (NaN for an all-NaN slice)."""
    return _nan_extremum("nanmin", min, np.inf, a, axis, out, keepdims, initial, where)


# ---------------------------------------------------------------------------------------------
# average


def average(a, axis=None, weights=None, returned=False, *, keepdims=False):
    """numpy.average: the weighted mean; ``returned`` also gives the sum of the weights."""
    a = asarray_arg(a)
    aval = _aval(a)
    if weights is None:
        avg = mean(a, axis, keepdims=keepdims)
        if returned:
            axes = _axes("average", a, axis)
            n = math.prod(aval.shape[i] for i in axes)
            return avg, lax.full(_aval(avg).shape, n, _aval(avg).dtype)
        return avg
    w = asarray_arg(weights)
    w_aval = _aval(w)
    axes = _axes("average", a, axis)
    if w_aval.shape != aval.shape:
        if axis is None or isinstance(axis, (tuple, list)):
            raise _located(TypeError(f"average: axis must be an int when the shapes of a "
                                     f"{aval.shape} and weights {w_aval.shape} differ"))
        if w_aval.ndim != 1:
            raise _located(TypeError(f"average: 1D weights expected when the shapes of a "
                                     f"{aval.shape} and weights {w_aval.shape} differ"))
        if w_aval.shape[0] != aval.shape[axes[0]]:
            raise _located(ValueError(f"average: length of weights {w_aval.shape[0]} differs "
                                      f"from that of a along axis {axis} ({aval.shape}"))
        w = lax.broadcast_in_dim(w, aval.shape, (axes[0],))
    target = _float_dtype(dtypes.result_type(aval.dtype, w_aval.dtype))
    a, w = _as_dtype(a, target), _as_dtype(w, target)
    wsum = lax.reduce_sum(w, axes)
    avg = lax.div(lax.reduce_sum(lax.mul(a, w), axes), wsum)
    avg = _finish(aval.shape, avg, axes, keepdims)
    if returned:
        return avg, _finish(aval.shape, wsum, axes, keepdims)
    return avg


# ---------------------------------------------------------------------------------------------
# Cumulative sums and products


def _cumulative(name, lax_fn, a, axis, dtype, out, nan_fill=None, include_initial=False):
    _check_out(name, out)
    a = asarray_arg(a)
    if nan_fill is not None:
        a = _without_nan(a, nan_fill)
    aval = _aval(a)
    if axis is None:
        a = _ravel(a)
        ax = 0
    else:
        if isinstance(axis, (tuple, list)):
            raise _located(TypeError(f"{name}: axis must be None or an int, got {axis!r}"))
        (ax,) = _axes(name, a, axis)
    target = np.dtype(dtype) if dtype is not None else _accum_dtype(aval.dtype)
    a = _as_dtype(a, target)
    r = lax_fn(a, ax)
    if include_initial:
        r_aval = _aval(r)
        cfg = [(0, 0, 0)] * r_aval.ndim
        cfg[ax] = (1, 0, 0)
        ident = 0 if lax_fn is lax.cumsum else 1
        r = lax.pad(r, lax.full((), ident, r_aval.dtype), tuple(cfg))
    return r


def cumsum(a, axis=None, dtype=None, out=None):
    """numpy.cumsum (axis=None flattens)."""
    return _cumulative("cumsum", lax.cumsum, a, axis, dtype, out)


def cumprod(a, axis=None, dtype=None, out=None):
    """numpy.cumprod (axis=None flattens); the gradient is exact with zeros."""
    return _cumulative("cumprod", lax.cumprod, a, axis, dtype, out)


def nancumsum(a, axis=None, dtype=None, out=None):
    """numpy.nancumsum: NaNs count as zero."""
    return _cumulative("nancumsum", lax.cumsum, a, axis, dtype, out, nan_fill=0)


def nancumprod(a, axis=None, dtype=None, out=None):
    """numpy.nancumprod: NaNs count as one."""
    return _cumulative("nancumprod", lax.cumprod, a, axis, dtype, out, nan_fill=1)


def cumulative_sum(x, /, *, axis=None, dtype=None, out=None, include_initial=False):
    """numpy.cumulative_sum (the array-API name): axis may be omitted only for 1-D input."""
    if axis is None and _aval(asarray_arg(x)).ndim > 1:
        raise _located(ValueError("cumulative_sum: axis must be given for arrays of more "
                                  "than one dimension"))
    return _cumulative("cumulative_sum", lax.cumsum, x, axis, dtype, out,
                       include_initial=include_initial)


def cumulative_prod(x, /, *, axis=None, dtype=None, out=None, include_initial=False):
    """numpy.cumulative_prod (the array-API name): axis may be omitted only for 1-D input."""
    if axis is None and _aval(asarray_arg(x)).ndim > 1:
        raise _located(ValueError("cumulative_prod: axis must be given for arrays of more "
                                  "than one dimension"))
    return _cumulative("cumulative_prod", lax.cumprod, x, axis, dtype, out,
                       include_initial=include_initial)


# ---------------------------------------------------------------------------------------------
# Quantiles: sort along the reduced axes, then gather and interpolate. The positions may be
# traced (q under jit), so the gather is a take_along_axis with computed indices.

_METHODS = ("linear", "lower", "higher", "nearest", "midpoint")


def _quantile(name, a, q, axis, method, keepdims, ignore_nan):
    if method not in _METHODS:
        raise _located(ValueError(f"{name}: method {method!r} is not supported; use one of "
                                  f"{_METHODS}"))
    a = asarray_arg(a)
    aval = _aval(a)
    target = _float_dtype(aval.dtype)
    # Methods that pick an element keep an integer input's dtype, as numpy does.
    picks = method in ("lower", "higher", "nearest") and dtypes.is_integer(aval.dtype)
    a = _as_dtype(a, aval.dtype if picks else target)
    q = asarray_arg(q)
    if not isinstance(q, Tracer):
        qv = np.asarray(q)
        if qv.size and not (np.all(qv >= 0) and np.all(qv <= 1)):
            raise _located(ValueError(f"{name}: quantiles must be in the range [0, 1]"))
    q_aval = _aval(q)
    q = _as_dtype(q, target)
    axes = _axes(name, a, axis)
    kept = tuple(i for i in range(aval.ndim) if i not in axes)
    n = math.prod(aval.shape[i] for i in axes)
    if n == 0:
        raise _located(ValueError(f"{name}: cannot take a quantile over an empty axis "
                                  f"(shape {aval.shape}, axis {axis})"))
    rest = tuple(aval.shape[i] for i in kept)
    m = q_aval.size
    # Rows to reduce last: (rest..., n), sorted (NaNs go to the end).
    rows = lax.reshape(lax.transpose(a, kept + axes), rest + (n,))
    srt = lax.sort(rows, dimension=len(rest))
    nan_rows = _isnan(rows)
    if ignore_nan:
        count = lax.reduce_sum(lax.convert_element_type(lax.bitwise_not(nan_rows), np.int64),
                               (len(rest),))
    else:
        count = lax.full(rest, n, np.int64)
    last = lax.convert_element_type(lax.sub(count, 1), target)
    shape = rest + (m,)
    last_b = lax.broadcast_in_dim(last, shape, tuple(range(len(rest))))
    q_b = lax.broadcast_in_dim(lax.reshape(q, (m,)), shape, (len(rest),))
    pos = lax.mul(q_b, last_b)
    lo_f = lax.floor(pos)
    hi_f = lax.min(lax.add(lo_f, 1.0), lax.max(last_b, lax.full((), 0, target)))
    frac = lax.sub(pos, lo_f)

    def gather(idx_f):
        idx = lax.convert_element_type(lax.max(idx_f, lax.full((), 0, target)), np.int64)
        return take_along_axis_p.bind(srt, idx, axis=len(rest))

    if method == "linear":
        lo, hi = gather(lo_f), gather(hi_f)
        diff = lax.sub(hi, lo)
        # numpy's lerp: measured from the nearer end, exact at both ends.
        r = lax.select_n(lax.ge(frac, 0.5), lax.add(lo, lax.mul(diff, frac)),
                         lax.sub(hi, lax.mul(diff, lax.sub(1.0, frac))))
    elif method == "lower":
        r = gather(lo_f)
    elif method == "higher":
        r = gather(lax.select_n(lax.gt(frac, 0.0), lo_f, hi_f))
    elif method == "nearest":
        # numpy rounds the position half to even.
        r = gather(lax.round(pos, lax.RoundingMethod.TO_NEAREST_EVEN))
    else:  # midpoint
        lo, hi = gather(lo_f), gather(lax.select_n(lax.gt(frac, 0.0), lo_f, hi_f))
        r = lax.mul(lax.add(lo, hi), 0.5)
    if ignore_nan:
        bad = lax.eq(count, 0)
    else:
        bad = lax.reduce_or(nan_rows, (len(rest),))
    if not picks:
        bad_b = lax.broadcast_in_dim(bad, shape, tuple(range(len(rest))))
        r = lax.select_n(bad_b, r, lax.full(shape, np.nan, target))
    # (rest..., m) -> q's shape + the kept (or size-1) dims.
    r = lax.transpose(r, (len(rest),) + tuple(range(len(rest))))
    out_rest = tuple(1 if i in axes else d for i, d in enumerate(aval.shape)) if keepdims \
        else rest
    return lax.reshape(r, q_aval.shape + out_rest)


def quantile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
             keepdims=False, *, interpolation=None):
    """numpy.quantile for q in [0, 1] (methods linear, lower, higher, nearest, midpoint);
    differentiable in ``a`` and in ``q``."""
    _check_out("quantile", out)
    return _quantile("quantile", a, q, axis, interpolation or method, keepdims, False)


def percentile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
               keepdims=False, *, interpolation=None):
    """numpy.percentile: quantile with q in [0, 100]."""
    _check_out("percentile", out)
    return _quantile("percentile", a, _percent(q), axis, interpolation or method, keepdims,
                     False)


def median(a, axis=None, out=None, overwrite_input=False, keepdims=False):
    """numpy.median (NaN if the slice holds a NaN)."""
    _check_out("median", out)
    return _quantile("median", a, 0.5, axis, "linear", keepdims, False)


def nanquantile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
                keepdims=False, *, interpolation=None):
    """numpy.nanquantile: quantiles of the non-NaN elements (NaN for an all-NaN slice)."""
    _check_out("nanquantile", out)
    return _quantile("nanquantile", a, q, axis, interpolation or method, keepdims, True)


def nanpercentile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
                  keepdims=False, *, interpolation=None):
    """numpy.nanpercentile: nanquantile with q in [0, 100]."""
    _check_out("nanpercentile", out)
    return _quantile("nanpercentile", a, _percent(q), axis, interpolation or method, keepdims,
                     True)


def nanmedian(a, axis=None, out=None, overwrite_input=False, keepdims=False):
    """numpy.nanmedian: the median of the non-NaN elements."""
    _check_out("nanmedian", out)
    return _quantile("nanmedian", a, 0.5, axis, "linear", keepdims, True)


def _percent(q):
    q = asarray_arg(q)
    if isinstance(q, Tracer):
        return lax.div(q, 100.0) if dtypes.is_inexact(_aval(q).dtype) else lax.div(
            lax.convert_element_type(q, dtypes.default_float), 100.0)
    return np.asarray(q, dtype=np.result_type(np.asarray(q).dtype, np.float64)) / 100.0
