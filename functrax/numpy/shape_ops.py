"""Shape manipulation with numpy's signatures and errors: reshape, transpose, stacking and
splitting, tiling, flipping and rolling, padding, broadcasting.

Everything lowers to the structural lax primitives (reshape, transpose, broadcast_in_dim,
concatenate, slice, rev, pad, gather), so it traces, differentiates and batches.

>>> import functrax.numpy as fnp
>>> fnp.reshape(fnp.arange(6), (2, 3)).shape
(2, 3)
>>> fnp.pad(fnp.arange(3.0), 2, mode="reflect").tolist()
[2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0]
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes, lax
from ..core import Tracer, get_aval
from ._util import asarray_arg

__all__ = ["reshape", "ravel", "transpose", "swapaxes", "moveaxis", "squeeze", "expand_dims",
           "stack", "concatenate", "hstack", "vstack", "dstack", "column_stack", "split",
           "array_split", "hsplit", "vsplit", "tile", "repeat", "flip", "fliplr", "flipud",
           "roll", "rot90", "pad", "broadcast_to", "broadcast_arrays", "broadcast_shapes",
           "atleast_1d", "atleast_2d", "atleast_3d", "append", "shape", "ndim", "size"]

def _user_line(fn):
    """Errors raised here name the user's line, as errors from abstract evaluation do."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except np.exceptions.AxisError as e:
            # AxisError keeps its message outside ``args``: rebuild it with the user's line.
            located = np.exceptions.AxisError(core._locate(ValueError(str(e))).args[0])
            located._functrax_located = True
            raise located from None
        except (IndexError, ValueError, TypeError) as e:
            raise core._locate(e) from None
    return wrapper



def _axis(name, axis, ndim):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name}: axis must be an integer, got {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(f"{name}: axis {axis} is out of bounds for array of "
                                      f"dimension {ndim}")
    return axis % ndim


def _axes(name, axes, ndim):
    axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    out = tuple(_axis(name, a, ndim) for a in axes)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: repeated axis in {axes}")
    return out


@_user_line
def shape(a):
    return get_aval(asarray_arg(a)).shape


@_user_line
def ndim(a):
    return get_aval(asarray_arg(a)).ndim


@_user_line
def size(a, axis=None):
    s = get_aval(asarray_arg(a)).shape
    return int(np.prod(s, dtype=np.int64)) if axis is None else s[_axis("size", axis, len(s))]


@_user_line
def reshape(a, newshape=None, order="C", *, shape=None):
    """numpy.reshape (row-major only); one dim may be -1."""
    if order != "C":
        raise ValueError(f"reshape: only order='C' is supported, got {order!r}")
    a = asarray_arg(a)
    newshape = shape if shape is not None else newshape
    if newshape is None:
        raise TypeError("reshape: missing the new shape")
    if isinstance(newshape, (int, np.integer)):
        newshape = (int(newshape),)
    newshape = [int(core.concrete_or_error(d, "reshape: the new shape must be static"))
                for d in newshape]
    size_ = get_aval(a).size
    if newshape.count(-1) > 1:
        raise ValueError("reshape: can only specify one unknown dimension (-1)")
    if any(d < -1 for d in newshape):
        raise ValueError(f"reshape: negative dimensions are not allowed: {tuple(newshape)}")
    if -1 in newshape:
        known = int(np.prod([d for d in newshape if d != -1], dtype=np.int64))
        if known == 0 or size_ % known:
            raise ValueError(f"reshape: cannot reshape array of size {size_} into shape "
                             f"{tuple(newshape)}")
        newshape[newshape.index(-1)] = size_ // known
    if int(np.prod(newshape, dtype=np.int64)) != size_:
        raise ValueError(f"reshape: cannot reshape array of size {size_} into shape "
                         f"{tuple(newshape)}")
    return lax.reshape(a, tuple(newshape))


@_user_line
def ravel(a, order="C"):
    a = asarray_arg(a)
    return reshape(a, (get_aval(a).size,), order)


@_user_line
def transpose(a, axes=None):
    a = asarray_arg(a)
    nd = get_aval(a).ndim
    if axes is None:
        axes = tuple(reversed(range(nd)))
    else:
        axes = _axes("transpose", axes, nd)
        if len(axes) != nd:
            raise ValueError(f"transpose: axes {axes} don't match an array of dimension {nd}")
    return lax.transpose(a, axes)


@_user_line
def swapaxes(a, axis1, axis2):
    a = asarray_arg(a)
    nd = get_aval(a).ndim
    axis1, axis2 = _axis("swapaxes", axis1, nd), _axis("swapaxes", axis2, nd)
    perm = list(range(nd))
    perm[axis1], perm[axis2] = perm[axis2], perm[axis1]
    return lax.transpose(a, perm)


@_user_line
def moveaxis(a, source, destination):
    a = asarray_arg(a)
    nd = get_aval(a).ndim
    src, dst = _axes("moveaxis", source, nd), _axes("moveaxis", destination, nd)
    if len(src) != len(dst):
        raise ValueError("moveaxis: `source` and `destination` arguments must have the same "
                         "number of elements")
    order = [d for d in range(nd) if d not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return lax.transpose(a, order)


@_user_line
def squeeze(a, axis=None):
    a = asarray_arg(a)
    shp = get_aval(a).shape
    if axis is None:
        axes = tuple(i for i, d in enumerate(shp) if d == 1)
    else:
        axes = _axes("squeeze", axis, len(shp))
        for ax in axes:
            if shp[ax] != 1:
                raise ValueError(f"squeeze: cannot select an axis to squeeze out which has "
                                 f"size not equal to one (axis {ax} of shape {shp})")
    return lax.squeeze(a, axes) if axes else a


@_user_line
def expand_dims(a, axis):
    a = asarray_arg(a)
    axis = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out_nd = get_aval(a).ndim + len(axis)
    return lax.expand_dims(a, _axes("expand_dims", axis, out_nd))


def _promote_all(name, arrays):
    arrays = [asarray_arg(x) for x in arrays]
    if not arrays:
        raise ValueError(f"{name}: need at least one array")
    avals = [get_aval(x) for x in arrays]
    dtype, weak = dtypes.promote_avals_dtype(avals)
    return [x if a.dtype == dtype else lax.convert_element_type(x, dtype, weak_type=weak)
            for x, a in zip(arrays, avals)]


@_user_line
def concatenate(arrays, axis=0, dtype=None):
    """numpy.concatenate (``axis=None`` flattens first); dtypes are promoted."""
    arrays = _promote_all("concatenate", arrays)
    if dtype is not None:
        arrays = [lax.convert_element_type(x, dtype) for x in arrays]
    if axis is None:
        arrays = [ravel(x) for x in arrays]
        axis = 0
    avals = [get_aval(x) for x in arrays]
    if avals[0].ndim == 0:
        raise ValueError("concatenate: zero-dimensional arrays cannot be concatenated")
    if any(a.ndim != avals[0].ndim for a in avals):
        raise ValueError(f"concatenate: all the input arrays must have same number of "
                         f"dimensions, got shapes {[a.shape for a in avals]}")
    axis = _axis("concatenate", axis, avals[0].ndim)
    for a in avals:
        if any(s != t for i, (s, t) in enumerate(zip(a.shape, avals[0].shape)) if i != axis):
            raise ValueError(f"concatenate: all the input array dimensions except for the "
                             f"concatenation axis must match exactly, got shapes "
                             f"{[b.shape for b in avals]} along axis {axis}")
    if len(arrays) == 1:
        return arrays[0]
    return lax.concatenate(arrays, axis)


@_user_line
def stack(arrays, axis=0, dtype=None):
    arrays = _promote_all("stack", arrays)
    shapes = {get_aval(x).shape for x in arrays}
    if len(shapes) > 1:
        raise ValueError(f"stack: all input arrays must have the same shape, got "
                         f"{[get_aval(x).shape for x in arrays]}")
    axis = _axis("stack", axis, get_aval(arrays[0]).ndim + 1)
    return concatenate([lax.expand_dims(x, (axis,)) for x in arrays], axis=axis, dtype=dtype)


def _at_least(arys, new_shape):
    """numpy's atleast_*d: each argument reshaped to ``new_shape(shape)`` (None leaves it as
    it is); one array back for one argument, else a list."""
    out = []
    for a in arys:
        a = asarray_arg(a)
        shape = new_shape(get_aval(a).shape)
        out.append(a if shape is None else lax.reshape(a, shape))
    return out[0] if len(out) == 1 else out


@_user_line
def atleast_1d(*arys):
    return _at_least(arys, lambda s: (1,) if len(s) == 0 else None)


@_user_line
def atleast_2d(*arys):
    return _at_least(arys, lambda s: (1,) * (2 - len(s)) + s if len(s) < 2 else None)


@_user_line
def atleast_3d(*arys):
    # numpy puts a 1-d array's length in the middle and a 2-d array's dims first.
    return _at_least(arys, lambda s: {0: (1, 1, 1), 1: (1,) + s + (1,), 2: s + (1,)}.get(len(s)))


@_user_line
def hstack(tup, dtype=None):
    arrs = [atleast_1d(a) for a in tup]
    return concatenate(arrs, 0 if get_aval(arrs[0]).ndim == 1 else 1, dtype=dtype)


@_user_line
def vstack(tup, dtype=None):
    return concatenate([atleast_2d(a) for a in tup], 0, dtype=dtype)


@_user_line
def dstack(tup, dtype=None):
    return concatenate([atleast_3d(a) for a in tup], 2, dtype=dtype)


@_user_line
def column_stack(tup):
    cols = []
    for a in tup:
        a = asarray_arg(a)
        cols.append(lax.reshape(a, (get_aval(a).size, 1)) if get_aval(a).ndim < 2 else a)
    return concatenate(cols, 1)


@_user_line
def append(arr, values, axis=None):
    if axis is None:
        return concatenate([ravel(arr), ravel(values)], 0)
    return concatenate([arr, values], axis)


def _split(name, ary, indices_or_sections, axis, strict):
    ary = asarray_arg(ary)
    shp = get_aval(ary).shape
    axis = _axis(name, axis, len(shp))
    n = shp[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        sections = int(indices_or_sections)
        if sections <= 0:
            raise ValueError(f"{name}: number sections must be larger than 0")
        if strict and n % sections:
            raise ValueError(f"{name}: array split does not result in an equal division "
                             f"({n} elements into {sections} sections)")
        each, extra = divmod(n, sections)
        sizes = [each + 1] * extra + [each] * (sections - extra)
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    else:
        cuts = [int(core.concrete_or_error(i, f"{name}: split points must be static"))
                for i in indices_or_sections]
        bounds = [0] + cuts + [n]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        lo = min(max(lo + n if lo < 0 else lo, 0), n)
        hi = min(max(hi + n if hi < 0 else hi, 0), n)
        out.append(lax.slice_in_dim(ary, lo, max(hi, lo), 1, axis))
    return out


@_user_line
def split(ary, indices_or_sections, axis=0):
    """numpy.split: equal sections (else ValueError) or at the given indices."""
    return _split("split", ary, indices_or_sections, axis, strict=True)


@_user_line
def array_split(ary, indices_or_sections, axis=0):
    """numpy.array_split: like split, sections may differ in size by one."""
    return _split("array_split", ary, indices_or_sections, axis, strict=False)


@_user_line
def hsplit(ary, indices_or_sections):
    ary = asarray_arg(ary)
    return split(ary, indices_or_sections, 0 if get_aval(ary).ndim == 1 else 1)


@_user_line
def vsplit(ary, indices_or_sections):
    return split(ary, indices_or_sections, 0)


@_user_line
def tile(A, reps):
    """numpy.tile: a broadcast to (reps, shape) pairs, then one reshape."""
    A = asarray_arg(A)
    reps = (reps,) if isinstance(reps, (int, np.integer)) else tuple(reps)
    reps = tuple(int(r) for r in reps)
    s = get_aval(A).shape
    nd = max(len(s), len(reps))
    s = (1,) * (nd - len(s)) + s
    reps = (1,) * (nd - len(reps)) + reps
    A = lax.reshape(A, s)
    inter = tuple(x for pair in zip(reps, s) for x in pair)
    b = lax.broadcast_in_dim(A, inter, tuple(range(1, 2 * nd, 2)))
    return lax.reshape(b, tuple(r * d for r, d in zip(reps, s)))


@_user_line
def repeat(a, repeats, axis=None, *, total_repeat_length=None):
    """numpy.repeat; ``repeats`` a static int (a broadcast) or a concrete array (a gather)."""
    a = asarray_arg(a)
    if axis is None:
        a = ravel(a)
        axis = 0
    s = get_aval(a).shape
    axis = _axis("repeat", axis, len(s))
    if isinstance(repeats, (int, np.integer)):
        r = int(repeats)
        if r < 0:
            raise ValueError("repeat: negative dimensions are not allowed")
        b = lax.broadcast_in_dim(lax.expand_dims(a, (axis + 1,)),
                                 s[:axis + 1] + (r,) + s[axis + 1:],
                                 tuple(range(len(s) + 1)))
        return lax.reshape(b, s[:axis] + (s[axis] * r,) + s[axis + 1:])
    reps = np.asarray(core.concrete_or_error(
        repeats, "repeat: array repeats must be concrete (their sum is the output's size)"))
    if reps.ndim == 0:
        return repeat(a, int(reps), axis)
    if reps.shape != (s[axis],):
        raise ValueError(f"repeat: operands could not be broadcast together: repeats of shape "
                         f"{reps.shape} for axis {axis} of size {s[axis]}")
    if (reps < 0).any():
        raise ValueError("repeat: negative dimensions are not allowed")
    from .indexing import take
    return take(a, np.repeat(np.arange(s[axis]), reps), axis=axis)


@_user_line
def flip(m, axis=None):
    m = asarray_arg(m)
    nd = get_aval(m).ndim
    axes = tuple(range(nd)) if axis is None else _axes("flip", axis, nd)
    return lax.rev(m, axes) if axes else m


@_user_line
def fliplr(m):
    m = asarray_arg(m)
    if get_aval(m).ndim < 2:
        raise ValueError("fliplr: input must be >= 2-d")
    return flip(m, 1)


@_user_line
def flipud(m):
    m = asarray_arg(m)
    if get_aval(m).ndim < 1:
        raise ValueError("flipud: input must be >= 1-d")
    return flip(m, 0)


@_user_line
def roll(a, shift, axis=None):
    """numpy.roll; static shifts are two slices and a concatenate, traced shifts a gather."""
    a = asarray_arg(a)
    if axis is None:
        return reshape(roll(ravel(a), shift, 0), get_aval(a).shape)
    s = get_aval(a).shape
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    scalar = isinstance(shift, (int, np.integer)) or (
        core.is_array_like(shift) and get_aval(shift).ndim == 0)
    shifts = (shift,) * len(axes) if scalar else tuple(shift)
    if len(shifts) != len(axes):
        raise ValueError(f"roll: shift {shift} and axis {axis} must have the same length")
    for sh, ax in zip(shifts, axes):
        ax = _axis("roll", ax, len(s))
        n = s[ax]
        if n == 0:
            continue
        if isinstance(sh, Tracer):
            from .indexing import take
            src = lax.rem(lax.sub(lax.iota(np.int64, n), lax.convert_element_type(sh, np.int64)),
                          n)
            src = lax.select_n(lax.lt(src, 0), src, lax.add(src, n))
            a = take(a, src, axis=ax, mode="clip")
            continue
        k = int(sh) % n
        if k:
            a = lax.concatenate([lax.slice_in_dim(a, n - k, n, 1, ax),
                                 lax.slice_in_dim(a, 0, n - k, 1, ax)], ax)
    return a


@_user_line
def rot90(m, k=1, axes=(0, 1)):
    m = asarray_arg(m)
    nd = get_aval(m).ndim
    if len(axes) != 2:
        raise ValueError("rot90: len(axes) must be 2")
    a0, a1 = _axis("rot90", axes[0], nd), _axis("rot90", axes[1], nd)
    if a0 == a1:
        raise ValueError("rot90: axes must be different")
    k = int(k) % 4
    if k == 0:
        return m
    if k == 2:
        return flip(flip(m, a0), a1)
    perm = list(range(nd))
    perm[a0], perm[a1] = perm[a1], perm[a0]
    if k == 1:
        return lax.transpose(flip(m, a1), perm)
    return flip(lax.transpose(m, perm), a1)


# ---------------------------------------------------------------------------------------------
# pad


def _pad_widths(name, pad_width, nd):
    pw = np.asarray(core.concrete_or_error(pad_width, f"{name}: pad_width must be static"))
    if not dtypes.is_integer(pw.dtype):
        raise TypeError(f"{name}: pad_width must be integers, got {pw.dtype}")
    try:
        pw = np.broadcast_to(pw, (nd, 2))
    except ValueError:
        raise ValueError(f"{name}: pad_width {pad_width!r} does not fit an array of dimension "
                         f"{nd}") from None
    if (pw < 0).any():
        raise ValueError(f"{name}: index can't contain negative values ({pad_width!r})")
    return [(int(lo), int(hi)) for lo, hi in pw]


def _source_positions(mode, n, lo, hi):
    """For each output position along one axis, the input position it copies."""
    i = np.arange(-lo, n + hi)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(i)
        period = 2 * (n - 1)
        j = np.mod(i, period)
        return np.where(j >= n, period - j, j)
    if mode == "symmetric":
        period = 2 * n
        j = np.mod(i, period)
        return np.where(j >= n, period - 1 - j, j)
    raise AssertionError(mode)


_PAD_MODES = ("constant", "edge", "wrap", "reflect", "symmetric")


@_user_line
def pad(array, pad_width, mode="constant", **kwargs):
    """numpy.pad with modes constant (``constant_values``), edge, wrap, reflect, symmetric."""
    array = asarray_arg(array)
    aval = get_aval(array)
    widths = _pad_widths("pad", pad_width, aval.ndim)
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode {mode!r} is not supported; use one of {_PAD_MODES}")
    if mode == "constant":
        cv = kwargs.pop("constant_values", 0)
        if kwargs:
            raise TypeError(f"pad: unexpected keyword arguments {sorted(kwargs)}")
        cv = asarray_arg(cv)
        if get_aval(cv).ndim == 0:
            return lax.pad(array, lax.convert_element_type(cv, aval.dtype),
                           [(lo, hi, 0) for lo, hi in widths])
        cvs = np.broadcast_to(np.asarray(core.concrete_or_error(
            cv, "pad: per-axis constant_values must be static")), (aval.ndim, 2))
        out = array
        for ax, (lo, hi) in enumerate(widths):
            for side, w in ((0, lo), (1, hi)):
                cfg = [(0, 0, 0)] * aval.ndim
                cfg[ax] = (w, 0, 0) if side == 0 else (0, w, 0)
                if w:
                    out = lax.pad(out, lax.convert_element_type(cvs[ax, side], aval.dtype),
                                  cfg)
        return out
    if kwargs:
        raise TypeError(f"pad: unexpected keyword arguments {sorted(kwargs)} for mode {mode!r}")
    from .indexing import take
    out = array
    for ax, (lo, hi) in enumerate(widths):
        if not lo and not hi:
            continue
        if aval.shape[ax] == 0:
            raise ValueError(f"pad: can't extend empty axis {ax} using modes other than "
                             f"'constant'")
        out = take(out, _source_positions(mode, aval.shape[ax], lo, hi), axis=ax)
    return out


# ---------------------------------------------------------------------------------------------
# broadcasting


@_user_line
def broadcast_shapes(*shapes):
    try:
        return np.broadcast_shapes(*[tuple(s) if not isinstance(s, int) else (s,)
                                     for s in shapes])
    except ValueError:
        raise ValueError(f"broadcast_shapes: shape mismatch: objects cannot be broadcast to a "
                         f"single shape: {shapes}") from None


@_user_line
def broadcast_to(array, shape):
    array = asarray_arg(array)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    src = get_aval(array).shape
    try:
        ok = len(shape) >= len(src) and np.broadcast_shapes(src, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"broadcast_to: cannot broadcast an array of shape {src} to shape "
                         f"{tuple(shape)}")
    return lax.broadcast_to(array, shape)


@_user_line
def broadcast_arrays(*args):
    args = [asarray_arg(a) for a in args]
    shp = broadcast_shapes(*[get_aval(a).shape for a in args])
    return [lax.broadcast_to(a, shp) for a in args]
