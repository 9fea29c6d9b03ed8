"""Linear algebra primitives: cholesky, triangular_solve, eigh, svd, qr, and the dense
solvers inv, solve, slogdet that functrax.numpy.linalg builds on.

Every primitive works on the last two axes and accepts any leading batch dims, so its vmap
rule just moves the batch dim to the front. JVP rules are the standard matrix-calculus
formulas written with functrax operations (so Hessians through them work); ``solve`` and
``triangular_solve`` are linear in their right-hand side and have transpose rules.

Design note: JAX builds ``solve``/``inv``/``det`` from an LU primitive and a custom linear
solve; here they are primitives of their own with direct JVP rules (fewer, larger numpy
calls eagerly, and the same derivatives).

>>> import numpy as np
>>> from functrax.lax import linalg
>>> l = linalg.cholesky(np.array([[4.0, 2.0], [2.0, 3.0]]))
>>> np.allclose(l @ l.T, [[4.0, 2.0], [2.0, 3.0]])
True
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules
from . import elementwise as ew
from ._util import array_namespace, linalg_errors_raise, scipy_namespace
from .reductions import reduce_sum
from .structural import broadcast_in_dim, broadcasted_iota, convert_element_type, transpose

__all__ = ["cholesky", "triangular_solve", "eigh", "svd", "qr", "inv", "solve", "slogdet",
           "cholesky_p", "triangular_solve_p", "eigh_p", "svd_p", "qr_p", "inv_p", "solve_p",
           "slogdet_p", "tril", "triu"]


# ---------------------------------------------------------------------------------------------
# helpers (functrax operations, so the rules stay traceable)

def _check_matrix(name, x, square=True):
    if x.ndim < 2:
        raise TypeError(f"{name}: expected an array of rank >= 2 (a matrix or a batch of "
                        f"matrices), got {x.str_short()}")
    if square and x.shape[-1] != x.shape[-2]:
        raise TypeError(f"{name}: expected square matrices, got shape {x.shape}")
    if not dtypes.is_inexact(x.dtype):
        raise TypeError(f"{name}: requires floating-point matrices, got {x.dtype.name}; "
                        f"convert with astype(float)")


def _solution_aval(a, b):
    """The aval of x solving a x = b (or x a = b): the broadcast batch dims, b's matrix
    shape, the promoted dtype."""
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    dtype, _ = dtypes.promote_avals_dtype([a, b])
    return ShapedArray(lead + b.shape[-2:], dtype)


def _T(x):
    nd = get_aval(x).ndim
    return transpose(x, tuple(range(nd - 2)) + (nd - 1, nd - 2))


def _matmul(a, b):
    """Batched a @ b over matching leading dims (both of rank >= 2)."""
    from .dot import dot_general
    nd = get_aval(a).ndim
    batch = tuple(range(nd - 2))
    return dot_general(a, b, (((nd - 1,), (nd - 2,)), (batch, batch)))


def _tri_mask(shape, k, lower, dtype=np.bool_):
    nd = len(shape)
    rows = broadcasted_iota(np.int64, shape, nd - 2)
    cols = broadcasted_iota(np.int64, shape, nd - 1)
    return ew.ge(ew.add(rows, k), cols) if lower else ew.le(ew.add(rows, k), cols)


def tril(x, k=0):
    """The lower triangle (at and below diagonal k) of the last two axes."""
    aval = get_aval(x)
    return ew.select_n(_tri_mask(aval.shape, k, True), ew.mul(x, 0), x)


def triu(x, k=0):
    aval = get_aval(x)
    return ew.select_n(_tri_mask(aval.shape, -k, False), ew.mul(x, 0), x)


def _eye_like(x):
    aval = get_aval(x)
    n = aval.shape[-1]
    shape = aval.shape[:-2] + (n, n)
    nd = len(shape)
    eq = ew.eq(broadcasted_iota(np.int64, shape, nd - 2), broadcasted_iota(np.int64, shape, nd - 1))
    return convert_element_type(eq, aval.dtype)


def _diag_part(x):
    """The diagonal of the last two axes, shape (..., n)."""
    return reduce_sum(ew.mul(x, _eye_like(x)), (get_aval(x).ndim - 1,))


def _diag_matrix(d):
    """A (..., n, n) matrix with d (..., n) on the diagonal."""
    aval = get_aval(d)
    n = aval.shape[-1]
    shape = aval.shape + (n,)
    return ew.mul(broadcast_in_dim(d, shape, tuple(range(aval.ndim))),
                  _eye_from_shape(shape, aval.dtype))


def _eye_from_shape(shape, dtype):
    nd = len(shape)
    eq = ew.eq(broadcasted_iota(np.int64, shape, nd - 2), broadcasted_iota(np.int64, shape, nd - 1))
    return convert_element_type(eq, dtype)


def _scale_columns(m, d):
    """m (..., r, k) with column j multiplied by d (..., k)."""
    shape = get_aval(m).shape
    nd = len(shape)
    return ew.mul(m, broadcast_in_dim(d, shape, tuple(range(nd - 2)) + (nd - 1,)))


def _batch_front(vals, dims):
    """Move every batch dim to the front (broadcasting unbatched operands)."""
    size = batching.batch_size_of(vals, dims)
    return [batching.bdim_at_front(v, d, size) for v, d in zip(vals, dims)]


def _front_batcher(prim):
    def rule(vals, dims, **params):
        out = prim.bind(*_batch_front(vals, dims), **params)
        if prim.multiple_results:
            return out, [0] * len(out)
        return out, 0
    batching.batching_rules[prim] = rule


# ---------------------------------------------------------------------------------------------
# cholesky

def _cholesky_impl(x):
    xp = array_namespace(x)  # impls run in the array's namespace: CuPy keeps it on the GPU
    x = xp.asarray(x)
    try:
        with linalg_errors_raise(xp):
            return xp.linalg.cholesky(x)
    except np.linalg.LinAlgError:
        # JAX returns NaNs for matrices that are not positive definite instead of raising.
        return xp.full(x.shape, np.nan, x.dtype)


def _cholesky_abstract_eval(x):
    _check_matrix("cholesky", x)
    return ShapedArray(x.shape, x.dtype)


cholesky_p = Primitive("cholesky")
cholesky_p.def_impl(_cholesky_impl)
cholesky_p.def_abstract_eval(_cholesky_abstract_eval)


def cholesky(x, symmetrize_input=True):
    """The lower Cholesky factor L (x = L L^T); NaNs if x is not positive definite."""
    if symmetrize_input:
        x = ew.div(ew.add(x, _T(x)), 2.0)
    return cholesky_p.bind(x)


def _cholesky_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    l = cholesky_p.bind(x)
    if ad.is_zero(x_dot):
        return l, Zero.from_value(l)
    sym = ew.div(ew.add(x_dot, _T(x_dot)), 2.0)
    # L^{-1} sym L^{-T}, then keep the lower triangle with a halved diagonal.
    tmp = triangular_solve(l, sym, left_side=True, lower=True)
    tmp = _T(triangular_solve(l, _T(tmp), left_side=True, lower=True))
    phi = ew.sub(tril(tmp), ew.mul(_diag_matrix(_diag_part(tmp)), 0.5))
    return l, _matmul(l, phi)


ad.jvp_rules[cholesky_p] = _cholesky_jvp
_front_batcher(cholesky_p)


# ---------------------------------------------------------------------------------------------
# triangular_solve: op(a) x = b (left_side) or x op(a) = b

def _triangular_solve_impl(a, b, *, left_side, lower, transpose_a, unit_diagonal):
    xp = array_namespace(a, b)
    a, b = xp.asarray(a), xp.asarray(b)
    dtype = np.result_type(a.dtype, b.dtype)
    sla = scipy_namespace(xp, "linalg")  # cupyx.scipy.linalg on a GPU

    def solve2d(a2, b2):
        if left_side:
            return sla.solve_triangular(a2, b2, trans=1 if transpose_a else 0,
                                        lower=lower, unit_diagonal=unit_diagonal,
                                        check_finite=False)
        # x op(a) = b  <=>  op(a)^T x^T = b^T
        return sla.solve_triangular(a2, b2.T, trans=0 if transpose_a else 1,
                                    lower=lower, unit_diagonal=unit_diagonal,
                                    check_finite=False).T
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = xp.broadcast_to(a, lead + a.shape[-2:])
    b = xp.broadcast_to(b, lead + b.shape[-2:])
    if not lead:
        return solve2d(a, b).astype(dtype, copy=False)
    fa, fb = a.reshape((-1,) + a.shape[-2:]), b.reshape((-1,) + b.shape[-2:])
    out = xp.stack([solve2d(fa[i], fb[i]) for i in range(fa.shape[0])])
    return out.reshape(lead + out.shape[1:]).astype(dtype, copy=False)


def _triangular_solve_abstract_eval(a, b, *, left_side, lower, transpose_a, unit_diagonal):
    _check_matrix("triangular_solve", a)
    if b.ndim < 2:
        raise TypeError(f"triangular_solve: b must have rank >= 2, got {b.str_short()}")
    n = a.shape[-1]
    if (b.shape[-2] if left_side else b.shape[-1]) != n:
        raise TypeError(f"triangular_solve: a of shape {a.shape} does not match b of shape "
                        f"{b.shape} (left_side={left_side})")
    return _solution_aval(a, b)


triangular_solve_p = Primitive("triangular_solve")
triangular_solve_p.def_impl(_triangular_solve_impl)
triangular_solve_p.def_abstract_eval(_triangular_solve_abstract_eval)


def triangular_solve(a, b, left_side=False, lower=False, transpose_a=False,
                     conjugate_a=False, unit_diagonal=False):
    """Solve op(a) x = b (left_side=True) or x op(a) = b, with a triangular."""
    return triangular_solve_p.bind(a, b, left_side=bool(left_side), lower=bool(lower),
                                   transpose_a=bool(transpose_a),
                                   unit_diagonal=bool(unit_diagonal))


def _triangular_solve_jvp(primals, tangents, **params):
    (a, b), (a_dot, b_dot) = primals, tangents
    x = triangular_solve_p.bind(a, b, **params)
    t = Zero.from_value(x)
    if not ad.is_zero(b_dot):
        t = triangular_solve_p.bind(a, ad.instantiate_zeros(b_dot), **params)
    if not ad.is_zero(a_dot):
        # d x = -op(a)^{-1} op(a_dot) x (left) or -x op(a_dot) op(a)^{-1} (right)
        mask = _tri_mask(get_aval(a_dot).shape, 0, params["lower"])
        a_dot = ew.select_n(mask, ew.mul(a_dot, 0), a_dot)
        if params["unit_diagonal"]:
            a_dot = ew.sub(a_dot, ew.mul(a_dot, _eye_like(a_dot)))
        op_a_dot = _T(a_dot) if params["transpose_a"] else a_dot
        rhs = _matmul(op_a_dot, x) if params["left_side"] else _matmul(x, op_a_dot)
        t = ad.add_tangents(t, ew.neg(triangular_solve_p.bind(a, rhs, **params)))
    return x, t


ad.jvp_rules[triangular_solve_p] = _triangular_solve_jvp


def _triangular_solve_transpose(ct, a, b, *, left_side, lower, transpose_a, unit_diagonal):
    if is_undefined_primal(a):
        raise ValueError("triangular_solve: not linear in the matrix a")
    if ad.is_zero(ct):
        return [None, Zero(ad.tangent_aval(b.aval))]
    ct_b = triangular_solve_p.bind(a, ct, left_side=left_side, lower=lower,
                                   transpose_a=not transpose_a, unit_diagonal=unit_diagonal)
    return [None, _sum_to_shape(ct_b, b.aval.shape)]


def _sum_to_shape(x, shape):
    from ..interpreters.transpose import unbroadcast
    return unbroadcast(x, ShapedArray(shape, get_aval(x).dtype))


transpose_rules[triangular_solve_p] = _triangular_solve_transpose
_front_batcher(triangular_solve_p)


# ---------------------------------------------------------------------------------------------
# eigh: symmetric eigendecomposition, returns (eigenvectors v, eigenvalues w) as JAX's lax

def _eigh_impl(x, *, lower):
    xp = array_namespace(x)
    w, v = xp.linalg.eigh(xp.asarray(x), UPLO="L" if lower else "U")
    return [v, w]


def _eigh_abstract_eval(x, *, lower):
    _check_matrix("eigh", x)
    return [ShapedArray(x.shape, x.dtype), ShapedArray(x.shape[:-1], x.dtype)]


eigh_p = Primitive("eigh")
eigh_p.multiple_results = True
eigh_p.def_impl(_eigh_impl)
eigh_p.def_abstract_eval(_eigh_abstract_eval)


def eigh(x, lower=True, symmetrize_input=True):
    """(v, w): eigenvectors (columns) and ascending eigenvalues of a symmetric matrix."""
    if symmetrize_input:
        x = ew.div(ew.add(x, _T(x)), 2.0)
    v, w = eigh_p.bind(x, lower=bool(lower))
    return v, w


def _eigh_jvp(primals, tangents, *, lower):
    (x,), (x_dot,) = primals, tangents
    v, w = eigh_p.bind(x, lower=lower)
    if ad.is_zero(x_dot):
        return [v, w], [Zero.from_value(v), Zero.from_value(w)]
    sym = ew.div(ew.add(x_dot, _T(x_dot)), 2.0)
    vt_xdot_v = _matmul(_T(v), _matmul(sym, v))
    w_dot = _diag_part(vt_xdot_v)
    eye = _eye_like(x)
    aval = get_aval(w)
    wrow = broadcast_in_dim(w, aval.shape + (aval.shape[-1],), tuple(range(aval.ndim - 1)) +
                            (aval.ndim,))  # wrow[..., i, j] = w_j
    diff = ew.sub(wrow, _T(wrow))  # w_j - w_i
    f = ew.sub(ew.div(1.0, ew.add(diff, eye)), eye)
    v_dot = _matmul(v, ew.mul(f, vt_xdot_v))
    return [v, w], [v_dot, w_dot]


ad.jvp_rules[eigh_p] = _eigh_jvp
_front_batcher(eigh_p)


# ---------------------------------------------------------------------------------------------
# svd (reduced): returns (u, s, vt)

def _svd_impl(x, *, full_matrices, compute_uv):
    xp = array_namespace(x)
    x = xp.asarray(x)
    if not compute_uv:
        return [xp.linalg.svd(x, compute_uv=False)]
    u, s, vt = xp.linalg.svd(x, full_matrices=full_matrices)
    return [u, s, vt]


def _svd_abstract_eval(x, *, full_matrices, compute_uv):
    _check_matrix("svd", x, square=False)
    m, n = x.shape[-2:]
    k = min(m, n)
    s = ShapedArray(x.shape[:-2] + (k,), x.dtype)
    if not compute_uv:
        return [s]
    ucols, vrows = (m, n) if full_matrices else (k, k)
    return [ShapedArray(x.shape[:-2] + (m, ucols), x.dtype), s,
            ShapedArray(x.shape[:-2] + (vrows, n), x.dtype)]


svd_p = Primitive("svd")
svd_p.multiple_results = True
svd_p.def_impl(_svd_impl)
svd_p.def_abstract_eval(_svd_abstract_eval)


def svd(x, full_matrices=True, compute_uv=True):
    """(u, s, vt) with x = u diag(s) vt, or s alone with compute_uv=False."""
    out = svd_p.bind(x, full_matrices=bool(full_matrices), compute_uv=bool(compute_uv))
    return tuple(out) if compute_uv else out[0]


def _svd_jvp(primals, tangents, *, full_matrices, compute_uv):
    (x,), (x_dot,) = primals, tangents
    m, n = get_aval(x).shape[-2:]
    if full_matrices and compute_uv and m != n:
        raise ValueError(
            "svd: derivatives with full_matrices=True of a non-square matrix are not unique "
            "(the extra columns are arbitrary); use full_matrices=False")
    u, s, vt = svd_p.bind(x, full_matrices=False, compute_uv=True)
    out = svd_p.bind(x, full_matrices=full_matrices, compute_uv=compute_uv)
    if ad.is_zero(x_dot):
        return out, [Zero.from_value(o) for o in out]
    v = _T(vt)
    dp = _matmul(_T(u), _matmul(x_dot, v))
    s_dot = _diag_part(dp)
    if not compute_uv:
        return out, [s_dot]
    aval = get_aval(s)
    k = aval.shape[-1]
    srow = broadcast_in_dim(s, aval.shape + (k,), tuple(range(aval.ndim - 1)) + (aval.ndim,))
    scol = _T(srow)  # scol[i, j] = s_i, srow[i, j] = s_j
    eye = _eye_from_shape(aval.shape + (k,), aval.dtype)
    diffs = ew.mul(ew.add(srow, scol), ew.sub(srow, scol))  # s_j^2 - s_i^2
    f = ew.sub(ew.div(1.0, ew.add(diffs, eye)), eye)
    dss = ew.mul(dp, srow)
    sds = ew.mul(scol, dp)
    u_dot = _matmul(u, ew.mul(f, ew.add(dss, _T(dss))))
    v_dot = _matmul(v, ew.mul(f, ew.add(sds, _T(sds))))
    if m > n:
        proj = ew.sub(x_dot, _matmul(u, _matmul(_T(u), x_dot)))
        u_dot = ew.add(u_dot, _scale_columns(_matmul(proj, v), ew.div(1.0, s)))
    if n > m:
        proj = ew.sub(_T(x_dot), _matmul(v, _matmul(_T(v), _T(x_dot))))
        v_dot = ew.add(v_dot, _scale_columns(_matmul(proj, u), ew.div(1.0, s)))
    return out, [u_dot, s_dot, _T(v_dot)]


ad.jvp_rules[svd_p] = _svd_jvp
_front_batcher(svd_p)


# ---------------------------------------------------------------------------------------------
# qr

def _qr_impl(x, *, full_matrices):
    xp = array_namespace(x)
    q, r = xp.linalg.qr(xp.asarray(x), mode="complete" if full_matrices else "reduced")
    return [q, r]


def _qr_abstract_eval(x, *, full_matrices):
    _check_matrix("qr", x, square=False)
    m, n = x.shape[-2:]
    k = m if full_matrices else min(m, n)
    return [ShapedArray(x.shape[:-2] + (m, k), x.dtype),
            ShapedArray(x.shape[:-2] + (k, n), x.dtype)]


qr_p = Primitive("qr")
qr_p.multiple_results = True
qr_p.def_impl(_qr_impl)
qr_p.def_abstract_eval(_qr_abstract_eval)


def qr(x, full_matrices=True):
    """(q, r) with x = q r, q orthonormal columns, r upper triangular."""
    q, r = qr_p.bind(x, full_matrices=bool(full_matrices))
    return q, r


def _qr_jvp(primals, tangents, *, full_matrices):
    (x,), (x_dot,) = primals, tangents
    q, r = qr_p.bind(x, full_matrices=full_matrices)
    if ad.is_zero(x_dot):
        return [q, r], [Zero.from_value(q), Zero.from_value(r)]
    m, n = get_aval(x).shape[-2:]
    if m < n or (full_matrices and m > n):
        raise ValueError(
            f"qr: derivatives are defined here for tall or square inputs with the reduced "
            f"factorization (full_matrices=False); got shape {(m, n)} with "
            f"full_matrices={full_matrices}")
    # dx r^{-1}, then split q^T dx r^{-1} into its skew part (rotation of q) and the rest.
    dx_rinv = triangular_solve(r, x_dot, left_side=False, lower=False)
    qt_dx_rinv = _matmul(_T(q), dx_rinv)
    lower = tril(qt_dx_rinv, -1)
    skew = ew.sub(lower, _T(lower))
    q_dot = ew.add(_matmul(q, ew.sub(skew, qt_dx_rinv)), dx_rinv)
    r_dot = _matmul(ew.sub(qt_dx_rinv, skew), r)
    return [q, r], [q_dot, r_dot]


ad.jvp_rules[qr_p] = _qr_jvp
_front_batcher(qr_p)


# ---------------------------------------------------------------------------------------------
# inv, solve, slogdet

inv_p = Primitive("inv")
inv_p.def_impl(lambda x: array_namespace(x).linalg.inv(array_namespace(x).asarray(x)))


def _inv_abstract_eval(x):
    _check_matrix("inv", x)
    return ShapedArray(x.shape, x.dtype)


inv_p.def_abstract_eval(_inv_abstract_eval)


def inv(x):
    """The inverse of square matrices (batched over leading dims)."""
    return inv_p.bind(x)


def _inv_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    xi = inv_p.bind(x)
    if ad.is_zero(x_dot):
        return xi, Zero.from_value(xi)
    return xi, ew.neg(_matmul(xi, _matmul(x_dot, xi)))


ad.jvp_rules[inv_p] = _inv_jvp
_front_batcher(inv_p)


def _solve_impl(a, b):
    xp = array_namespace(a, b)
    return xp.linalg.solve(xp.asarray(a), xp.asarray(b))


def _solve_abstract_eval(a, b):
    _check_matrix("solve", a)
    if b.ndim < 2 or b.shape[-2] != a.shape[-1]:
        raise TypeError(f"solve: a of shape {a.shape} and b of shape {b.shape} do not match "
                        f"(b must be (..., {a.shape[-1]}, k))")
    return _solution_aval(a, b)


solve_p = Primitive("solve")
solve_p.def_impl(_solve_impl)
solve_p.def_abstract_eval(_solve_abstract_eval)


def solve(a, b):
    """x with a x = b, for b of shape (..., n, k)."""
    return solve_p.bind(a, b)


def _solve_jvp(primals, tangents):
    (a, b), (a_dot, b_dot) = primals, tangents
    x = solve_p.bind(a, b)
    rhs = Zero.from_value(x)
    if not ad.is_zero(b_dot):
        rhs = ad.fit_to_aval(b_dot, get_aval(x))
    if not ad.is_zero(a_dot):
        rhs = ad.add_tangents(rhs, ew.neg(_matmul(a_dot, x)))
    if ad.is_zero(rhs):
        return x, rhs
    return x, solve_p.bind(a, rhs)


ad.jvp_rules[solve_p] = _solve_jvp


def _solve_transpose(ct, a, b):
    if is_undefined_primal(a):
        raise ValueError("solve: not linear in the matrix a")
    if ad.is_zero(ct):
        return [None, Zero(ad.tangent_aval(b.aval))]
    return [None, _sum_to_shape(solve_p.bind(_T(a), ct), b.aval.shape)]


transpose_rules[solve_p] = _solve_transpose
_front_batcher(solve_p)


def _slogdet_impl(x):
    xp = array_namespace(x)
    sign, logabs = xp.linalg.slogdet(xp.asarray(x))
    return [xp.asarray(sign), xp.asarray(logabs)]


def _slogdet_abstract_eval(x):
    _check_matrix("slogdet", x)
    return [ShapedArray(x.shape[:-2], x.dtype), ShapedArray(x.shape[:-2], x.dtype)]


slogdet_p = Primitive("slogdet")
slogdet_p.multiple_results = True
slogdet_p.def_impl(_slogdet_impl)
slogdet_p.def_abstract_eval(_slogdet_abstract_eval)


def slogdet(x):
    """(sign, log|det|) of square matrices."""
    sign, logabs = slogdet_p.bind(x)
    return sign, logabs


def _slogdet_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    sign, logabs = slogdet_p.bind(x)
    if ad.is_zero(x_dot):
        return [sign, logabs], [Zero.from_value(sign), Zero.from_value(logabs)]
    # d log|det x| = trace(x^{-1} dx)
    return [sign, logabs], [Zero.from_value(sign), _diag_sum(solve_p.bind(x, x_dot))]


def _diag_sum(m):
    return reduce_sum(_diag_part(m), (get_aval(m).ndim - 2,))


ad.jvp_rules[slogdet_p] = _slogdet_jvp
_front_batcher(slogdet_p)
