"""functrax.numpy.linalg and lax.linalg: values against numpy, derivatives against finite
differences (order 2, both modes), vmap against loops, typecheck of transformed jaxprs."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax.lax import linalg as lax_linalg
from functrax.test_util import check_grads

rng = np.random.default_rng(0)


def _square(n, seed):
    return np.random.default_rng(seed).standard_normal((n, n)) + n * np.eye(n)


def _spd(n, seed):
    a = np.random.default_rng(seed).standard_normal((n, n))
    return a @ a.T + n * np.eye(n)


def _sym(n, seed):
    a = np.random.default_rng(seed).standard_normal((n, n))
    return a + a.T


@given(st.integers(1, 5), st.integers(0, 1000))
def test_values_against_numpy(backend, n, seed):
    a, s = _square(n, seed), _spd(n, seed)
    b = np.random.default_rng(seed + 1).standard_normal((n, 2))
    la = fnp.linalg
    np.testing.assert_allclose(backend(la.inv)(a), np.linalg.inv(a), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(backend(la.solve)(a, b), np.linalg.solve(a, b), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(backend(la.solve)(a, b[:, 0]), np.linalg.solve(a, b[:, 0]),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(backend(la.det)(a), np.linalg.det(a), rtol=1e-9)
    sign, logabs = backend(la.slogdet)(a)
    np.testing.assert_allclose([sign, logabs], np.linalg.slogdet(a), rtol=1e-9)
    np.testing.assert_allclose(backend(la.cholesky)(s), np.linalg.cholesky(s), rtol=1e-9)
    w, v = backend(la.eigh)(_sym(n, seed))
    np.testing.assert_allclose(w, np.linalg.eigvalsh(_sym(n, seed)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(v @ np.diag(w) @ v.T, _sym(n, seed), atol=1e-9)


@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 100))
def test_svd_qr_norm_pinv(backend, m, n, seed):
    x = np.random.default_rng(seed).standard_normal((m, n))
    u, s, vt = backend(lambda x: fnp.linalg.svd(x, full_matrices=False))(x)
    np.testing.assert_allclose(s, np.linalg.svd(x, compute_uv=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose((u * s) @ vt, x, atol=1e-9)
    q, r = backend(fnp.linalg.qr)(x)
    np.testing.assert_allclose(q @ r, x, atol=1e-9)
    np.testing.assert_allclose(np.triu(r), r)
    for ord_ in (None, "fro", 1, -1, 2, -2, np.inf, -np.inf, "nuc"):
        np.testing.assert_allclose(backend(lambda x: fnp.linalg.norm(x, ord_))(x),
                                   np.linalg.norm(x, ord_), rtol=1e-9, atol=1e-12)
    for ord_ in (None, 1, 2, 3, np.inf, -np.inf, 0):
        np.testing.assert_allclose(backend(lambda v: fnp.linalg.norm(v, ord_))(x[0]),
                                   np.linalg.norm(x[0], ord_), rtol=1e-9)
    np.testing.assert_allclose(backend(lambda x: fnp.linalg.norm(x, axis=1, keepdims=True))(x),
                               np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(backend(fnp.linalg.pinv)(x), np.linalg.pinv(x), atol=1e-8)


def test_matrix_power(backend):
    a = _square(3, 1)
    for k in (0, 1, 2, 5, -2):
        np.testing.assert_allclose(backend(lambda a: fnp.linalg.matrix_power(a, k))(a),
                                   np.linalg.matrix_power(a, k), rtol=1e-9)


GRAD_CASES = [
    ("inv", fnp.linalg.inv, lambda: _square(3, 2)),
    ("det", fnp.linalg.det, lambda: _square(3, 3)),
    ("slogdet", lambda x: fnp.linalg.slogdet(x)[1], lambda: _square(3, 4)),
    ("solve", lambda x: fnp.linalg.solve(x, np.arange(6.0).reshape(3, 2)), lambda: _square(3, 5)),
    ("cholesky", lambda x: fnp.linalg.cholesky(x + x.T + 6 * np.eye(3)), lambda: _square(3, 6)),
    ("eigh values", lambda x: fnp.linalg.eigh(x)[0], lambda: _sym(3, 7)),
    ("eigh vectors", lambda x: fnp.abs(fnp.linalg.eigh(x)[1]), lambda: _sym(3, 8)),
    ("svd tall", lambda x: [fnp.abs(t) for t in fnp.linalg.svd(x, full_matrices=False)],
     lambda: rng.standard_normal((4, 3))),
    ("svd wide", lambda x: [fnp.abs(t) for t in fnp.linalg.svd(x, full_matrices=False)],
     lambda: rng.standard_normal((2, 4))),
    ("qr", lambda x: list(fnp.linalg.qr(x)), lambda: rng.standard_normal((4, 3))),
    ("norm 2", lambda x: fnp.linalg.norm(x, 2), lambda: rng.standard_normal((3, 3))),
    ("pinv", fnp.linalg.pinv, lambda: rng.standard_normal((4, 2))),
    ("triangular_solve", lambda x: lax_linalg.triangular_solve(
        lax_linalg.tril(x) + 3 * np.eye(3), np.arange(6.0).reshape(3, 2), left_side=True,
        lower=True), lambda: rng.standard_normal((3, 3))),
    ("triangular_solve right transposed", lambda x: lax_linalg.triangular_solve(
        lax_linalg.triu(x) + 3 * np.eye(3), np.arange(6.0).reshape(2, 3), left_side=False,
        lower=False, transpose_a=True), lambda: rng.standard_normal((3, 3))),
]


@pytest.mark.parametrize("name,f,make", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_derivatives_against_finite_differences(name, f, make, backend):
    check_grads(backend.jit(f), (make(),), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("name,f,make", GRAD_CASES[:6], ids=[c[0] for c in GRAD_CASES[:6]])
def test_vmap_matches_loop(name, f, make, backend):
    xs = np.stack([make() + 0.01 * i for i in range(3)])
    got = backend(ft.vmap(f))(xs)
    expected = np.stack([np.asarray(f(x)) for x in xs])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    if not backend.is_jit:  # the traced IR is the same for every back end: check it once
        ft.typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f))(xs))
        ft.typecheck_jaxpr(ft.make_jaxpr(ft.grad(lambda x: fnp.sum(f(x))))(xs[0]))


def test_hessian_of_logdet_is_analytic(backend):
    a = _spd(3, 9)
    h = backend(ft.hessian(lambda x: fnp.linalg.slogdet(x)[1]))(a)
    ai = np.linalg.inv(a)
    np.testing.assert_allclose(h, -np.einsum("li,jk->ijkl", ai, ai), rtol=1e-8, atol=1e-10)


def test_errors_name_the_function_and_shapes():
    with pytest.raises(TypeError, match=r"inv: expected square matrices, got shape \(2, 3\)"):
        fnp.linalg.inv(np.ones((2, 3)))
    with pytest.raises(TypeError, match="solve: a of shape") as err:
        ft.make_jaxpr(lambda a, b: lax_linalg.solve(a, b))(np.ones((3, 3)), np.ones((2, 1)))
    assert "test_linalg.py" in str(err.value)
    with pytest.raises(ValueError, match="rank >= 2"):
        fnp.linalg.det(np.ones(3))
