"""Cumulative reductions along one axis: cumsum, cumprod, cummax, cummin, cumlogsumexp, each
with ``axis`` and ``reverse`` (accumulate from the end), as in JAX's lax.

Derivatives, all written with lax operations so they can be differentiated again:

* cumsum is linear; its transpose is the cumsum in the other direction.
* cumprod and cumlogsumexp: the tangent obeys a first-order linear recurrence
  ``h[i] = a[i] * h[i-1] + b[i]`` (cumprod: ``a = x``, ``b = y[i-1] * t``; cumlogsumexp:
  ``a = exp(y[i-1] - y[i])``, ``b = exp(x - y) * t``), solved by an associative scan made of
  strided slices, multiplications and pads. Nothing divides by ``x``, so zeros in the input
  are handled exactly, and ``0 <= a <= 1`` keeps cumlogsumexp stable.
* cummax and cummin: each output takes the tangent of the input element that currently holds
  the extremum (the latest one on ties), found with a where-mask and an integer cummax of
  positions, and gathered with ``take_along_axis``.

>>> import numpy as np
>>> from functrax import lax
>>> lax.cumsum(np.array([1.0, 2.0, 3.0])).tolist()
[1.0, 3.0, 6.0]
>>> lax.cumprod(np.array([1.0, 2.0, 3.0]), reverse=True).tolist()
[6.0, 6.0, 3.0]
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ._util import array_namespace
from . import elementwise as ew
from .padding import pad
from .slicing import slice_in_dim
from .structural import broadcasted_iota, full

__all__ = ["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp", "cumsum_p", "cumprod_p",
           "cummax_p", "cummin_p", "cumlogsumexp_p"]


def _flip(xp, x, axis, reverse):
    return xp.flip(x, axis) if reverse else x


def _cumulative_abstract_eval(name, require=None, require_msg=""):
    def abstract_eval(x, *, axis, reverse):
        if not 0 <= axis < x.ndim:
            raise ValueError(f"{name}: axis {axis} is out of bounds for an operand of shape "
                             f"{x.shape}")
        if require is not None and not require(x.dtype):
            raise TypeError(f"{name}: {require_msg} (got {x.dtype.name})")
        return ShapedArray(x.shape, x.dtype, x.weak_type)
    return abstract_eval


def _cumulative_primitive(name, accumulate, require=None, require_msg=""):
    def impl(x, *, axis, reverse):
        xp = array_namespace(x)
        x = xp.asarray(x)
        if require is not None and not require(x.dtype):
            # numpy would quietly compute in float; lax refuses, eagerly as under tracing.
            raise TypeError(f"{name}: {require_msg} (got {x.dtype.name})")
        return _flip(xp, accumulate(xp, _flip(xp, x, axis, reverse), axis), axis, reverse)
    p = Primitive(name)
    p.def_impl(impl)
    p.def_abstract_eval(_cumulative_abstract_eval(name, require, require_msg))

    def batch(vals, dims, *, axis, reverse):
        (x,), (d,) = vals, dims
        return p.bind(x, axis=axis + (d <= axis), reverse=reverse), d
    batching.batching_rules[p] = batch
    return p


def _normalize_axis(name, x, axis):
    ndim = get_aval(x).ndim
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise core._locate(ValueError(f"{name}: axis {axis} is out of bounds for an operand "
                                      f"of rank {ndim}"))
    return axis % ndim


# ---------------------------------------------------------------------------------------------
# Scan helpers used by the derivative rules


def _shift(x, axis, fill, reverse):
    """The previous element in scan order at every position, ``fill`` at the first."""
    aval = get_aval(x)
    cfg = [(0, 0, 0)] * aval.ndim
    cfg[axis] = (-1, 1, 0) if reverse else (1, -1, 0)
    return pad(x, full((), fill, aval.dtype), tuple(cfg))


def _associative_scan(combine, elems, axis, reverse):
    """Inclusive scan of a list of arrays along ``axis`` with the associative ``combine``
    (``combine(earlier, later)`` on lists), in O(log n) levels of whole-array operations.

    Arrays are always stored in their original order; with ``reverse`` the scan order runs
    from the last position to the first, and the slicing below translates scan positions
    into stored positions."""
    n = get_aval(elems[0]).shape[axis]
    if n < 2:
        return elems

    def take(xs, m, start, stop, step):
        # Scan positions start, start+step, ... (< stop) of arrays of length m.
        if stop <= start:
            return [slice_in_dim(x, 0, 0, 1, axis) for x in xs]
        last = start + step * ((stop - 1 - start) // step)
        lo, hi = (m - 1 - last, m - start) if reverse else (start, last + 1)
        return [slice_in_dim(x, lo, hi, step, axis) for x in xs]

    def place(xs, m, offset, count, stride):
        # Spread ``count`` elements to stored positions offset, offset+stride, ... of length m.
        out = []
        for x in xs:
            aval = get_aval(x)
            cfg = [(0, 0, 0)] * aval.ndim
            cfg[axis] = (offset, m - offset - (stride * (count - 1) + 1), stride - 1)
            if cfg[axis] == (0, 0, 0):
                out.append(x)
            else:
                out.append(pad(x, full((), 0, aval.dtype), tuple(cfg)))
        return out

    def add_lists(xs, ys):
        return [ew.add(x, y) for x, y in zip(xs, ys)]

    # Combine neighbouring pairs, scan the half-length sequence (results at odd scan
    # positions), then fill in the even positions.
    reduced = combine(take(elems, n, 0, n - 1, 2), take(elems, n, 1, n, 2))
    odd = _associative_scan(combine, reduced, axis, reverse)
    n_odd, n_even = n // 2, (n + 1) // 2
    first = take(elems, n, 0, 1, 1)
    if n_even > 1:
        rest = combine(take(odd, n_odd, 0, n_even - 1, 1), take(elems, n, 2, n, 2))
        # Scan order [first, *rest] is stored reversed when scanning backwards.
        if reverse:
            even = add_lists(place(rest, n_even, 0, n_even - 1, 1),
                             place(first, n_even, n_even - 1, 1, 1))
        else:
            even = add_lists(place(first, n_even, 0, 1, 1),
                             place(rest, n_even, 1, n_even - 1, 1))
    else:
        even = first
    if reverse:
        even_off, odd_off = n + 1 - 2 * n_even, n - 2 * n_odd
    else:
        even_off, odd_off = 0, 1
    return add_lists(place(even, n, even_off, n_even, 2), place(odd, n, odd_off, n_odd, 2))


def _linear_recurrence(a, b, axis, reverse):
    """h[i] = a[i] * h[prev] + b[i] along ``axis`` in scan order, with h before the first
    position equal to zero. Linear in ``b``."""
    def combine(earlier, later):
        (a1, b1), (a2, b2) = earlier, later
        return [ew.mul(a1, a2), ew.add(ew.mul(a2, b1), b2)]
    return _associative_scan(combine, [a, b], axis, reverse)[1]


# ---------------------------------------------------------------------------------------------
# cumsum


cumsum_p = _cumulative_primitive(
    "cumsum", lambda xp, x, axis: xp.cumsum(x, axis=axis, dtype=x.dtype))


def cumsum(operand, axis=0, reverse=False):
    """Running sum along ``axis`` (from the end with ``reverse``); keeps the dtype."""
    return cumsum_p.bind(operand, axis=_normalize_axis("cumsum", operand, axis),
                         reverse=bool(reverse))


def _cumsum_transpose(ct, x, *, axis, reverse):
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    return [cumsum_p.bind(ct, axis=axis, reverse=not reverse)]


ad.deflinear(cumsum_p, _cumsum_transpose)


# ---------------------------------------------------------------------------------------------
# cumprod


cumprod_p = _cumulative_primitive(
    "cumprod", lambda xp, x, axis: xp.cumprod(x, axis=axis, dtype=x.dtype))


def cumprod(operand, axis=0, reverse=False):
    """Running product along ``axis`` (from the end with ``reverse``); keeps the dtype."""
    return cumprod_p.bind(operand, axis=_normalize_axis("cumprod", operand, axis),
                          reverse=bool(reverse))


def _cumprod_jvp(primals, tangents, *, axis, reverse):
    (x,), (t,) = primals, tangents
    y = cumprod_p.bind(x, axis=axis, reverse=reverse)
    if ad.is_zero(t):
        return y, Zero.from_value(y)
    # y[i] = y[i-1] * x[i]  =>  dy[i] = x[i] * dy[i-1] + y[i-1] * t[i]
    b = ew.mul(_shift(y, axis, 1, reverse), t)
    return y, _linear_recurrence(x, b, axis, reverse)


ad.jvp_rules[cumprod_p] = _cumprod_jvp


# ---------------------------------------------------------------------------------------------
# cummax and cummin


cummax_p = _cumulative_primitive(
    "cummax", lambda xp, x, axis: xp.maximum.accumulate(x, axis=axis))
cummin_p = _cumulative_primitive(
    "cummin", lambda xp, x, axis: xp.minimum.accumulate(x, axis=axis))


def cummax(operand, axis=0, reverse=False):
    """Running maximum along ``axis`` (NaN propagates)."""
    return cummax_p.bind(operand, axis=_normalize_axis("cummax", operand, axis),
                         reverse=bool(reverse))


def cummin(operand, axis=0, reverse=False):
    """Running minimum along ``axis`` (NaN propagates)."""
    return cummin_p.bind(operand, axis=_normalize_axis("cummin", operand, axis),
                         reverse=bool(reverse))


def _cumulative_chooser_jvp(prim):
    def jvp(primals, tangents, *, axis, reverse):
        from .sorting import take_along_axis_p
        (x,), (t,) = primals, tangents
        y = prim.bind(x, axis=axis, reverse=reverse)
        if ad.is_zero(t):
            return y, Zero.from_value(y)
        aval = get_aval(x)
        n = aval.shape[axis]
        # Positions where the input holds the running extremum (NaN counts: it propagates);
        # the latest such position in scan order supplies each output's tangent.
        holds = ew.bitwise_or(ew.eq(x, y), ew.ne(x, x))
        pos = broadcasted_iota(np.int64, aval.shape, axis)
        if reverse:
            src = cummin_p.bind(ew.select_n(holds, full(aval.shape, n - 1, np.int64), pos),
                                axis=axis, reverse=True)
        else:
            src = cummax_p.bind(ew.select_n(holds, full(aval.shape, 0, np.int64), pos),
                                axis=axis, reverse=False)
        return y, take_along_axis_p.bind(t, src, axis=axis)
    return jvp


ad.jvp_rules[cummax_p] = _cumulative_chooser_jvp(cummax_p)
ad.jvp_rules[cummin_p] = _cumulative_chooser_jvp(cummin_p)


# ---------------------------------------------------------------------------------------------
# cumlogsumexp


cumlogsumexp_p = _cumulative_primitive(
    "cumlogsumexp", lambda xp, x, axis: xp.logaddexp.accumulate(x, axis=axis),
    require=dtypes.is_float, require_msg="requires a real floating-point operand")


def cumlogsumexp(operand, axis=0, reverse=False):
    """Running log(sum(exp(x))) along ``axis``, computed without overflow."""
    return cumlogsumexp_p.bind(operand, axis=_normalize_axis("cumlogsumexp", operand, axis),
                               reverse=bool(reverse))


def _cumlogsumexp_jvp(primals, tangents, *, axis, reverse):
    (x,), (t,) = primals, tangents
    y = cumlogsumexp_p.bind(x, axis=axis, reverse=reverse)
    if ad.is_zero(t):
        return y, Zero.from_value(y)
    # exp(y[i]) = exp(y[i-1]) + exp(x[i])
    #   =>  dy[i] = exp(y[i-1] - y[i]) * dy[i-1] + exp(x[i] - y[i]) * t[i]
    a = ew.exp(ew.sub(_shift(y, axis, -np.inf, reverse), y))
    b = ew.mul(ew.exp(ew.sub(x, y)), t)
    return y, _linear_recurrence(a, b, axis, reverse)


ad.jvp_rules[cumlogsumexp_p] = _cumlogsumexp_jvp
