"""Window reductions (pooling): ``reduce_window`` and its primitives.

``reduce_window(operand, init_value, computation, window_dimensions, window_strides, padding,
base_dilation, window_dilation)`` reduces every window of the (padded, dilated) operand, as
``jax.lax.reduce_window``. Sums, maxima and minima — ``computation`` given as ``lax.add``,
``lax.max``, ``lax.min``, the numpy equivalents or the strings 'add'/'max'/'min' — go to
dedicated primitives (``reduce_window_sum_p``, ``reduce_window_max_p``, ``reduce_window_min_p``)
with their own AD and batching rules; any other computation is applied window offset by window
offset to strided slices (so it differentiates and batches through those operations).

The gradient of a max (min) pool flows to the first maximal (minimal) element of each window:
the JVP is ``select_and_gather_add`` (pick the tangent where the operand is selected), whose
transpose is ``select_and_scatter_add`` (add each cotangent at that place) and vice versa, so
max pooling differentiates to any order. For plain pooling windows (stride = window, no padding
or dilation) the scatter takes the windows' elements as one contiguous stack, in cache-sized
slabs, instead of many short strided passes.

>>> import numpy as np
>>> from functrax import lax
>>> x = np.arange(16.0).reshape(4, 4)
>>> lax.reduce_window(x, -np.inf, lax.max, (2, 2), (2, 2), 'VALID').tolist()
[[5.0, 7.0], [13.0, 15.0]]
"""
from __future__ import annotations

import itertools

import numpy as np

from .. import core, dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import transpose_rules
from ..tree_util import tree_flatten, tree_unflatten
from ._util import array_namespace
from .conv import _dilate_dim, pad_and_dilate, padtype_to_pads, window_view
from . import elementwise as ew

__all__ = ["reduce_window", "reduce_window_sum", "reduce_window_max", "reduce_window_min",
           "reduce_window_sum_p", "reduce_window_max_p", "reduce_window_min_p",
           "select_and_gather_add_p", "select_and_scatter_add_p"]


def _identity(kind, dtype):
    """The neutral element of the monoid: padding and dilation holes are filled with it."""
    dtype = np.dtype(dtype)
    if kind == "add":
        return np.zeros((), dtype)[()]
    if dtypes.is_bool(dtype):
        return np.bool_(kind == "min")
    if dtypes.is_integer(dtype):
        info = np.iinfo(dtype)
        return dtype.type(info.min if kind == "max" else info.max)
    return dtype.type(-np.inf if kind == "max" else np.inf)


def _window_out_shape(shape, window_dimensions, window_strides, padding, base_dilation,
                      window_dilation):
    out = []
    for d, w, s, (lo, hi), bd, wd in zip(shape, window_dimensions, window_strides, padding,
                                         base_dilation, window_dilation):
        size = _dilate_dim(d, bd) + lo + hi
        eff = _dilate_dim(w, wd)
        out.append((size - eff) // s + 1 if size >= eff else 0)
    return tuple(out)


def _check_window_params(name, aval, window_dimensions, window_strides, padding, base_dilation,
                         window_dilation):
    nd = aval.ndim
    for pname, val in (("window_dimensions", window_dimensions),
                       ("window_strides", window_strides), ("padding", padding),
                       ("base_dilation", base_dilation), ("window_dilation", window_dilation)):
        if len(val) != nd:
            raise TypeError(f"{name}: {pname} {tuple(val)} needs one entry per dim of the "
                            f"operand {aval.str_short()}")
    if any(w < 1 for w in window_dimensions) or any(s < 1 for s in window_strides) or \
            any(d < 1 for d in base_dilation + window_dilation):
        raise ValueError(f"{name}: window dimensions, strides and dilations must be >= 1, got "
                         f"window {window_dimensions}, strides {window_strides}, base_dilation "
                         f"{base_dilation}, window_dilation {window_dilation} for "
                         f"{aval.str_short()}")
    return _window_out_shape(aval.shape, window_dimensions, window_strides, padding,
                             base_dilation, window_dilation)


def _check_rank(ndim, *params):
    """Eager impls stop on parameters of the wrong length (bind then reports the abstract
    eval's message, located at the user's line) rather than silently zipping them short."""
    if any(len(p) != ndim for p in params):
        raise TypeError("reduce_window: window parameters do not match the operand's rank")


def _padded(x, xp, fill, padding, base_dilation):
    """The operand padded and dilated with ``fill`` (no copy when there is nothing to do)."""
    return pad_and_dilate(x, xp, tuple(range(x.ndim)), padding, base_dilation, fill)


def _offset_slices(out_shape, window_dimensions, window_strides, window_dilation):
    """For each position in the window (row-major), the strided slice of the padded operand
    holding that element of every window: small windows are reduced one offset at a time, a
    few vectorized passes instead of a reduction over short, strided window axes."""
    out = []
    for offset in itertools.product(*[range(w) for w in window_dimensions]):
        out.append(tuple(slice(o * wd, o * wd + (c - 1) * s + 1, s) if c else slice(0, 0)
                         for o, wd, c, s in zip(offset, window_dilation, out_shape,
                                                window_strides)))
    return out


_TILED_FAST_PATH = True
_TILED_CHUNK_BYTES = 1 << 21  # a slab of the pooling gradient that stays in cache
_SMALL_WINDOW = 16  # above this many elements per window, reduce a strided view instead


def _bits_dtype(dtype):
    return {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}.get(np.dtype(dtype).itemsize)


def _keep_where(xp, x, mask):
    """``where(mask, x, 0)`` computed with a bit mask: exact (NaN and inf are kept where
    selected and never leak where not) and much faster than a data-dependent select."""
    it = _bits_dtype(x.dtype)
    if it is None:
        return xp.where(mask, x, xp.zeros((), x.dtype))
    return (x.view(it) & _all_ones_where(xp, mask)).view(x.dtype)


def _window_params(prim_params):
    return {k: prim_params[k] for k in ("window_dimensions", "window_strides", "padding",
                                        "base_dilation", "window_dilation")}


def _batch_window_params(d, *, window_dimensions, window_strides, padding, base_dilation,
                         window_dilation):
    """The parameters with a unit window inserted for the vmapped dim ``d``."""
    def ins(t, v):
        t = list(t)
        t.insert(d, v)
        return tuple(t)
    return dict(window_dimensions=ins(window_dimensions, 1), window_strides=ins(window_strides, 1),
                padding=ins(padding, (0, 0)), base_dilation=ins(base_dilation, 1),
                window_dilation=ins(window_dilation, 1))


# ---------------------------------------------------------------------------------------------
# reduce_window_sum, reduce_window_max, reduce_window_min


def _make_reducer_impl(kind):
    def impl(x, *, window_dimensions, window_strides, padding, base_dilation, window_dilation):
        xp = array_namespace(x)
        x = xp.asarray(x)
        _check_rank(x.ndim, window_dimensions, window_strides, padding, base_dilation,
                    window_dilation)
        out_shape = _window_out_shape(x.shape, window_dimensions, window_strides, padding,
                                      base_dilation, window_dilation)
        ident = _identity(kind, x.dtype)
        if 0 in out_shape or 0 in window_dimensions:
            return xp.full(out_shape, ident, x.dtype)
        xpad = _padded(x, xp, ident, padding, base_dilation)
        if int(np.prod(window_dimensions)) > _SMALL_WINDOW:
            view, _ = window_view(xpad, xp, tuple(range(x.ndim)), window_dimensions,
                                  window_strides, window_dilation)
            axes = tuple(range(x.ndim, 2 * x.ndim))
            if kind == "add":
                return xp.sum(view, axis=axes, dtype=x.dtype)
            return (xp.max if kind == "max" else xp.min)(view, axis=axes)
        ufunc = {"add": xp.add, "max": xp.maximum, "min": xp.minimum}[kind]
        if kind == "add" and dtypes.is_bool(x.dtype):
            ufunc = xp.logical_or
        slices = _offset_slices(out_shape, window_dimensions, window_strides, window_dilation)
        acc = xpad[slices[0]].copy()
        for sl in slices[1:]:
            ufunc(acc, xpad[sl], out=acc)
        return acc
    return impl


def _make_reducer_abstract_eval(name):
    def abstract_eval(x, **params):
        shape = _check_window_params(name, x, **params)
        return ShapedArray(shape, x.dtype, x.weak_type)
    return abstract_eval


def _make_reducer(kind):
    p = Primitive(f"reduce_window_{'sum' if kind == 'add' else kind}")
    p.def_impl(_make_reducer_impl(kind))
    p.def_abstract_eval(_make_reducer_abstract_eval(p.name))

    def batch(vals, dims, **params):
        (x,), (d,) = vals, dims
        return p.bind(x, **_batch_window_params(d, **params)), d
    batching.batching_rules[p] = batch
    return p


def _canonical_window_args(x, window_dimensions, window_strides, padding, base_dilation,
                           window_dilation):
    nd = get_aval(x).ndim
    window_dimensions = tuple(int(w) for w in window_dimensions)
    window_strides = (1,) * nd if window_strides is None else tuple(int(s) for s in window_strides)
    base_dilation = (1,) * nd if base_dilation is None else tuple(int(b) for b in base_dilation)
    window_dilation = (1,) * nd if window_dilation is None else \
        tuple(int(w) for w in window_dilation)
    if isinstance(padding, str):
        eff = [_dilate_dim(w, r) for w, r in zip(window_dimensions, window_dilation)]
        in_shape = [_dilate_dim(d, b) for d, b in zip(get_aval(x).shape, base_dilation)]
        padding = padtype_to_pads(in_shape, eff, window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return dict(window_dimensions=window_dimensions, window_strides=window_strides,
                padding=padding, base_dilation=base_dilation, window_dilation=window_dilation)


reduce_window_sum_p = _make_reducer("add")


def reduce_window_sum(operand, window_dimensions, window_strides=None, padding="VALID",
                      base_dilation=None, window_dilation=None):
    """Sum over each window (padding counts as zeros)."""
    return reduce_window_sum_p.bind(operand, **_canonical_window_args(
        operand, window_dimensions, window_strides, padding, base_dilation, window_dilation))


def _reduce_window_sum_transpose(ct, x, *, window_dimensions, window_strides, padding,
                                 base_dilation, window_dilation):
    """Every input element receives the sum of the cotangents of the windows holding it: a
    window sum of the cotangent, spread out by the strides (interior padding) and padded so
    each input position sees exactly its windows (the input-gradient of a convolution with
    an all-ones kernel, which is its own flip)."""
    from .padding import pad
    from .structural import full
    aval = x.aval
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(aval))]
    ct_shape = get_aval(ct).shape
    config = []
    for d, w, c, (lo, _), s, bd, wd in zip(aval.shape, window_dimensions, ct_shape, padding,
                                           window_strides, base_dilation, window_dilation):
        weff = _dilate_dim(w, wd)
        before = weff - lo - 1
        after = _dilate_dim(d, bd) + weff - 1 - _dilate_dim(c, s) - before
        config.append((before, after, s - 1))
    spread = pad(ct, full((), 0, get_aval(ct).dtype), config)
    nd = aval.ndim
    return [reduce_window_sum_p.bind(spread, window_dimensions=window_dimensions,
                                     window_strides=base_dilation, padding=((0, 0),) * nd,
                                     base_dilation=(1,) * nd, window_dilation=window_dilation)]


ad.deflinear(reduce_window_sum_p, _reduce_window_sum_transpose)


def _make_chooser(kind):
    p = _make_reducer(kind)

    def jvp(primals, tangents, **params):
        (x,), (t,) = primals, tangents
        ans = p.bind(x, **params)
        if ad.is_zero(t):
            return ans, Zero.from_value(ans)
        return ans, select_and_gather_add_p.bind(t, x, select=kind, **params)
    ad.jvp_rules[p] = jvp
    return p


reduce_window_max_p = _make_chooser("max")
reduce_window_min_p = _make_chooser("min")


def reduce_window_max(operand, window_dimensions, window_strides=None, padding="VALID",
                      base_dilation=None, window_dilation=None):
    """Max over each window (max pooling); padding never wins."""
    return reduce_window_max_p.bind(operand, **_canonical_window_args(
        operand, window_dimensions, window_strides, padding, base_dilation, window_dilation))


def reduce_window_min(operand, window_dimensions, window_strides=None, padding="VALID",
                      base_dilation=None, window_dilation=None):
    """Min over each window; padding never wins."""
    return reduce_window_min_p.bind(operand, **_canonical_window_args(
        operand, window_dimensions, window_strides, padding, base_dilation, window_dilation))


# ---------------------------------------------------------------------------------------------
# select_and_gather_add and select_and_scatter_add: the derivative of max/min pooling


def _selection_masks(operand, xp, select, window_dimensions, window_strides, padding,
                     base_dilation, window_dilation):
    """For each window offset (row-major), a boolean mask of the windows whose first max (min)
    sits there; also the offset slices and the window output shape.

    An offset is selected where it is strictly better than every earlier offset (the running
    best) and no later offset is: the last offset that beat its running best. Boolean masks
    keep the per-offset work to comparisons on the operand, plus cheap passes over bytes."""
    operand = xp.asarray(operand)
    _check_rank(operand.ndim, window_dimensions, window_strides, padding, base_dilation,
                window_dilation)
    out_shape = _window_out_shape(operand.shape, window_dimensions, window_strides, padding,
                                  base_dilation, window_dilation)
    slices = _offset_slices(out_shape, window_dimensions, window_strides, window_dilation)
    if 0 in out_shape or not slices:
        return [], slices, out_shape
    xpad = _padded(operand, xp, _identity(select, operand.dtype), padding, base_dilation)
    return _masks_from_offsets(xp, select, [xpad[sl] for sl in slices]), slices, out_shape


def _masks_from_offsets(xp, select, offsets):
    """The first-max (min) masks of :func:`_selection_masks`, from the list of per-offset
    operand arrays (row-major window order)."""
    better_than = xp.greater if select == "max" else xp.less
    keep = xp.maximum if select == "max" else xp.minimum
    best = offsets[0]
    better = [None]
    last = len(offsets) - 1
    for k in range(1, last + 1):
        v = offsets[k]
        better.append(better_than(v, best))
        if k == 1 and k < last:
            best = keep(best, v)
        elif k < last:
            keep(best, v, out=best)
    masks = [None] * len(offsets)
    later = None
    for k in range(last, 0, -1):
        if later is None:
            masks[k] = better[k]
            later = better[k].copy()
        else:
            masks[k] = better[k] & ~later
            later |= better[k]
    masks[0] = xp.ones(offsets[0].shape, bool) if later is None else ~later
    return masks


def _tiling(operand_shape, out_shape, window_dimensions, window_strides, padding,
            base_dilation, window_dilation):
    """Whether the windows are the blocks of a plain tiling of the operand (pooling: stride =
    window, no padding or dilation; a ragged end that no window reaches is allowed)."""
    return all(w == s and lo == 0 and hi == 0 and bd == 1 and wd == 1 and o * s <= d
               for w, s, (lo, hi), bd, wd, o, d in
               zip(window_dimensions, window_strides, padding, base_dilation,
                   window_dilation, out_shape, operand_shape)) and 0 not in out_shape


def _deinterleave(xp, x, window_dimensions, out_shape):
    """The tiled windows' elements as one contiguous (K, *out_shape) stack, window offsets
    (row-major) first: one transposing copy, after which every per-offset operation reads
    contiguous memory instead of short strided runs."""
    nd = x.ndim
    x = x[tuple(slice(0, o * w) for o, w in zip(out_shape, window_dimensions))]
    split = []
    for o, w in zip(out_shape, window_dimensions):
        split += [o, w]
    perm = tuple(range(1, 2 * nd, 2)) + tuple(range(0, 2 * nd, 2))
    stack = xp.ascontiguousarray(xp.transpose(x.reshape(split), perm))
    return stack.reshape((-1,) + tuple(out_shape))


def _tiled_scatter(xp, bits, operand, acc, select, window_dimensions):
    """The pooling gradient of one slab of whole windows: select on the contiguous stack of
    window offsets, then store each offset's bit-masked cotangent (``bits``, an integer
    view) into its strided place in ``acc`` (every element of the tiled region is stored
    once)."""
    out_shape = bits.shape
    stack = _deinterleave(xp, operand, window_dimensions, out_shape)
    masks = _masks_from_offsets(xp, select, list(stack))
    slices = _offset_slices(out_shape, window_dimensions, window_dimensions,
                            (1,) * len(window_dimensions))
    for mask, sl in zip(masks, slices):
        xp.bitwise_and(bits, _all_ones_where(xp, mask), out=acc[sl])


def _all_ones_where(xp, mask):
    """-1 (all bits set) where ``mask``, else 0, as int8: ANDed with the bits of any integer
    view it sign-extends, so it keeps whole elements bit-exactly (NaN and inf included)."""
    return xp.negative(mask.view(xp.int8))


def _select_and_gather_add_impl(tangents, operand, *, select, window_dimensions,
                                window_strides, padding, base_dilation, window_dilation):
    xp = array_namespace(tangents, operand)
    tangents = xp.asarray(tangents)
    masks, slices, out_shape = _selection_masks(operand, xp, select, window_dimensions,
                                                window_strides, padding, base_dilation,
                                                window_dilation)
    if not masks:
        return xp.zeros(out_shape, tangents.dtype)
    tpad = _padded(tangents, xp, 0, padding, base_dilation)
    it = _bits_dtype(tangents.dtype)
    if it is None:
        out = xp.zeros(out_shape, tangents.dtype)
        for mask, sl in zip(masks, slices):
            out = xp.where(mask, tpad[sl], out)
        return out
    # Exactly one offset is selected per window: OR together the bit-masked candidates.
    out = xp.zeros(out_shape, it)
    for mask, sl in zip(masks, slices):
        xp.bitwise_or(out, tpad[sl].view(it) & _all_ones_where(xp, mask), out=out)
    return out.view(tangents.dtype)


def _select_abstract_eval(name, out_is_window):
    def abstract_eval(a, operand, *, select, **params):
        shape = _check_window_params(name, operand, **params)
        if out_is_window:
            if a.shape != operand.shape:
                raise TypeError(f"{name}: tangents {a.str_short()} must have the operand's "
                                f"shape {operand.str_short()}")
            return ShapedArray(shape, a.dtype, a.weak_type)
        if a.shape != shape:
            raise TypeError(f"{name}: source {a.str_short()} must have the window output shape "
                            f"{shape} of the operand {operand.str_short()}")
        return ShapedArray(operand.shape, a.dtype, a.weak_type)
    return abstract_eval


select_and_gather_add_p = Primitive("select_and_gather_add")
select_and_gather_add_p.def_impl(_select_and_gather_add_impl)
select_and_gather_add_p.def_abstract_eval(_select_abstract_eval("select_and_gather_add", True))


def _select_and_scatter_add_impl(source, operand, *, select, window_dimensions,
                                 window_strides, padding, base_dilation, window_dilation):
    xp = array_namespace(source, operand)
    operand = xp.asarray(operand)
    source = xp.asarray(source)
    _check_rank(operand.ndim, window_dimensions, window_strides, padding, base_dilation,
                window_dilation)
    it = _bits_dtype(source.dtype)
    out_shape = _window_out_shape(operand.shape, window_dimensions, window_strides, padding,
                                  base_dilation, window_dilation)
    if _TILED_FAST_PATH and it is not None and operand.ndim > 0 and \
            _tiling(operand.shape, out_shape, window_dimensions, window_strides, padding,
                    base_dilation, window_dilation):
        # Pooling. The cotangent may arrive as a transposed view (a convolution's result).
        bits = xp.ascontiguousarray(source).view(it)
        ragged = any(o * w != d for o, w, d in zip(out_shape, window_dimensions,
                                                   operand.shape))
        acc = (xp.zeros if ragged else xp.empty)(operand.shape, it)
        # In slices along the first axis that stay in cache: the several passes of each
        # slice then cost one trip to memory instead of one each.
        w0 = window_dimensions[0]
        per = max(1, _TILED_CHUNK_BYTES // max(1, operand[:w0].nbytes))
        for a in range(0, out_shape[0], per):
            b = min(out_shape[0], a + per)
            _tiled_scatter(xp, bits[a:b], operand[a * w0:b * w0], acc[a * w0:b * w0],
                           select, window_dimensions)
        return acc.view(source.dtype)
    masks, slices, out_shape = _selection_masks(operand, xp, select, window_dimensions,
                                                window_strides, padding, base_dilation,
                                                window_dilation)
    grown = tuple(_dilate_dim(d, bd) + lo + hi
                  for d, bd, (lo, hi) in zip(operand.shape, base_dilation, padding))
    # Windows that cannot overlap (pooling) take a plain store instead of an update; when
    # they also tile the padded operand exactly, every element is stored once and the
    # buffer needs no zero fill.
    eff = [_dilate_dim(w, wd) for w, wd in zip(window_dimensions, window_dilation)]
    disjoint = all(s >= e for s, e in zip(window_strides, eff))
    tiles = bool(masks) and all(s == e and o * s == g for s, e, o, g in
                                zip(window_strides, eff, out_shape, grown))
    acc = (xp.empty if tiles else xp.zeros)(grown, source.dtype)
    it = _bits_dtype(source.dtype)
    for mask, sl in zip(masks, slices):
        if disjoint and it is not None:
            xp.bitwise_and(source.view(it), _all_ones_where(xp, mask), out=acc.view(it)[sl])
        elif disjoint:
            acc[sl] = _keep_where(xp, source, mask)
        else:
            acc[sl] += _keep_where(xp, source, mask)
    # Undo the padding (cropped edges come back as zeros) and the dilation.
    regrow = [(max(-lo, 0), max(-hi, 0)) for lo, hi in padding]
    if any(a or b for a, b in regrow):
        acc = xp.pad(acc, regrow)
    take = tuple(slice(max(lo, 0), max(lo, 0) + _dilate_dim(d, bd), bd)
                 for (lo, _), d, bd in zip(padding, operand.shape, base_dilation))
    return acc[take]


select_and_scatter_add_p = Primitive("select_and_scatter_add")
select_and_scatter_add_p.def_impl(_select_and_scatter_add_impl)
select_and_scatter_add_p.def_abstract_eval(_select_abstract_eval("select_and_scatter_add", False))


def _select_linear_rules(p, partner, out_is_window):
    """Both primitives are linear in their first argument and piecewise constant in the
    operand; each is the other's transpose."""
    def jvp(primals, tangents, **params):
        (a, operand), (ta, _) = primals, tangents
        ans = p.bind(a, operand, **params)
        if ad.is_zero(ta):
            return ans, Zero.from_value(ans)
        return ans, p.bind(ta, operand, **params)
    ad.jvp_rules[p] = jvp

    def transpose(ct, a, operand, **params):
        if ad.is_zero(ct):
            return [Zero(ad.tangent_aval(a.aval)), None]
        return [partner().bind(ct, operand, **params), None]
    transpose_rules[p] = transpose

    def batch(vals, dims, *, select, **params):
        (a, operand), (da, do) = vals, dims
        size = batching.batch_size_of(vals, dims)
        a = batching.bdim_at_front(a, da, size)
        operand = batching.bdim_at_front(operand, do, size)
        return p.bind(a, operand, select=select, **_batch_window_params(0, **params)), 0
    batching.batching_rules[p] = batch


_select_linear_rules(select_and_gather_add_p, lambda: select_and_scatter_add_p, True)
_select_linear_rules(select_and_scatter_add_p, lambda: select_and_gather_add_p, False)


# ---------------------------------------------------------------------------------------------
# reduce_window: the generic entry point


_KIND_BY_NAME = {"add": "add", "sum": "add", "max": "max", "maximum": "max", "min": "min",
                 "minimum": "min"}
_KIND_BY_PRIM = {ew.add_p: "add", ew.max_p: "max", ew.min_p: "min"}
_REDUCERS = {"add": reduce_window_sum_p, "max": reduce_window_max_p, "min": reduce_window_min_p}


def _monoid_kind(computation, dtype):
    """'add', 'max' or 'min' when ``computation`` is that binary operation, else None."""
    if isinstance(computation, str):
        kind = _KIND_BY_NAME.get(computation.lower())
        if kind is None:
            raise ValueError(f"reduce_window: unknown computation {computation!r}; use 'add', "
                             f"'max', 'min' or a function of two arrays")
        return kind
    if computation is ew.add:
        return "add"
    if computation is ew.max:
        return "max"
    if computation is ew.min:
        return "min"
    # Anything else: trace it on two scalars and see whether it is a single add/max/min.
    scalar = ShapedArray((), dtype)
    try:
        jaxpr, _, _ = core.trace_to_jaxpr(lambda a, b: [computation(a, b)], [scalar, scalar])
    except Exception:
        return None
    if len(jaxpr.eqns) != 1 or len(jaxpr.outvars) != 1:
        return None
    eqn = jaxpr.eqns[0]
    kind = _KIND_BY_PRIM.get(eqn.primitive)
    if kind is None or eqn.outvars[0] is not jaxpr.outvars[0] or \
            set(map(id, eqn.invars)) != set(map(id, jaxpr.invars)):
        return None
    return kind


def _is_identity(init_value, kind, dtype):
    if isinstance(init_value, core.Tracer):
        return False
    try:
        v = np.asarray(init_value)
    except Exception:
        return False
    if v.shape != ():
        return False
    return bool(v == _identity(kind, dtype))


def reduce_window(operand, init_value, computation, window_dimensions, window_strides,
                  padding, base_dilation=None, window_dilation=None):
    """Reduce every window of ``operand`` with ``computation``, starting from ``init_value``
    (which also fills the padding and the dilation holes), as ``jax.lax.reduce_window``.

    ``operand``/``init_value`` may be matching pytrees when ``computation`` takes and returns
    such pytrees (a multi-operand reduction)."""
    leaves, tree = tree_flatten(operand)
    init_leaves, init_tree = tree_flatten(init_value)
    if len(leaves) != 1:
        if init_tree != tree:
            raise TypeError(f"reduce_window: operands {tree} and init values {init_tree} must "
                            f"have the same structure")
        return _reduce_window_generic(leaves, init_leaves, computation, tree, window_dimensions,
                                      window_strides, padding, base_dilation, window_dilation)
    x = leaves[0]
    aval = get_aval(x)
    params = _canonical_window_args(x, window_dimensions, window_strides, padding, base_dilation,
                                    window_dilation)
    kind = _monoid_kind(computation, aval.dtype)
    if kind is None:
        return _reduce_window_generic([x], init_leaves, computation, tree, window_dimensions,
                                      window_strides, padding, base_dilation, window_dilation)
    prim = _REDUCERS[kind]
    init = init_leaves[0]
    if _is_identity(init, kind, aval.dtype):
        return prim.bind(x, **params)
    # A non-neutral start value: pad and dilate with it explicitly, then fold it in once.
    from .padding import pad
    from .structural import convert_element_type
    init = convert_element_type(init, aval.dtype)
    cfg = [(lo, hi, bd - 1) for (lo, hi), bd in zip(params["padding"], params["base_dilation"])]
    x = pad(x, init, cfg)
    nd = aval.ndim
    out = prim.bind(x, window_dimensions=params["window_dimensions"],
                    window_strides=params["window_strides"], padding=((0, 0),) * nd,
                    base_dilation=(1,) * nd, window_dilation=params["window_dilation"])
    combine = {"add": ew.add, "max": ew.max, "min": ew.min}[kind]
    return combine(out, init)


def _reduce_window_generic(leaves, init_leaves, computation, tree, window_dimensions,
                           window_strides, padding, base_dilation, window_dilation):
    """Any computation: fold the strided slice of every window offset into an accumulator
    that starts at ``init_value`` (one vectorized step per offset in the window)."""
    from .padding import pad
    from .slicing import slice as lax_slice
    from .structural import broadcast_in_dim, convert_element_type
    params = _canonical_window_args(leaves[0], window_dimensions, window_strides, padding,
                                    base_dilation, window_dilation)
    shape = get_aval(leaves[0]).shape
    out_shape = _window_out_shape(shape, **params)
    padded = []
    for x, init in zip(leaves, init_leaves):
        init = convert_element_type(init, get_aval(x).dtype)
        cfg = [(lo, hi, bd - 1) for (lo, hi), bd in zip(params["padding"],
                                                        params["base_dilation"])]
        padded.append(pad(x, init, cfg))
    acc = [broadcast_in_dim(convert_element_type(i, get_aval(x).dtype), out_shape, ())
           for i, x in zip(init_leaves, leaves)]
    for offset in itertools.product(*[range(w) for w in params["window_dimensions"]]):
        start = [o * wd for o, wd in zip(offset, params["window_dilation"])]
        limit = [s0 + (c - 1) * st + 1 if c else s0
                 for s0, c, st in zip(start, out_shape, params["window_strides"])]
        pieces = [lax_slice(p, start, limit, params["window_strides"]) for p in padded]
        res = computation(tree_unflatten(tree, acc), tree_unflatten(tree, pieces))
        acc, _ = tree_flatten(res)
    return tree_unflatten(tree, acc)
