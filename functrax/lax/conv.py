"""Convolutions: ``conv_general_dilated`` (1-D, 2-D, 3-D, ...) and its wrappers.

Semantics follow JAX/XLA: the output is a *correlation* of the (padded, ``lhs_dilation``-dilated)
input with the (``rhs_dilation``-dilated) kernel, sampled every ``window_strides``.
``dimension_numbers`` says where the batch, feature and spatial dims are — ``None`` for
NCHW/OIHW/NCHW, a triple of strings such as ``('NHWC', 'HWIO', 'NHWC')`` or a
``ConvDimensionNumbers`` of permutations. ``feature_group_count`` splits the input features
into groups (depthwise convolution when it equals the feature count); ``batch_group_count``
splits the batch instead (used by the kernel gradient of grouped convolutions).

The impl multiplies with BLAS and picks, from the shapes, the product that copies least:

- row product (stride-1 rows, enough features): only the windows along the *other* spatial
  dims are copied (a third of im2col for 3x3 kernels), with the rows outermost, so each kernel
  row is one BLAS product on a contiguous block, accumulated in place;
- slab product (kernel window larger than the output, i.e. a kernel gradient): one
  long-contraction product per output row, each on a contiguous slab of the input;
- im2col otherwise: a strided window *view* of the padded input gathered into one patch
  matrix, laid out so the copy streams (a batched product per group);
- overlap-add for few output features (a first layer's input gradient).

>>> import numpy as np
>>> from functrax import lax
>>> x = np.ones((1, 1, 4, 4)); w = np.ones((2, 1, 3, 3))
>>> lax.conv_general_dilated(x, w, (1, 1), 'SAME')[0, 0].tolist()
[[4.0, 6.0, 6.0, 4.0], [6.0, 9.0, 9.0, 6.0], [6.0, 9.0, 9.0, 6.0], [4.0, 6.0, 6.0, 4.0]]
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from .. import dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules
from ._util import array_namespace
from .structural import convert_element_type, reshape, rev, transpose

__all__ = ["ConvDimensionNumbers", "conv_general_dilated", "conv_general_dilated_p", "conv",
           "conv_with_general_padding", "conv_transpose", "conv_dimension_numbers",
           "conv_general_permutations", "padtype_to_pads"]


class ConvDimensionNumbers(NamedTuple):
    """Where the dims are: ``lhs_spec = (batch, feature, *spatial)``, ``rhs_spec = (out
    feature, in feature, *spatial)``, ``out_spec = (batch, feature, *spatial)``."""
    lhs_spec: tuple
    rhs_spec: tuple
    out_spec: tuple


def conv_general_permutations(dimension_numbers):
    """Permutations (lhs, rhs, out) from a triple of layout strings such as
    ``('NHWC', 'HWIO', 'NHWC')``; spatial dims are ordered as in the kernel's string."""
    lhs_s, rhs_s, out_s = dimension_numbers
    pairs = (("N", "C"), ("O", "I"), ("N", "C"))
    for s, (a, b) in zip((lhs_s, rhs_s, out_s), pairs):
        if s.count(a) != 1 or s.count(b) != 1 or len(set(s)) != len(s):
            raise TypeError(f"conv dimension_numbers: {s!r} must name each dim once, with one "
                            f"{a!r} and one {b!r} (got {dimension_numbers})")
    spatial = set(rhs_s) - {"O", "I"}
    if set(lhs_s) - {"N", "C"} != spatial or set(out_s) - {"N", "C"} != spatial:
        raise TypeError(f"conv dimension_numbers: the spatial dims of {dimension_numbers} "
                        f"do not match")

    def perm(s, pair, by_kernel):
        sp = [i for i, c in enumerate(s) if c not in pair]
        if by_kernel:
            sp.sort(key=lambda i: rhs_s.index(s[i]))
        return (s.index(pair[0]), s.index(pair[1])) + tuple(sp)

    return (perm(lhs_s, pairs[0], True), perm(rhs_s, pairs[1], False),
            perm(out_s, pairs[2], True))


def conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) -> ConvDimensionNumbers:
    """Canonical ``ConvDimensionNumbers`` from None, strings or a ConvDimensionNumbers."""
    nd = len(lhs_shape)
    if len(rhs_shape) != nd:
        raise TypeError(f"conv: lhs {tuple(lhs_shape)} and rhs {tuple(rhs_shape)} must have the "
                        f"same rank")
    if dimension_numbers is None:
        iota = tuple(range(nd))
        return ConvDimensionNumbers(iota, iota, iota)
    if isinstance(dimension_numbers, ConvDimensionNumbers):
        return ConvDimensionNumbers(*(tuple(int(d) for d in s) for s in dimension_numbers))
    if len(dimension_numbers) != 3:
        raise TypeError(f"conv: dimension_numbers must be None, a ConvDimensionNumbers or "
                        f"three layout strings, got {dimension_numbers!r}")
    if all(isinstance(s, str) for s in dimension_numbers):
        if any(len(s) != nd for s in dimension_numbers):
            raise TypeError(f"conv: layout strings {dimension_numbers} must have one letter per "
                            f"dim of the rank-{nd} operands")
        return ConvDimensionNumbers(*conv_general_permutations(dimension_numbers))
    return ConvDimensionNumbers(*(tuple(int(d) for d in s) for s in dimension_numbers))


def padtype_to_pads(in_shape, window_shape, window_strides, padding):
    """Explicit (low, high) pads for 'SAME', 'SAME_LOWER' or 'VALID'."""
    kind = padding.upper() if isinstance(padding, str) else padding
    if kind == "VALID":
        return [(0, 0)] * len(in_shape)
    if kind in ("SAME", "SAME_LOWER"):
        pads = []
        for d, w, s in zip(in_shape, window_shape, window_strides):
            out = -(-int(d) // int(s))
            total = max((out - 1) * int(s) + int(w) - int(d), 0)
            small = total // 2
            pads.append((small, total - small) if kind == "SAME" else (total - small, small))
        return pads
    raise ValueError(f"conv/reduce_window: unknown padding {padding!r}; use 'SAME', "
                     f"'SAME_LOWER', 'VALID' or a sequence of (low, high) pairs")


def _dilate_dim(d, r):
    return 0 if d == 0 else 1 + r * (d - 1)


def _conv_out_spatial(in_sp, k_sp, strides, padding, lhs_dilation, rhs_dilation):
    out = []
    for d, k, s, (lo, hi), ld, rd in zip(in_sp, k_sp, strides, padding, lhs_dilation,
                                         rhs_dilation):
        size = _dilate_dim(d, ld) + lo + hi
        eff = _dilate_dim(k, rd)
        out.append(max(0, (size - eff) // s + 1) if size >= eff else 0)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# conv_general_dilated


def pad_and_dilate(x, xp, axes, padding, dilation, fill=0):
    """x with the given axes dilated (``dilation - 1`` holes between elements) and padded
    (negative pads crop), all filled with ``fill``; x itself when there is nothing to do."""
    if all(lo == 0 and hi == 0 for lo, hi in padding) and all(r == 1 for r in dilation):
        return x
    shape = list(x.shape)
    grown = list(x.shape)
    place = [slice(None)] * x.ndim
    crop = [slice(None)] * x.ndim
    for ax, (lo, hi), r in zip(axes, padding, dilation):
        dil = _dilate_dim(shape[ax], r)
        grown[ax] = max(lo, 0) + dil + max(hi, 0)
        place[ax] = slice(max(lo, 0), max(lo, 0) + dil, r)
        crop[ax] = slice(max(-lo, 0), grown[ax] - max(-hi, 0))
    buf = xp.full(grown, fill, dtype=x.dtype)
    buf[tuple(place)] = x
    return buf[tuple(crop)]


def window_view(x, xp, axes, window, strides, dilation):
    """A strided view of x: for each of ``axes`` an output-position dim (same place) and a
    window dim (appended at the end, in ``axes`` order). Returns (view, out sizes)."""
    shape, st = list(x.shape), list(x.strides)
    out_sizes = []
    new_shape, new_strides = list(shape), list(st)
    win_shape, win_strides = [], []
    for ax, w, s, r in zip(axes, window, strides, dilation):
        eff = _dilate_dim(w, r)
        n = (shape[ax] - eff) // s + 1 if shape[ax] >= eff else 0
        out_sizes.append(n)
        new_shape[ax] = n
        new_strides[ax] = st[ax] * s
        win_shape.append(w)
        win_strides.append(st[ax] * r)
    view = xp.lib.stride_tricks.as_strided(x, tuple(new_shape + win_shape),
                                           tuple(new_strides + win_strides), writeable=False)
    return view, out_sizes


def _overlap_add_product(x, w, out_sp, k_sp, strides, dilation, xp):
    """The ungrouped product for few output features (the input gradient of a first layer):
    multiply every input position by the whole kernel, (N*Q, C) @ (C, K*O), then add the K
    shifted, strided slices of that into the output. It materializes N*Q*K*O numbers instead
    of im2col's N*P*K*C. ``x`` is (N, *in, C), ``w`` (*k, C, O); returns (N, *out, O)."""
    nsp = len(k_sp)
    N, C = x.shape[0], x.shape[-1]
    O = w.shape[-1]
    K = math.prod(k_sp)
    wmat = xp.transpose(w, (nsp,) + tuple(range(nsp)) + (nsp + 1,)).reshape(C, K * O)
    y = xp.matmul(x.reshape(-1, C), wmat).reshape(x.shape[:-1] + tuple(k_sp) + (O,))
    out = xp.zeros((N,) + tuple(out_sp) + (O,), y.dtype)
    for k in itertools.product(*[range(n) for n in k_sp]):
        sl = tuple(slice(i * d, i * d + (n - 1) * s + 1, s) if n else slice(0, 0)
                   for i, d, n, s in zip(k, dilation, out_sp, strides))
        out += y[(slice(None),) + sl + k]
    return out


_USE_BLAS_ACC = True  # accumulate the row products inside BLAS (see _row_product)


def _blas_gemm(xp, dtype):
    """SciPy's BLAS ``?gemm`` for numpy arrays of a BLAS dtype (it can accumulate into its
    output, which ``matmul`` cannot), else None."""
    if xp is not np:
        return None
    prefix = {np.dtype(np.float32): "s", np.dtype(np.float64): "d",
              np.dtype(np.complex64): "c", np.dtype(np.complex128): "z"}.get(np.dtype(dtype))
    if prefix is None:
        return None
    try:
        from scipy.linalg import blas
    except ImportError:
        return None
    return getattr(blas, prefix + "gemm")


def _row_product(x, w, out_sp, k_sp, strides, dilation, xp):
    """The ungrouped product with the first spatial dim kept out of the patch matrix.

    The windows over the other spatial dims are copied once, laid out with the first
    spatial (row) dim outermost: (H, N, *out_rest, *k_rest, C), ``k_sp[0]`` times smaller than
    full im2col. Each row offset of the kernel then reads a *contiguous* block of those rows
    as a plain matrix, so it is one BLAS product with no further copy, and the row offsets
    are summed. ``x`` is (N, *in, C) (padded), ``w`` (*k, C, O); the first spatial stride is
    1. Returns (N, *out, O) as a transposed view of the (OH, N, *out_rest, O) result."""
    nsp = len(k_sp)
    N, C = x.shape[0], x.shape[-1]
    O = w.shape[-1]
    kh, dh, OH = k_sp[0], dilation[0], out_sp[0]
    rest = tuple(range(2, nsp + 1))
    view, _ = window_view(x, xp, rest, k_sp[1:], strides[1:], dilation[1:])
    # view: (N, H, *out_rest, C, *k_rest) -> (H, N, *out_rest, *k_rest, C)
    perm = (1, 0) + rest + tuple(range(nsp + 2, 2 * nsp + 1)) + (nsp + 1,)
    M = N * math.prod(out_sp[1:])
    Kc = C * math.prod(k_sp[1:])
    rows = xp.ascontiguousarray(xp.transpose(view, perm)).reshape(-1, Kc)
    Hin = x.shape[1]
    if O <= _ROW_NARROW and 4 * Hin <= 5 * OH:
        # Few output features make a narrow, slow BLAS product: multiply every row by all
        # the row offsets' kernels at once (a wide product, at most 25% more work for the
        # rows no output uses), then add the row-shifted column blocks.
        wide = xp.transpose(w.reshape(kh, Kc, O), (1, 0, 2)).reshape(Kc, kh * O)
        y = xp.matmul(rows, wide)
        out = y[:OH * M, :O].copy()
        for i in range(1, kh):
            start = i * dh * M
            out += y[start:start + OH * M, i * O:(i + 1) * O]
        out = out.reshape((OH, N) + tuple(out_sp[1:]) + (O,))
        return xp.moveaxis(out, 0, 1)
    w3 = xp.ascontiguousarray(w).reshape(kh, Kc, O)
    gemm = _blas_gemm(xp, w3.dtype) if _USE_BLAS_ACC else None
    if gemm is not None:
        # BLAS accumulates in place (beta = 1): no temporary product and no extra pass.
        # Row-major C = A @ B is column-major C.T = B.T @ A.T, all plain transposed views.
        acc = gemm(1.0, w3[0].T, rows[:OH * M].T)
        for i in range(1, kh):
            start = i * dh * M
            acc = gemm(1.0, w3[i].T, rows[start:start + OH * M].T, beta=1.0, c=acc,
                       overwrite_c=True)
        out = acc.T
    else:
        out = xp.matmul(rows[:OH * M], w3[0])
        if kh > 1:
            tmp = xp.empty_like(out)
            for i in range(1, kh):
                start = i * dh * M
                xp.matmul(rows[start:start + OH * M], w3[i], out=tmp)
                out += tmp
    out = out.reshape((OH, N) + tuple(out_sp[1:]) + (O,))
    return xp.moveaxis(out, 0, 1)


def _slab_product(x, w, out_sp, k_sp, xp):
    """The ungrouped product when the kernel window is larger than the output (the kernel
    gradient: its "kernel" is the output cotangent): stride and dilation 1.

    Each output row ``ph`` contracts a slab of ``k_sp[0]`` consecutive input rows with the
    whole kernel. The windows over the other spatial dims are copied once, laid out (H, C,
    *k_rest, *out_rest, N), so that every slab is a contiguous block of that copy, read by
    BLAS as a transposed matrix: one long-contraction product per output row, with no
    further copy. ``x`` is (N, *in, C) (padded; fastest when N is innermost in memory),
    ``w`` (*k, C, O). Returns (N, *out, O) as a transposed view."""
    nsp = len(k_sp)
    N, C = x.shape[0], x.shape[-1]
    O = w.shape[-1]
    kh, OH = k_sp[0], out_sp[0]
    rest = tuple(range(2, nsp + 1))
    view, _ = window_view(x, xp, rest, k_sp[1:], (1,) * (nsp - 1), (1,) * (nsp - 1))
    # view: (N, H, *out_rest, C, *k_rest) -> (H, C, *k_rest, *out_rest, N)
    perm = (1, nsp + 1) + tuple(range(nsp + 2, 2 * nsp + 1)) + rest + (0,)
    R = N * math.prod(out_sp[1:])
    blk = C * math.prod(k_sp[1:])
    slabs = xp.ascontiguousarray(xp.transpose(view, perm)).reshape(-1, R)
    # kernel (kh, *k_rest, C, O) -> (kh, C, *k_rest, O), matching the slab's row order
    wperm = (0, nsp) + tuple(range(1, nsp)) + (nsp + 1,)
    wm = xp.ascontiguousarray(xp.transpose(w, wperm)).reshape(kh * blk, O)
    out = xp.empty((OH, R, O), wm.dtype)
    for ph in range(OH):
        xp.matmul(slabs[ph * blk:(ph + kh) * blk].T, wm, out=out[ph])
    out = out.reshape((OH,) + tuple(out_sp[1:]) + (N, O))
    return xp.moveaxis(out, nsp, 0)


# Which product an ungrouped convolution takes (measured on W6's shapes, one thread): the row
# product needs enough features per kernel row for an efficient BLAS contraction
# (_ROW_MIN_DEPTH) and enough output rows (_ROW_MIN_ROWS), and multiplies by all row offsets
# at once when the outputs are narrow (<= _ROW_NARROW features); the slab product needs
# _SLAB_MIN_ROWS output rows per slab. The switches are for A/B measurements and tests.
_ROW_PRODUCT = True
_SLAB_PRODUCT = True
_SLAB_MIN_ROWS = 32
_ROW_MIN_DEPTH = 32
_ROW_MIN_ROWS = 256
_ROW_NARROW = 32


def _run_length(shape, strides, axes, itemsize):
    """How many elements a copy that iterates ``axes`` (the last one fastest) reads as one
    contiguous run: the product of the trailing axes that continue each other in memory."""
    run, expect = 1, itemsize
    for a in reversed(axes):
        if shape[a] == 1:
            continue
        if abs(strides[a]) != expect:
            break
        run *= shape[a]
        expect *= shape[a]
    return run


def _patch_product(view, w, nsp, xp):
    """The ungrouped im2col product: ``view`` (N, *out, *k, C) of windows, ``w`` (*k, C, O).
    Returns (N, *out, O), possibly as a transposed view.

    The patch matrix is the one big copy, so its axes are ordered by the input's memory
    layout (largest stride outermost), and it is laid out (rows, columns) or (columns, rows)
    whichever gives the copy the longer contiguous runs: channels-last inputs with many
    features stream feature vectors, a single-channel image streams its rows. When the
    kernel is the bigger operand (a kernel gradient, whose "kernel" is the output
    cotangent), the columns follow the kernel's memory order instead, so that it is used
    in place. BLAS takes either operand transposed, so the product itself never copies."""
    shape, strides = view.shape, view.strides
    nrow = 1 + nsp
    big = max((abs(st) for st in strides), default=0) + 1

    def stride(a):  # size-1 dims do not move through memory
        return abs(strides[a]) if shape[a] > 1 else big
    rows = sorted(range(nrow), key=lambda a: -stride(a))
    R = math.prod(shape[:nrow])
    Kc = math.prod(shape[nrow:])
    O = w.shape[-1]
    if w.size > R * Kc:
        wst = w.strides

        def wstride(a):
            return abs(wst[a - nrow]) if shape[a] > 1 else big
        cols = sorted(range(nrow, view.ndim), key=lambda a: -wstride(a))
    else:
        cols = sorted(range(nrow, view.ndim), key=lambda a: -stride(a))
    w2 = xp.transpose(w, [a - nrow for a in cols] + [w.ndim - 1]).reshape(Kc, O)
    row_shape = [shape[a] for a in rows]
    item = view.itemsize
    if _run_length(shape, strides, cols, item) >= _run_length(shape, strides, rows, item):
        patches = xp.transpose(view, rows + cols).reshape(R, Kc)
    else:
        patches = xp.transpose(view, cols + rows).reshape(Kc, R).T
    res = xp.matmul(patches, w2).reshape(row_shape + [O])
    order = rows + [-1]
    return xp.transpose(res, [order.index(a) for a in range(nrow)] + [order.index(-1)])


def _conv_impl(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
               dimension_numbers, feature_group_count, batch_group_count, precision,
               preferred_element_type):
    xp = array_namespace(lhs, rhs)
    lhs, rhs = xp.asarray(lhs), xp.asarray(rhs)
    if preferred_element_type is not None:
        dtype = np.dtype(preferred_element_type)
    else:
        dtype = lhs.dtype if lhs.dtype == rhs.dtype else np.result_type(lhs.dtype, rhs.dtype)
    lhs, rhs = lhs.astype(dtype, copy=False), rhs.astype(dtype, copy=False)
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    nsp = len(lhs_spec) - 2
    sp_axes = tuple(range(1, nsp + 1))
    N, C = lhs.shape[lhs_spec[0]], lhs.shape[lhs_spec[1]]
    O = rhs.shape[rhs_spec[0]]
    k_sp = tuple(rhs.shape[d] for d in rhs_spec[2:])
    grown = [_dilate_dim(lhs.shape[d], ld) + lo + hi
             for d, (lo, hi), ld in zip(lhs_spec[2:], padding, lhs_dilation)]
    out_sp = _conv_out_spatial(tuple(lhs.shape[d] for d in lhs_spec[2:]), k_sp,
                               window_strides, padding, lhs_dilation, rhs_dilation)
    P = math.prod(out_sp)
    K = math.prod(k_sp)
    Q = math.prod(grown)
    G, BG = feature_group_count, batch_group_count
    path = "grouped"
    if G == 1 and BG == 1:
        # Overlap-add writes fewer numbers than im2col but adds K strided slices (about
        # three times the cost per number of im2col's contiguous copy, measured on W6):
        # it wins only for few output features (a first layer's input gradient).
        if 3 * Q * O <= P * C:
            path = "overlap"
        elif _SLAB_PRODUCT and K > P and all(st == 1 for st in window_strides) and \
                all(r == 1 for r in rhs_dilation) and \
                N * math.prod(out_sp[1:]) >= _SLAB_MIN_ROWS:
            path = "slab"
        elif _ROW_PRODUCT and window_strides[0] == 1 and k_sp[0] > 1 and \
                C * math.prod(k_sp[1:]) >= _ROW_MIN_DEPTH and \
                N * P >= _ROW_MIN_ROWS:
            path = "row"
        else:
            path = "patch"
    to_last = (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],)
    if path == "slab" or (path == "patch" and O > N * P):
        # The kernel (a kernel gradient's output cotangent) outweighs the patch matrix:
        # pad in the input's own layout, so the patch copy can follow the kernel's order
        # with the input's contiguous spatial runs (see _patch_product).
        x = xp.transpose(pad_and_dilate(lhs, xp, tuple(lhs_spec[2:]), padding, lhs_dilation),
                         to_last)
    else:
        # Channels last, so that a patch reads contiguous feature vectors.
        x = pad_and_dilate(xp.transpose(lhs, to_last), xp, sp_axes, padding, lhs_dilation)
    view, _ = window_view(x, xp, sp_axes, k_sp, window_strides, rhs_dilation)
    # view: (N, *out_sp, C, *k_sp) -> (N, *out_sp, *k_sp, C)
    view = xp.moveaxis(view, nsp + 1, -1)
    w = xp.transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))  # (*k, I, O)
    if path == "overlap":
        out = _overlap_add_product(x, w, out_sp, k_sp, window_strides, rhs_dilation, xp)
    elif path == "slab":
        out = _slab_product(x, w, out_sp, k_sp, xp)
    elif path == "row":
        out = _row_product(x, w, out_sp, k_sp, window_strides, rhs_dilation, xp)
    elif path == "patch":
        out = _patch_product(view, w, nsp, xp)
    elif G > 1:
        cg, og = C // G, O // G
        patches = xp.transpose(view.reshape(N * P, K, G, cg), (2, 0, 1, 3)).reshape(
            G, N * P, K * cg)
        wg = xp.transpose(w.reshape(K, cg, G, og), (2, 0, 1, 3)).reshape(G, K * cg, og)
        out = xp.transpose(xp.matmul(patches, wg), (1, 0, 2)).reshape(
            (N,) + tuple(out_sp) + (O,))
    else:
        nb, og = N // BG, O // BG
        patches = view.reshape(BG, nb * P, K * C)
        wg = xp.transpose(w.reshape(K * C, BG, og), (1, 0, 2))
        out = xp.matmul(patches, wg).reshape(BG, nb * P, og)
        out = xp.transpose(out, (1, 0, 2)).reshape((nb,) + tuple(out_sp) + (O,))
    # `out` is (batch, *spatial, feature); put each where out_spec says.
    logical_pos = {out_spec[0]: 0, out_spec[1]: nsp + 1}
    for i, d in enumerate(out_spec[2:]):
        logical_pos[d] = 1 + i
    return xp.transpose(out, tuple(logical_pos[j] for j in range(nsp + 2)))


def _conv_abstract_eval(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
                        dimension_numbers, feature_group_count, batch_group_count, precision,
                        preferred_element_type):
    where = f"lhs {lhs.str_short()}, rhs {rhs.str_short()}, dimension_numbers " \
            f"{tuple(dimension_numbers)}"
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    nd = lhs.ndim
    if rhs.ndim != nd or nd < 2:
        raise TypeError(f"conv_general_dilated: lhs and rhs must have the same rank >= 2: "
                        f"{where}")
    for spec in dimension_numbers:
        if sorted(spec) != list(range(nd)):
            raise TypeError(f"conv_general_dilated: each dimension spec must be a permutation "
                            f"of the {nd} dims: {where}")
    nsp = nd - 2
    for name, val in (("window_strides", window_strides), ("padding", padding),
                      ("lhs_dilation", lhs_dilation), ("rhs_dilation", rhs_dilation)):
        if len(val) != nsp:
            raise TypeError(f"conv_general_dilated: {name} {val} needs one entry per spatial "
                            f"dim ({nsp}): {where}")
    if any(s < 1 for s in window_strides) or any(r < 1 for r in lhs_dilation + rhs_dilation):
        raise ValueError(f"conv_general_dilated: strides and dilations must be >= 1, got "
                         f"strides {window_strides}, lhs_dilation {lhs_dilation}, rhs_dilation "
                         f"{rhs_dilation}: {where}")
    G, BG = feature_group_count, batch_group_count
    if G < 1 or BG < 1 or (G > 1 and BG > 1):
        raise ValueError(f"conv_general_dilated: feature_group_count ({G}) and "
                         f"batch_group_count ({BG}) must be >= 1, and one of them 1")
    n, c = lhs.shape[lhs_spec[0]], lhs.shape[lhs_spec[1]]
    o, i = rhs.shape[rhs_spec[0]], rhs.shape[rhs_spec[1]]
    if c != i * G:
        raise TypeError(f"conv_general_dilated: lhs has {c} input features but rhs expects "
                        f"{i} x feature_group_count {G} = {i * G}: {where}")
    if o % G or o % BG:
        raise TypeError(f"conv_general_dilated: rhs output features ({o}) must be divisible by "
                        f"feature_group_count ({G}) and batch_group_count ({BG}): {where}")
    if n % BG:
        raise TypeError(f"conv_general_dilated: lhs batch ({n}) must be divisible by "
                        f"batch_group_count ({BG}): {where}")
    out_sp = _conv_out_spatial(tuple(lhs.shape[d] for d in lhs_spec[2:]),
                               tuple(rhs.shape[d] for d in rhs_spec[2:]), window_strides,
                               padding, lhs_dilation, rhs_dilation)
    logical = (n // BG, o) + out_sp
    shape = [0] * nd
    for pos, size in zip(out_spec, logical):
        shape[pos] = size
    if preferred_element_type is not None:
        return ShapedArray(shape, preferred_element_type)
    dtype, weak = dtypes.promote_avals_dtype((lhs, rhs))
    return ShapedArray(shape, dtype, weak)


conv_general_dilated_p = Primitive("conv_general_dilated")
conv_general_dilated_p.def_impl(_conv_impl)
conv_general_dilated_p.def_abstract_eval(_conv_abstract_eval)


def _ints(xs, n, default, name):
    if xs is None:
        return (default,) * n
    if isinstance(xs, (int, np.integer)):
        return (int(xs),) * n
    out = tuple(int(x) for x in xs)
    if len(out) != n:
        raise TypeError(f"conv_general_dilated: {name} {tuple(xs)} needs {n} entries (one per "
                        f"spatial dim)")
    return out


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """General dilated convolution, as ``jax.lax.conv_general_dilated``.

    ``padding`` is 'SAME', 'SAME_LOWER', 'VALID' or one (low, high) pair per spatial dim."""
    la, ra = get_aval(lhs), get_aval(rhs)
    dn = conv_dimension_numbers(la.shape, ra.shape, dimension_numbers)
    nsp = la.ndim - 2
    window_strides = _ints(window_strides, nsp, 1, "window_strides")
    lhs_dilation = _ints(lhs_dilation, nsp, 1, "lhs_dilation")
    rhs_dilation = _ints(rhs_dilation, nsp, 1, "rhs_dilation")
    if isinstance(padding, str):
        k_sp = [_dilate_dim(ra.shape[d], r) for d, r in zip(dn.rhs_spec[2:], rhs_dilation)]
        padding = padtype_to_pads([la.shape[d] for d in dn.lhs_spec[2:]], k_sp,
                                  window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    pet = None if preferred_element_type is None else np.dtype(preferred_element_type)
    return conv_general_dilated_p.bind(
        lhs, rhs, window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dn,
        feature_group_count=int(feature_group_count), batch_group_count=int(batch_group_count),
        precision=tuple(precision) if isinstance(precision, list) else precision,
        preferred_element_type=pet)


def conv(lhs, rhs, window_strides, padding, precision=None, preferred_element_type=None):
    """NCHW/OIHW convolution without dilation."""
    return conv_general_dilated(lhs, rhs, window_strides, padding, precision=precision,
                                preferred_element_type=preferred_element_type)


def conv_with_general_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                              precision=None, preferred_element_type=None):
    """NCHW/OIHW convolution with explicit padding and dilations."""
    return conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                precision=precision,
                                preferred_element_type=preferred_element_type)


def _conv_transpose_pads(k, s, padding):
    if padding == "SAME":
        total = k + s - 2
        lo = k - 1 if s > k - 1 else -(-total // 2)
    elif padding == "VALID":
        total = k + s - 2 + max(k - s, 0)
        lo = k - 1
    else:
        raise ValueError(f"conv_transpose: padding must be 'SAME', 'VALID' or explicit pairs, "
                         f"got {padding!r}")
    return lo, total - lo


def conv_transpose(lhs, rhs, strides, padding, rhs_dilation=None, dimension_numbers=None,
                   transpose_kernel=False, precision=None, preferred_element_type=None):
    """Transposed ("deconvolution") convolution, as ``jax.lax.conv_transpose``: the input is
    dilated by ``strides``. Layouts default to N...C / ...IO / N...C."""
    la, ra = get_aval(lhs), get_aval(rhs)
    nd = la.ndim
    if dimension_numbers is None:
        sp = "HWDXYZ"[:nd - 2]
        dimension_numbers = ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    dn = conv_dimension_numbers(la.shape, ra.shape, dimension_numbers)
    nsp = nd - 2
    rhs_dilation = _ints(rhs_dilation, nsp, 1, "rhs_dilation")
    strides = _ints(strides, nsp, 1, "strides")
    if isinstance(padding, str):
        k_sp = [_dilate_dim(ra.shape[d], r) for d, r in zip(dn.rhs_spec[2:], rhs_dilation)]
        padding = [_conv_transpose_pads(k, s, padding.upper()) for k, s in zip(k_sp, strides)]
    if transpose_kernel:
        rhs = rev(rhs, tuple(dn.rhs_spec[2:]))
        perm = list(range(nd))
        perm[dn.rhs_spec[0]], perm[dn.rhs_spec[1]] = perm[dn.rhs_spec[1]], perm[dn.rhs_spec[0]]
        rhs = transpose(rhs, tuple(perm))
    return conv_general_dilated(lhs, rhs, (1,) * nsp, padding, strides, rhs_dilation, dn,
                                precision=precision,
                                preferred_element_type=preferred_element_type)


def _conv_jvp_lhs(t, lhs, rhs, **params):
    return conv_general_dilated_p.bind(t, rhs, **params)


def _conv_jvp_rhs(t, lhs, rhs, **params):
    return conv_general_dilated_p.bind(lhs, t, **params)


ad.defjvp(conv_general_dilated_p, _conv_jvp_lhs, _conv_jvp_rhs)


def _split_axis(x, axis, major):
    """Split dim ``axis`` into (major, rest)."""
    shape = list(get_aval(x).shape)
    shape[axis:axis + 1] = [major, shape[axis] // major]
    return reshape(x, tuple(shape))


def _merge_axis(x, src, dst):
    """Fold dim ``src`` into dim ``dst`` (indexed as if src were removed) as its major part."""
    shape = list(get_aval(x).shape)
    nd = len(shape)
    perm = [i for i in range(nd) if i != src]
    perm.insert(dst, src)
    if perm != list(range(nd)):
        x = transpose(x, tuple(perm))
    size = shape.pop(src)
    shape[dst] *= size
    return reshape(x, tuple(shape))


def _swap_spec(spec):
    return (spec[1], spec[0]) + tuple(spec[2:])


def _conv_transpose_lhs(ct, rhs, lhs_aval, *, window_strides, padding, lhs_dilation,
                        rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
                        precision):
    """Cotangent of the input: the cotangent convolved with the spatially flipped kernel, its
    in/out features swapped; the forward strides become an input dilation."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    groups = max(feature_group_count, batch_group_count)
    if groups > 1:
        # The transposed kernel's output features must list the groups outermost.
        rhs = _merge_axis(_split_axis(rhs, rhs_spec[0], groups), rhs_spec[0], rhs_spec[1])
    r_aval = get_aval(rhs)
    in_sp = [lhs_aval.shape[d] for d in lhs_spec[2:]]
    k_sp = [r_aval.shape[d] for d in rhs_spec[2:]]
    ct_sp = [get_aval(ct).shape[d] for d in out_spec[2:]]
    pads = []
    for d, k, c, (lo, _), s, ld, rd in zip(in_sp, k_sp, ct_sp, padding, window_strides,
                                           lhs_dilation, rhs_dilation):
        keff = _dilate_dim(k, rd)
        before = keff - lo - 1
        after = _dilate_dim(d, ld) + keff - 1 - _dilate_dim(c, s) - before
        pads.append((before, after))
    out = conv_general_dilated_p.bind(
        ct, rev(rhs, tuple(rhs_spec[2:])), window_strides=tuple(lhs_dilation),
        padding=tuple(pads), lhs_dilation=tuple(window_strides),
        rhs_dilation=tuple(rhs_dilation),
        dimension_numbers=ConvDimensionNumbers(out_spec, _swap_spec(rhs_spec), lhs_spec),
        feature_group_count=groups, batch_group_count=1, precision=precision,
        preferred_element_type=None)
    if batch_group_count > 1:
        out = _merge_axis(_split_axis(out, lhs_spec[1], batch_group_count), lhs_spec[1],
                          lhs_spec[0])
    return out


def _conv_transpose_rhs(ct, lhs, rhs_aval, *, window_strides, padding, lhs_dilation,
                        rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
                        precision):
    """Cotangent of the kernel: the input correlated with the cotangent, batch and feature
    roles swapped (feature groups become batch groups and vice versa)."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    l_aval = get_aval(lhs)
    in_sp = [l_aval.shape[d] for d in lhs_spec[2:]]
    k_sp = [rhs_aval.shape[d] for d in rhs_spec[2:]]
    ct_sp = [get_aval(ct).shape[d] for d in out_spec[2:]]
    pads = []
    for d, k, c, (lo, _), s, ld, rd in zip(in_sp, k_sp, ct_sp, padding, window_strides,
                                           lhs_dilation, rhs_dilation):
        hi = _dilate_dim(c, s) - _dilate_dim(d, ld) + _dilate_dim(k, rd) - lo - 1
        pads.append((lo, hi))
    return conv_general_dilated_p.bind(
        lhs, ct, window_strides=tuple(rhs_dilation), padding=tuple(pads),
        lhs_dilation=tuple(lhs_dilation), rhs_dilation=tuple(window_strides),
        dimension_numbers=ConvDimensionNumbers(_swap_spec(lhs_spec), _swap_spec(out_spec),
                                               _swap_spec(rhs_spec)),
        feature_group_count=batch_group_count, batch_group_count=feature_group_count,
        precision=precision, preferred_element_type=None)


def _conv_transpose_rule(ct, lhs, rhs, *, preferred_element_type, **params):
    if is_undefined_primal(lhs) and is_undefined_primal(rhs):
        raise ValueError("conv_general_dilated: transposing a convolution of two linear values "
                         "(not linear)")
    if is_undefined_primal(lhs):
        if ad.is_zero(ct) or get_aval(ct).size == 0:
            return [Zero(ad.tangent_aval(lhs.aval)), None]
        res = _conv_transpose_lhs(ct, rhs, lhs.aval, **params)
        aval = lhs.aval
        out = [None, None]
        idx = 0
    else:
        if ad.is_zero(ct) or get_aval(ct).size == 0:
            return [None, Zero(ad.tangent_aval(rhs.aval))]
        res = _conv_transpose_rhs(ct, lhs, rhs.aval, **params)
        aval = rhs.aval
        out = [None, None]
        idx = 1
    if get_aval(res).dtype != aval.dtype:
        res = convert_element_type(res, aval.dtype)
    out[idx] = res
    return out


transpose_rules[conv_general_dilated_p] = _conv_transpose_rule


def _conv_batch(vals, dims, *, dimension_numbers, feature_group_count, batch_group_count,
                **params):
    """Fold the vmapped axis into the convolution itself: into the batch dim for a batched
    input, into the output features (with groups) for batched kernels — one convolution."""
    (lhs, rhs), (ld, rd) = vals, dims
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    G, BG = feature_group_count, batch_group_count

    def bind(lhs_, rhs_, g, bg):
        return conv_general_dilated_p.bind(lhs_, rhs_, dimension_numbers=dimension_numbers,
                                           feature_group_count=g, batch_group_count=bg, **params)

    if ld is not None and rd is not None:
        B = get_aval(lhs).shape[ld]
        if BG > 1:
            new_lhs = _merge_axis(lhs, ld, lhs_spec[0])
            g, bg = G, BG * B
        else:
            new_lhs = _merge_axis(lhs, ld, lhs_spec[1])
            g, bg = G * B, BG
        out = bind(new_lhs, _merge_axis(rhs, rd, rhs_spec[0]), g, bg)
        return _split_axis(out, out_spec[1], B), out_spec[1]
    if ld is not None:
        B = get_aval(lhs).shape[ld]
        if BG == 1:
            out = bind(_merge_axis(lhs, ld, lhs_spec[0]), rhs, G, BG)
        else:
            # Batch groups are the outermost part of the batch dim: slot the vmapped axis in
            # inside each group.
            x = _split_axis(lhs, lhs_spec[0] + (ld <= lhs_spec[0]), BG)
            x = _merge_axis(x, ld + (lhs_spec[0] < ld), lhs_spec[0] + 1)
            out = bind(_merge_axis(x, lhs_spec[0], lhs_spec[0]), rhs, G, BG)
        return _split_axis(out, out_spec[0], B), out_spec[0]
    B = get_aval(rhs).shape[rd]
    if G == 1 and BG == 1:
        out = bind(lhs, _merge_axis(rhs, rd, rhs_spec[0]), G, BG)
        return _split_axis(out, out_spec[1], B), out_spec[1]
    # Groups are the outermost part of the kernel's output features: slot the vmapped axis in
    # inside each group, then take it back out of the output features.
    groups = max(G, BG)
    w = _split_axis(rhs, rhs_spec[0] + (rd <= rhs_spec[0]), groups)
    w = _merge_axis(w, rd + (rhs_spec[0] < rd), rhs_spec[0] + 1)
    out = bind(lhs, _merge_axis(w, rhs_spec[0], rhs_spec[0]), G, BG)
    out = _split_axis(_split_axis(out, out_spec[1], groups), out_spec[1] + 1, B)
    return _merge_axis(out, out_spec[1], out_spec[1] + 1), out_spec[1]


batching.batching_rules[conv_general_dilated_p] = _conv_batch
