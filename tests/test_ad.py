"""Automatic differentiation through the public API: forward against reverse, Jacobians,
Hessians against analytic ones, higher derivatives, pytrees, chunking, Python control flow,
linearize, value_and_grad, and type checks on every linearized and transposed jaxpr."""
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import lax
from functrax.test_util import check_grads

RNG = np.random.default_rng(0)


def _vdot(a, b):
    la = ft.tree_util.tree_leaves(a)
    lb = ft.tree_util.tree_leaves(b)
    return sum(float(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64)))
               for x, y in zip(la, lb))


def _randn_like(tree, rng):
    return ft.tree_util.tree_map(lambda x: rng.standard_normal(np.shape(x)), tree)


# Composite functions over the primitives that exist: elementwise, reductions, structural,
# slicing, padding, indexing, dot, cumulative, sorting. Inputs are shape (3, 4) floats > 0.
COMPOSITES = {
    "sin_cos_product": lambda x: fnp.sin(x) * fnp.cos(2.0 * x),
    "tanh_square_plus_exp": lambda x: fnp.tanh(x) ** 2 + fnp.exp(-x),
    "log1p_sqrt": lambda x: fnp.log1p(x * x) + fnp.sqrt(x + 1.0),
    "division_and_power": lambda x: (x ** 2.5) / (1.0 + x) - 1.0 / x,
    "logistic_expm1": lambda x: lax.logistic(x) * fnp.expm1(0.3 * x),
    "reductions": lambda x: fnp.sum(x ** 2, axis=0) * fnp.max(x, axis=0) + fnp.mean(x),
    "prod_and_min": lambda x: fnp.prod(x, axis=1) + fnp.min(x, axis=1),
    "structural": lambda x: fnp.transpose(fnp.reshape(x * fnp.sin(x), (4, 3))) + x,
    "broadcasting": lambda x: x * fnp.sum(x, axis=1, keepdims=True) - x[0],
    "slicing_concat": lambda x: fnp.concatenate([x[:, 1:] * 2.0, x[::-1, :1] ** 2], axis=1),
    "pad": lambda x: lax.pad(fnp.sin(x), 0.5, ((1, 0, 0), (0, 1, 1))),
    "where_maximum": lambda x: fnp.where(x > 1.0, x ** 2, fnp.sin(x)) + fnp.maximum(x, 1.2),
    "dot": lambda x: lax.dot(fnp.tanh(x), x.T) + fnp.sum(x),
    "matmul_chain": lambda x: fnp.sum(fnp.tanh(x @ x.T) @ x, axis=0),
    "cumsum_stack": lambda x: fnp.stack([fnp.cumsum(x, axis=1), fnp.cos(x)]),
    "sort": lambda x: fnp.sort(fnp.sin(3.0 * x), axis=1) * x,
}

X = RNG.uniform(0.5, 1.5, size=(3, 4))


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_jvp_against_vjp(name, backend):
    f = COMPOSITES[name]
    rng = np.random.default_rng(1)
    v = rng.standard_normal(X.shape)
    y, jv = backend(lambda x, t: ft.jvp(f, (x,), (t,)))(X, v)
    u = rng.standard_normal(np.shape(y))
    y2, (ju,) = backend(lambda x, ct: (f(x), ft.vjp(f, x)[1](ct)))(X, u)
    np.testing.assert_allclose(y, y2)
    np.testing.assert_allclose(np.vdot(u, jv), np.vdot(ju, v), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composites_check_grads_and_jacobians(name, backend):
    f = COMPOSITES[name]
    x = X[:2, :3] if name not in ("structural",) else X
    check_grads(backend.jit(f), (x,), order=2, modes=("fwd", "rev"))
    np.testing.assert_allclose(backend(ft.jacfwd(f))(x), backend(ft.jacrev(f))(x), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_linearized_and_transposed_jaxprs_typecheck(name):
    f = COMPOSITES[name]
    y, f_jvp = ft.linearize(f, X)
    ft.typecheck_jaxpr(f_jvp.jaxpr)
    _, vjp_fn = ft.vjp(f, X)
    ct = np.ones(np.shape(y))
    transposed = ft.make_jaxpr(vjp_fn)(ct)
    ft.typecheck_jaxpr(transposed)
    np.testing.assert_allclose(ft.eval_jaxpr(transposed.jaxpr, transposed.consts, ct)[0],
                               vjp_fn(ct)[0], rtol=1e-12)
    v = np.cos(X)
    np.testing.assert_allclose(f_jvp(v), ft.jvp(f, (X,), (v,))[1], rtol=1e-12, atol=1e-14)
    for fn in (ft.grad(lambda x: fnp.sum(f(x))), lambda x: ft.jvp(f, (x,), (x,))[1],
               ft.jacrev(f)):
        ft.typecheck_jaxpr(ft.make_jaxpr(fn)(X))
    ft.typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f))(np.stack([X, X])))


def test_linearize_is_linear_and_matches_jvp(backend):
    f = COMPOSITES["tanh_square_plus_exp"]
    y, f_jvp = ft.linearize(backend.jit(f), X)
    np.testing.assert_allclose(ft.device_get(y), f(X), rtol=1e-12)
    a, b = np.sin(X), np.cos(X)
    lin = backend(f_jvp)
    np.testing.assert_allclose(lin(2.0 * a + b), 2.0 * lin(a) + lin(b), rtol=1e-12)
    np.testing.assert_allclose(lin(a), ft.jvp(f, (X,), (a,))[1], rtol=1e-12)
    lin_closed = f_jvp.jaxpr
    np.testing.assert_allclose(ft.eval_jaxpr(lin_closed.jaxpr, lin_closed.consts, a)[0],
                               f_jvp(a))
    # linearize of a pytree function
    g = lambda p: {"s": fnp.sum(p["a"] * p["b"][0])}
    p = {"a": np.ones(3), "b": [np.arange(3.0)]}
    _, g_jvp = ft.linearize(g, p)
    t = g_jvp({"a": np.ones(3), "b": [np.zeros(3)]})
    np.testing.assert_allclose(t["s"], 3.0)
    ft.typecheck_jaxpr(g_jvp.jaxpr)


# ---------------------------------------------------------------------------------------------
# Jacobians


def test_jacfwd_equals_jacrev_on_pytrees(backend):
    def f(p, x):
        return {"u": fnp.sin(p["w"]) * x, "v": (fnp.sum(p["b"] ** 2), p["w"][:2] * p["b"])}

    p = {"w": np.array([0.1, 0.2, 0.3]), "b": np.array([1.0, -1.0])}
    x = np.array([0.5, 1.5, 2.5])
    for argnums in (0, 1, (0, 1)):
        jf = backend(ft.jacfwd(f, argnums=argnums))(p, x)
        jr = backend(ft.jacrev(f, argnums=argnums))(p, x)
        lf, tf = ft.tree_util.tree_flatten(jf)
        lr, tr = ft.tree_util.tree_flatten(jr)
        assert tf == tr
        for a, b in zip(lf, lr):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    j = backend(ft.jacrev(f, argnums=(0, 1)))(p, x)
    assert j["u"][0]["w"].shape == (3, 3) and j["u"][1].shape == (3, 3)
    np.testing.assert_allclose(j["v"][1][0]["b"], np.diag(p["w"][:2]))


def test_jacobians_with_aux(backend):
    def f(x):
        y = fnp.sin(x) * x[0]
        return y, {"norm": fnp.sum(y ** 2)}

    x = np.array([0.3, 0.7, 1.1])
    jf, aux_f = backend(ft.jacfwd(f, has_aux=True))(x)
    jr, aux_r = backend(ft.jacrev(f, has_aux=True))(x)
    np.testing.assert_allclose(jf, jr, rtol=1e-12)
    expected = np.diag(np.cos(x) * x[0])
    expected[:, 0] += np.sin(x)
    np.testing.assert_allclose(jf, expected, rtol=1e-12)
    np.testing.assert_allclose(aux_f["norm"], np.sum((np.sin(x) * x[0]) ** 2))
    np.testing.assert_allclose(aux_r["norm"], aux_f["norm"])


@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_chunk_size_gives_identical_jacobians(backend, chunk, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((4, 5))
    x = rng.standard_normal(5)
    f = lambda v: fnp.tanh(lax.dot(a, v)) * fnp.sum(v ** 2)
    s = lambda v: fnp.sum(f(v) ** 2) + fnp.sum(fnp.sin(v))
    # Chunking regroups the same products: identical eagerly, equal to rounding under jit
    # (where fusion may reassociate).
    check = np.testing.assert_array_equal if not backend.is_jit else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14))
    check(backend(ft.jacfwd(f, chunk_size=chunk))(x), ft.jacfwd(f)(x))
    np.testing.assert_allclose(backend(ft.jacrev(f, chunk_size=chunk))(x), ft.jacrev(f)(x),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend(ft.hessian(s, chunk_size=chunk))(x), ft.hessian(s)(x),
                               rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Hessians against analytic ones


@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_hessian_of_quadratic_form(backend, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    x = rng.standard_normal(n)
    f = lambda v: fnp.sum(fnp.reshape(v, (n, 1)) * a * fnp.reshape(v, (1, n)))
    f_dot = lambda v: lax.dot(v, lax.dot(a, v))
    np.testing.assert_allclose(backend(ft.grad(f))(x), (a + a.T) @ x, rtol=1e-10, atol=1e-12)
    for fn in (f, f_dot):
        np.testing.assert_allclose(backend(ft.hessian(fn))(x), a + a.T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(backend(ft.jacrev(ft.jacfwd(fn)))(x), a + a.T, rtol=1e-10,
                                   atol=1e-12)


def _rosenbrock(x):
    return fnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _rosenbrock_hessian(x):
    n = len(x)
    h = np.zeros((n, n))
    for i in range(n - 1):
        h[i, i] += 1200.0 * x[i] ** 2 - 400.0 * x[i + 1] + 2.0
        h[i + 1, i + 1] += 200.0
        h[i, i + 1] -= 400.0 * x[i]
        h[i + 1, i] -= 400.0 * x[i]
    return h


@given(st.lists(st.floats(-2, 2), min_size=2, max_size=6))
def test_hessian_of_rosenbrock(backend, xs):
    x = np.array(xs)
    np.testing.assert_allclose(backend(ft.hessian(_rosenbrock))(x), _rosenbrock_hessian(x), rtol=1e-10,
                               atol=1e-8)


def _logsumexp(x):
    m = fnp.max(x)
    return m + fnp.log(fnp.sum(fnp.exp(x - m)))


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=6))
def test_hessian_of_logsumexp(backend, xs):
    x = np.array(xs)
    p = np.exp(x - x.max())
    p /= p.sum()
    np.testing.assert_allclose(backend(ft.grad(_logsumexp))(x), p, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend(ft.hessian(_logsumexp))(x), np.diag(p) - np.outer(p, p),
                               rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Higher derivatives


def _nth(f, n):
    for _ in range(n):
        f = ft.grad(f)
    return f


def _tanh4(x):
    t = np.tanh(x)
    return 8.0 * t * (1.0 - t ** 2) * (2.0 - 3.0 * t ** 2)


@given(st.floats(-2, 2))
def test_fourth_derivatives(backend, x):
    np.testing.assert_allclose(backend(_nth(fnp.sin, 4))(x), np.sin(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend(_nth(fnp.exp, 4))(x), np.exp(x), rtol=1e-10)
    np.testing.assert_allclose(backend(_nth(fnp.tanh, 4))(x), _tanh4(x), rtol=1e-9, atol=1e-12)
    # the same by forward mode and by mixed modes
    d4 = backend(ft.jacfwd(ft.jacfwd(ft.jacrev(ft.grad(fnp.tanh)))))(x)
    np.testing.assert_allclose(d4, _tanh4(x), rtol=1e-9, atol=1e-12)


def test_third_derivative_jaxprs_typecheck():
    f3 = _nth(fnp.tanh, 3)
    ft.typecheck_jaxpr(ft.make_jaxpr(f3)(0.3))
    _, lin = ft.linearize(_nth(fnp.sin, 2), 0.3)
    ft.typecheck_jaxpr(lin.jaxpr)


def test_perturbation_confusion(backend):
    b = backend
    assert float(b(ft.grad(lambda x: ft.grad(lambda y: x * y)(1.0)))(2.0)) == 1.0
    # d/dx [x * d/dy (x + y)] = 1: the inner derivative must not see the outer x.
    assert float(b(ft.grad(lambda x: x * ft.grad(lambda y: x + y)(1.0)))(3.0)) == 1.0
    f = lambda x: ft.jvp(lambda y: x * y ** 2, (2.0,), (1.0,))[1]  # 4x
    assert float(b(ft.grad(f))(5.0)) == 4.0
    # the inner function jitted too: the tags must survive a pjit boundary
    assert float(ft.grad(lambda x: b.jit(ft.grad(lambda y: x * y))(1.0))(2.0)) == 1.0
    hvp = lambda x, t: ft.jvp(ft.grad(lambda x: ft.grad(lambda y: x * y * y)(x)), (x,), (t,))[1]
    assert float(b(hvp)(1.5, 1.0)) == 4.0


# ---------------------------------------------------------------------------------------------
# Pytrees of parameters

Layer = namedtuple("Layer", ["w", "b"])


def _mlp_loss(params, x, y):
    h = x
    for layer in params["layers"]:
        h = fnp.tanh(lax.dot(h, layer.w) + layer.b)
    pred = fnp.sum(h * params["head"]["scale"][0], axis=1)
    return fnp.mean((pred - y) ** 2)


def _mlp_params(rng):
    return {"layers": [Layer(rng.standard_normal((3, 4)) * 0.5, np.zeros(4)),
                       Layer(rng.standard_normal((4, 2)) * 0.5, rng.standard_normal(2) * 0.1)],
            "head": {"scale": [np.array([1.0, -0.5])]}}


def test_gradients_of_parameter_pytrees(backend):
    rng = np.random.default_rng(3)
    params = _mlp_params(rng)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal(5)
    g = backend(ft.grad(_mlp_loss))(params, x, y)
    assert ft.tree_util.tree_structure(g) == ft.tree_util.tree_structure(params)
    assert isinstance(g["layers"][0], Layer)
    # against central differences on every leaf, along random directions
    leaves, tree = ft.tree_util.tree_flatten(params)
    for i, leaf in enumerate(leaves):
        d = rng.standard_normal(leaf.shape)
        plus = list(leaves)
        minus = list(leaves)
        plus[i] = leaf + 1e-6 * d
        minus[i] = leaf - 1e-6 * d
        fd = (_mlp_loss(ft.tree_util.tree_unflatten(tree, plus), x, y)
              - _mlp_loss(ft.tree_util.tree_unflatten(tree, minus), x, y)) / 2e-6
        gi = ft.tree_util.tree_leaves(g)[i]
        np.testing.assert_allclose(np.vdot(gi, d), fd, rtol=1e-6, atol=1e-9)
    check_grads(backend.jit(lambda p: _mlp_loss(p, x, y)), (params,), order=2,
                modes=("fwd", "rev"))


def test_per_example_gradients_match_a_loop(backend):
    rng = np.random.default_rng(4)
    params = _mlp_params(rng)
    xs, ys = rng.standard_normal((6, 1, 3)), rng.standard_normal((6, 1))
    per_ex = backend(ft.vmap(ft.grad(_mlp_loss), in_axes=(None, 0, 0)))(params, xs, ys)
    for i in range(6):
        gi = ft.grad(_mlp_loss)(params, xs[i], ys[i])
        for a, b in zip(ft.tree_util.tree_leaves(per_ex), ft.tree_util.tree_leaves(gi)):
            np.testing.assert_allclose(a[i], b, rtol=1e-12, atol=1e-14)


def test_value_and_grad_has_aux_and_argnums(backend):
    def loss(w, b, x):
        pred = fnp.sum(w * x) + b
        return pred ** 2, {"pred": pred, "n": 3}

    w, b, x = np.array([1.0, 2.0]), 0.5, np.array([3.0, -1.0])
    (val, aux), (gw, gb) = backend(ft.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        w, b, x)
    pred = w @ x + b
    np.testing.assert_allclose(val, pred ** 2)
    assert int(aux["n"]) == 3  # a Python int eagerly, a weak-typed int array out of jit
    np.testing.assert_allclose(aux["pred"], pred)
    np.testing.assert_allclose(gw, 2 * pred * x)
    np.testing.assert_allclose(gb, 2 * pred)
    (gx,), aux2 = backend(ft.grad(loss, argnums=(2,), has_aux=True))(w, b, x)
    np.testing.assert_allclose(gx, 2 * pred * w)
    np.testing.assert_allclose(backend(ft.grad(loss, argnums=-1, has_aux=True))(w, b, x)[0], gx)
    val2, g2 = backend(ft.value_and_grad(lambda p: fnp.sum(p["a"] ** 2)))(
        {"a": np.array([1.0, 2.0])})
    np.testing.assert_allclose(val2, 5.0)
    np.testing.assert_allclose(g2["a"], [2.0, 4.0])


def test_grad_ignores_integer_and_non_argnums_inputs(backend):
    f = lambda x, n: fnp.sum(x ** n)
    np.testing.assert_allclose(backend(ft.grad(f), static_argnums=1)(np.array([1.0, 2.0]), 3),
                               [3.0, 12.0])
    _, ts = backend(lambda x, k: ft.jvp(lambda x, k: x * k, (x, k),
                                        (1.0, np.zeros((), ft.dtypes.float0))))(2.0, np.int64(3))
    assert float(ts) == 3.0
    _, vjp_fn = ft.vjp(backend.jit(lambda x, k: x * k), 2.0, np.int64(3))
    gx, gk = vjp_fn(1.0)
    assert float(gx) == 3.0 and gk.dtype == ft.dtypes.float0


def test_stop_gradient(backend):
    stop = getattr(lax, "stop_gradient", None) or getattr(ft, "stop_gradient")
    f = lambda x: x * stop(x ** 2)
    np.testing.assert_allclose(backend(ft.grad(f))(3.0), 9.0)
    np.testing.assert_allclose(backend(lambda x: ft.jvp(f, (x,), (1.0,))[1])(3.0), 9.0)
    np.testing.assert_allclose(ft.grad(backend.jit(f))(3.0), 9.0)


# ---------------------------------------------------------------------------------------------
# Python control flow on concrete values under grad, jvp and hessian


def _branchy(x):
    if x > 0:
        return fnp.sin(x) * x
    return fnp.exp(x)


def _loopy(x):
    # the trip count depends on the value of x: halve until below 1
    y, n = x, 0
    while y > 1.0:
        y = y / 2.0
        n += 1
    return y ** 3 + n


@given(st.floats(-3, 3).filter(lambda v: abs(v) > 1e-3))
def test_python_branch_under_grad_jvp_hessian(x):
    if x > 0:
        d1, d2 = np.sin(x) + x * np.cos(x), 2 * np.cos(x) - x * np.sin(x)
    else:
        d1 = d2 = np.exp(x)
    np.testing.assert_allclose(ft.grad(_branchy)(x), d1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ft.jvp(_branchy, (x,), (1.0,))[1], d1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ft.hessian(_branchy)(x), d2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ft.grad(ft.grad(_branchy))(x), d2, rtol=1e-10, atol=1e-12)


@given(st.floats(0.1, 40.0))
def test_python_loop_with_value_dependent_trip_count(x):
    n = 0
    y = x
    while y > 1.0:
        y /= 2.0
        n += 1
    d1 = 3 * y ** 2 / 2 ** n
    d2 = 6 * y / 4 ** n
    np.testing.assert_allclose(ft.grad(_loopy)(x), d1, rtol=1e-10)
    np.testing.assert_allclose(ft.jvp(_loopy, (x,), (1.0,))[1], d1, rtol=1e-10)
    np.testing.assert_allclose(ft.hessian(_loopy)(x), d2, rtol=1e-10)


def test_python_control_flow_on_arrays_under_reverse_mode():
    def f(x):
        out = x
        for i in range(int(np.sum(np.asarray(x) > 0))):  # the primal is concrete under grad
            out = fnp.sin(out) + i
        return out

    x = np.array([0.5, -0.2, 1.0])  # two positive entries: two iterations
    expected = np.cos(np.sin(x)) * np.cos(x)
    np.testing.assert_allclose(ft.grad(lambda v: fnp.sum(f(v)))(x), expected, rtol=1e-12)
    np.testing.assert_allclose(ft.jacrev(f)(x), np.diag(expected), rtol=1e-12)


def test_vmap_of_grad_matches_a_loop_and_jaxpr_roundtrip(backend):
    f = lambda x: fnp.sum(fnp.tanh(x) ** 2 * fnp.exp(-x))
    xs = RNG.standard_normal((4, 3))
    batched = backend(ft.vmap(ft.grad(f)))(xs)
    np.testing.assert_allclose(batched, np.stack([ft.grad(f)(r) for r in xs]), rtol=1e-12)
    closed = ft.make_jaxpr(ft.grad(f))(xs[0])
    ft.typecheck_jaxpr(closed)
    np.testing.assert_allclose(ft.eval_jaxpr(closed.jaxpr, closed.consts, xs[0])[0],
                               ft.grad(f)(xs[0]), rtol=1e-12)
    hclosed = ft.make_jaxpr(ft.hessian(f))(xs[0])
    ft.typecheck_jaxpr(hclosed)
    np.testing.assert_allclose(ft.eval_jaxpr(hclosed.jaxpr, hclosed.consts, xs[0])[0],
                               ft.hessian(f)(xs[0]), rtol=1e-12)


def test_hessian_vector_products(backend):
    f = lambda x: fnp.sum(fnp.tanh(x) ** 2) + _logsumexp(x)
    x = np.array([0.3, -0.4, 1.2])
    v = np.array([1.0, 2.0, -1.0])
    h = ft.hessian(f)(x)
    hvp_fwd_rev = backend(lambda x, v: ft.jvp(ft.grad(f), (x,), (v,))[1])(x, v)
    hvp_rev_rev = backend(ft.grad(lambda y, v: fnp.sum(ft.grad(f)(y) * v)))(x, v)
    hvp_rev_fwd = backend(ft.grad(lambda y, v: ft.jvp(f, (y,), (v,))[1]))(x, v)
    for hvp in (hvp_fwd_rev, hvp_rev_rev, hvp_rev_fwd):
        np.testing.assert_allclose(hvp, h @ v, rtol=1e-10, atol=1e-12)
