"""``functrax.numpy.linalg``: norm, inv, solve, det, slogdet, cholesky, eigh, eigvalsh, svd,
qr, pinv, matrix_power, over ``functrax.lax.linalg`` (differentiable, batched over leading
dims, as numpy.linalg).

>>> import functrax.numpy as fnp
>>> float(fnp.linalg.det(fnp.array([[2.0, 0.0], [0.0, 3.0]])))
6.0
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import dtypes, lax
from ..core import get_aval
from ..lax import linalg as lax_linalg
from ._util import asarray_arg

__all__ = ["norm", "inv", "solve", "det", "slogdet", "cholesky", "eigh", "eigvalsh", "svd",
           "qr", "pinv", "matrix_power", "SlogdetResult", "EighResult", "SVDResult",
           "QRResult"]


class SlogdetResult(NamedTuple):
    sign: object
    logabsdet: object


class EighResult(NamedTuple):
    eigenvalues: object
    eigenvectors: object


class SVDResult(NamedTuple):
    U: object
    S: object
    Vh: object


class QRResult(NamedTuple):
    Q: object
    R: object


def _float(name, x):
    x = asarray_arg(x)
    aval = get_aval(x)
    if aval.ndim < 2:
        raise ValueError(f"linalg.{name}: expected a matrix (rank >= 2), got shape {aval.shape}")
    if not dtypes.is_inexact(aval.dtype):
        x = lax.convert_element_type(x, dtypes.default_float)
    return x


def inv(a):
    return lax_linalg.inv(_float("inv", a))


def solve(a, b):
    """Solve a x = b; b may be a vector (..., n) or a matrix (..., n, k), as numpy 2."""
    a = _float("solve", a)
    b = asarray_arg(b)
    b_aval = get_aval(b)
    if not dtypes.is_inexact(b_aval.dtype):
        b = lax.convert_element_type(b, dtypes.default_float)
    if b_aval.ndim == 1:
        return lax.reshape(lax_linalg.solve(a, lax.reshape(b, b_aval.shape + (1,))),
                           get_aval(a).shape[:-2] + b_aval.shape)
    return lax_linalg.solve(a, b)


def slogdet(a):
    sign, logabs = lax_linalg.slogdet(_float("slogdet", a))
    return SlogdetResult(sign, logabs)


def det(a):
    sign, logabs = lax_linalg.slogdet(_float("det", a))
    return lax.mul(sign, lax.exp(logabs))


def cholesky(a, upper=False):
    l = lax_linalg.cholesky(_float("cholesky", a))
    return lax_linalg._T(l) if upper else l


def eigh(a, UPLO="L", symmetrize_input=True):
    v, w = lax_linalg.eigh(_float("eigh", a), lower=UPLO == "L",
                           symmetrize_input=symmetrize_input)
    return EighResult(w, v)


def eigvalsh(a, UPLO="L"):
    return eigh(a, UPLO).eigenvalues


def svd(a, full_matrices=True, compute_uv=True, hermitian=False):
    out = lax_linalg.svd(_float("svd", a), full_matrices=full_matrices, compute_uv=compute_uv)
    return SVDResult(*out) if compute_uv else out


def qr(a, mode="reduced"):
    if mode not in ("reduced", "complete", "r"):
        raise ValueError(f"linalg.qr: mode must be 'reduced', 'complete' or 'r', got {mode!r}")
    q, r = lax_linalg.qr(_float("qr", a), full_matrices=mode == "complete")
    return r if mode == "r" else QRResult(q, r)


def pinv(a, rtol=None):
    """Moore-Penrose pseudo-inverse through the SVD (singular values below rtol*max cut)."""
    a = _float("pinv", a)
    m, n = get_aval(a).shape[-2:]
    u, s, vt = lax_linalg.svd(a, full_matrices=False)
    if rtol is None:
        rtol = 10 * max(m, n) * np.finfo(get_aval(a).dtype).eps
    cutoff = lax.mul(rtol, lax.reduce_max(s, (get_aval(s).ndim - 1,)))
    cutoff = lax.broadcast_in_dim(cutoff, get_aval(s).shape, tuple(range(get_aval(s).ndim - 1)))
    s_inv = lax.select_n(lax.gt(s, cutoff), lax.mul(s, 0), lax.div(1.0, s))
    vs = lax.mul(lax_linalg._T(vt), lax.broadcast_in_dim(
        s_inv, get_aval(vt).shape[:-2] + (n, get_aval(s).shape[-1]),
        tuple(range(get_aval(s).ndim - 1)) + (get_aval(s).ndim,)))
    return lax_linalg._matmul(vs, lax_linalg._T(u))


def matrix_power(a, n):
    """a ** n for an integer n (negative n inverts), by repeated squaring."""
    a = asarray_arg(a)
    if not isinstance(n, (int, np.integer)):
        raise TypeError(f"linalg.matrix_power: the exponent must be an int, got {n!r}")
    if n < 0:
        a, n = inv(a), -n
    result = None
    base = a
    while n:
        if n & 1:
            result = base if result is None else lax_linalg._matmul(result, base)
        n >>= 1
        if n:
            base = lax_linalg._matmul(base, base)
    if result is None:
        return lax_linalg._eye_like(_float("matrix_power", a))
    return result


def norm(x, ord=None, axis=None, keepdims=False):  # noqa: A002 - numpy's name
    """Vector norms (ord None/2, 1, inf, -inf, 0, p) and matrix norms ('fro', 'nuc', 1, -1,
    2, -2, inf, -inf), with numpy's axis conventions."""
    x = asarray_arg(x)
    aval = get_aval(x)
    if not dtypes.is_inexact(aval.dtype):
        x = lax.convert_element_type(x, dtypes.default_float)
        aval = get_aval(x)
    if axis is None:
        if ord is None:
            out = lax.sqrt(lax.reduce_sum(lax.mul(x, x)))
            return lax.reshape(out, (1,) * aval.ndim) if keepdims else out
        axis = tuple(range(aval.ndim))
        if aval.ndim > 2:
            raise ValueError("linalg.norm: with ord given and axis=None, x must be 1-D or 2-D")
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    axis = tuple(a % aval.ndim for a in axis)
    if len(axis) == 1:
        out = _vector_norm(x, ord, axis)
    elif len(axis) == 2:
        out = _matrix_norm(x, ord, axis)
    else:
        raise ValueError(f"linalg.norm: axis must name 1 or 2 axes, got {axis}")
    if keepdims:
        shape = list(aval.shape)
        for a in axis:
            shape[a] = 1
        out = lax.reshape(out, tuple(shape))
    return out


def _vector_norm(x, ord, axis):
    ax = lax.abs(x)
    if ord is None or ord == 2:
        return lax.sqrt(lax.reduce_sum(lax.mul(x, x), axis))
    if ord == np.inf:
        return lax.reduce_max(ax, axis)
    if ord == -np.inf:
        return lax.reduce_min(ax, axis)
    if ord == 0:
        return lax.reduce_sum(lax.convert_element_type(lax.ne(x, 0), get_aval(x).dtype), axis)
    if ord == 1:
        return lax.reduce_sum(ax, axis)
    if isinstance(ord, str):
        raise ValueError(f"linalg.norm: invalid norm order {ord!r} for vectors")
    return lax.pow(lax.reduce_sum(lax.pow(ax, float(ord)), axis), 1.0 / ord)


def _matrix_norm(x, ord, axis):
    r, c = axis
    if ord is None or ord == "fro":
        return lax.sqrt(lax.reduce_sum(lax.mul(x, x), axis))
    if ord in (1, -1):
        sums = lax.reduce_sum(lax.abs(x), (r,))
        c2 = c - (c > r)
        return lax.reduce_max(sums, (c2,)) if ord == 1 else lax.reduce_min(sums, (c2,))
    if ord in (np.inf, -np.inf):
        sums = lax.reduce_sum(lax.abs(x), (c,))
        r2 = r - (r > c)
        return lax.reduce_max(sums, (r2,)) if ord == np.inf else lax.reduce_min(sums, (r2,))
    if ord in (2, -2, "nuc"):
        nd = get_aval(x).ndim
        rest = tuple(i for i in range(nd) if i not in axis)
        xm = lax.transpose(x, rest + (r, c))
        s = lax_linalg.svd(xm, compute_uv=False)
        last = get_aval(s).ndim - 1
        if ord == 2:
            return lax.reduce_max(s, (last,))
        if ord == -2:
            return lax.reduce_min(s, (last,))
        return lax.reduce_sum(s, (last,))
    raise ValueError(f"linalg.norm: invalid norm order {ord!r} for matrices")
