"""custom_jvp, custom_vjp, custom_gradient and checkpoint under every transformation.

Numerical tests take the ``backend`` fixture (tests/conftest.py): the transformed function runs
eagerly and under ``jit`` on every back end, so the custom rules are checked after staging and
lowering too. Tests of staged jaxprs, residual counts and error messages stay eager."""
import functools
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import lax
from functrax.test_util import check_grads

THIS_FILE = "test_custom_derivatives.py"


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _staged(f):
    """f run through its jaxpr (what jit does before lowering), differentiable as a function."""
    def run(*args):
        closed = ft.make_jaxpr(f)(*args)
        out = ft.eval_jaxpr(closed.jaxpr, closed.consts, *args)
        return out[0] if len(out) == 1 else out
    return run


# ---------------------------------------------------------------------------------------------
# custom_jvp: a numerically stable log1pexp


@ft.custom_jvp
def log1pexp(x):
    return fnp.log(1.0 + fnp.exp(x))


@log1pexp.defjvp
def _log1pexp_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return log1pexp(x), t * (1.0 - 1.0 / (1.0 + fnp.exp(x)))


def test_log1pexp_gradient_is_stable(backend):
    assert float(backend(ft.grad(log1pexp))(100.0)) == 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        naive = backend(ft.grad(lambda x: fnp.log(1.0 + fnp.exp(x))))(1000.0)
        stable = backend(ft.grad(log1pexp))(1000.0)
    assert np.isnan(naive)  # the point of the rule: the plain derivative is inf/inf
    assert float(stable) == 1.0
    np.testing.assert_allclose(backend(ft.grad(log1pexp))(0.3), _sigmoid(0.3), rtol=1e-12)


def test_custom_jvp_eager_value_is_fun(backend):
    np.testing.assert_allclose(backend(log1pexp)(0.5), np.log1p(np.exp(0.5)), rtol=1e-12)


@functools.lru_cache(maxsize=None)
def _log1pexp_derivatives(backend):
    # Built once per (session-scoped) back end: under jit every hypothesis example after the
    # first is then a cache hit, not a new trace and lowering.
    return (backend(lambda x, t: ft.jvp(log1pexp, (x,), (t,))),
            backend(ft.grad(ft.grad(log1pexp))), backend(ft.hessian(log1pexp)))


@given(st.floats(-5, 5))
def test_custom_jvp_under_jvp_vmap_and_higher_order(backend, x):
    jvp, d2, hess = _log1pexp_derivatives(backend)
    y, t = jvp(x, 2.0)
    np.testing.assert_allclose(y, np.log1p(np.exp(x)), rtol=1e-12)
    np.testing.assert_allclose(t, 2.0 * _sigmoid(x), rtol=1e-12)
    s = _sigmoid(x)
    np.testing.assert_allclose(d2(x), s * (1 - s), rtol=1e-10)
    np.testing.assert_allclose(hess(x), s * (1 - s), rtol=1e-10)


def test_custom_jvp_vmap_combinations(backend):
    xs = np.array([-3.0, 0.0, 2.0, 100.0])
    expected = _sigmoid(xs)
    np.testing.assert_allclose(backend(ft.vmap(ft.grad(log1pexp)))(xs), expected, rtol=1e-12)
    np.testing.assert_allclose(backend(ft.grad(lambda v: fnp.sum(ft.vmap(log1pexp)(v))))(xs),
                               expected, rtol=1e-12)
    np.testing.assert_allclose(backend(ft.jacfwd(ft.vmap(log1pexp)))(xs), np.diag(expected),
                               rtol=1e-12)
    np.testing.assert_allclose(backend(ft.jacrev(ft.vmap(log1pexp)))(xs), np.diag(expected),
                               rtol=1e-12)
    np.testing.assert_allclose(backend(ft.vmap(log1pexp))(xs[:3]), np.log1p(np.exp(xs[:3])),
                               rtol=1e-12)


def test_custom_jvp_uses_the_rule_not_the_function(backend):
    # A deliberately "wrong" rule shows which derivative is used, in every mode.
    @ft.custom_jvp
    def f(x):
        return fnp.sin(x)

    f.defjvp(lambda p, t: (f(p[0]), 10.0 * t[0]))
    assert float(backend(ft.grad(f))(0.3)) == 10.0
    assert float(backend(lambda x, t: ft.jvp(f, (x,), (t,))[1])(0.3, 1.0)) == 10.0
    np.testing.assert_allclose(backend(ft.jacfwd(f))(np.ones(2)), 10.0 * np.eye(2))
    np.testing.assert_allclose(backend(ft.jacrev(f))(np.ones(2)), 10.0 * np.eye(2))
    np.testing.assert_allclose(backend(ft.vmap(ft.grad(f)))(np.ones(3)), 10.0 * np.ones(3))
    # grad of the staged function: the custom_jvp_call equation keeps the rule
    assert float(_staged(ft.grad(f))(0.3)) == 10.0
    assert float(ft.device_get(ft.grad(backend.jit(f))(0.3))) == 10.0


def test_custom_jvp_staged_and_typechecked():
    x = np.array([0.5, -1.0])
    closed = ft.make_jaxpr(lambda v: fnp.sum(log1pexp(v)))(x)
    assert "custom_jvp_call" in str(closed)
    ft.typecheck_jaxpr(closed)
    out = ft.eval_jaxpr(closed.jaxpr, closed.consts, x)[0]
    np.testing.assert_allclose(out, np.sum(np.log1p(np.exp(x))), rtol=1e-12)
    for fn in (ft.grad(lambda v: fnp.sum(log1pexp(v))), ft.vmap(log1pexp),
               lambda v: ft.jvp(log1pexp, (v,), (v,))):
        ft.typecheck_jaxpr(ft.make_jaxpr(fn)(x))
    g = _staged(ft.grad(lambda v: fnp.sum(log1pexp(v))))
    np.testing.assert_allclose(g(x), _sigmoid(x), rtol=1e-12)
    # grad through the staged custom_jvp_call equation itself
    np.testing.assert_allclose(ft.grad(lambda v: fnp.sum(_staged(log1pexp)(v)))(x), _sigmoid(x),
                               rtol=1e-12)


def test_custom_jvp_check_grads(backend):
    check_grads(backend.jit(log1pexp), (np.array([0.3, -1.2, 2.0]),), order=2,
                modes=("fwd", "rev"))


def test_defjvps_per_argument_rules(backend):
    @ft.custom_jvp
    def f(x, y):
        return fnp.sin(x) * y

    f.defjvps(lambda x_dot, ans, x, y: fnp.cos(x) * x_dot * y,
              lambda y_dot, ans, x, y: fnp.sin(x) * y_dot)
    x, y = 0.4, 1.7
    gx, gy = backend(ft.grad(f, argnums=(0, 1)))(x, y)
    np.testing.assert_allclose([gx, gy], [np.cos(x) * y, np.sin(x)], rtol=1e-12)
    np.testing.assert_allclose(backend(ft.hessian(f))(x, y), -np.sin(x) * y, rtol=1e-12)

    @ft.custom_jvp
    def g(x, y):
        return x * y

    g.defjvps(None, lambda y_dot, ans, x, y: x * y_dot)  # x's derivative declared zero
    gx, gy = backend(ft.grad(g, argnums=(0, 1)))(2.0, 3.0)
    assert (float(gx), float(gy)) == (0.0, 2.0)


def test_custom_jvp_nondiff_argnums(backend):
    @functools.partial(ft.custom_jvp, nondiff_argnums=(0,))
    def power(n, x):
        return x ** n

    @power.defjvp
    def _(n, primals, tangents):
        (x,), (t,) = primals, tangents
        return power(n, x), n * x ** (n - 1) * t

    # n is a static Python int: jit takes it as a static argument
    assert float(backend(ft.grad(power, argnums=1), static_argnums=0)(3, 2.0)) == 12.0
    assert float(backend(ft.grad(ft.grad(power, argnums=1), argnums=1),
                         static_argnums=0)(3, 2.0)) == 12.0
    np.testing.assert_allclose(backend(ft.vmap(ft.grad(power, argnums=1), in_axes=(None, 0)),
                                       static_argnums=0)(2, np.array([1.0, 2.0])), [2.0, 4.0])


def test_custom_jvp_pytrees_in_and_out(backend):
    Pair = namedtuple("Pair", ["a", "b"])

    @ft.custom_jvp
    def f(p):
        return {"s": p["x"] * p["y"], "t": Pair(fnp.sin(p["x"]), p["y"])}

    @f.defjvp
    def _(primals, tangents):
        (p,), (t,) = primals, tangents
        out = f(p)
        return out, {"s": t["x"] * p["y"] + p["x"] * t["y"],
                     "t": Pair(fnp.cos(p["x"]) * t["x"], t["y"])}

    p = {"x": np.array([0.5, 1.0]), "y": np.array([2.0, 3.0])}

    def loss(q):
        o = f(q)
        return fnp.sum(o["s"]) + fnp.sum(o["t"].a) + 2.0 * fnp.sum(o["t"].b)

    g = backend(ft.grad(loss))(p)
    np.testing.assert_allclose(g["x"], p["y"] + np.cos(p["x"]), rtol=1e-12)
    np.testing.assert_allclose(g["y"], p["x"] + 2.0, rtol=1e-12)
    _, t = backend(lambda p, t: ft.jvp(f, (p,), (t,)))(p, {"x": np.ones(2), "y": np.zeros(2)})
    np.testing.assert_allclose(t["t"].a, np.cos(p["x"]), rtol=1e-12)
    np.testing.assert_allclose(t["t"].b, np.zeros(2))


def test_custom_jvp_integer_argument_gets_float0_tangent(backend):
    @ft.custom_jvp
    def scale(x, k):
        return x * k

    seen = {}

    @scale.defjvp
    def _(primals, tangents):
        (x, k), (tx, tk) = primals, tangents
        seen["tk_dtype"] = tk.dtype
        return scale(x, k), tx * k

    assert float(backend(ft.grad(scale))(1.5, np.int64(3))) == 3.0
    assert seen["tk_dtype"] == ft.dtypes.float0


def test_custom_jvp_closure_over_differentiated_value(backend):
    # The rule covers the explicit argument; the closed-over w is differentiated through fun.
    def outer(w):
        @ft.custom_jvp
        def f(x):
            return w * fnp.sin(x)

        f.defjvp(lambda p, t: (f(p[0]), w * fnp.cos(p[0]) * t[0]))
        return f(0.5)

    np.testing.assert_allclose(backend(ft.grad(outer))(2.0), np.sin(0.5), rtol=1e-12)
    np.testing.assert_allclose(backend(lambda w, t: ft.jvp(outer, (w,), (t,))[1])(2.0, 1.0),
                               np.sin(0.5), rtol=1e-12)


def test_custom_jvp_rule_errors_name_the_problem():
    @ft.custom_jvp
    def f(x):
        return x * 2.0

    with pytest.raises(AttributeError, match="defjvp"):
        ft.grad(f)(1.0)

    f.defjvp(lambda p, t: (f(p[0]), fnp.ones(3)))
    with pytest.raises(TypeError, match=r"shape \(3,\).*shape \(\)") as e:
        ft.grad(f)(1.0)
    assert THIS_FILE in str(e.value)

    g = ft.custom_jvp(lambda x: x * 2.0)
    g.defjvp(lambda p, t: p[0])
    with pytest.raises(TypeError, match="pair"):
        ft.jvp(g, (1.0,), (1.0,))


# ---------------------------------------------------------------------------------------------
# custom_vjp: gradient clipping


@ft.custom_vjp
def clip_gradient(lo, hi, x):
    return x


def _clip_fwd(lo, hi, x):
    return x, (lo, hi)


def _clip_bwd(res, g):
    lo, hi = res
    return None, None, fnp.minimum(fnp.maximum(g, lo), hi)


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


def _clipped(x):
    return fnp.sum(clip_gradient(-0.5, 0.5, 3.0 * x) ** 2)


def test_clip_gradient_reverse_mode(backend):
    x = np.array([0.01, 0.1, -1.0, 2.0])
    expected = 3.0 * np.clip(6.0 * x, -0.5, 0.5)
    np.testing.assert_allclose(backend(ft.grad(_clipped))(x), expected, rtol=1e-12)
    np.testing.assert_allclose(backend(ft.jacrev(_clipped))(x), expected, rtol=1e-12)
    vjp_at = lambda x, u: ft.vjp(lambda v: clip_gradient(-1.0, 1.0, v), x)[1](u)[0]
    np.testing.assert_allclose(backend(vjp_at)(x, np.array([0.5, 3.0, -7.0, 1.0])),
                               [0.5, 1.0, -1.0, 1.0])


def test_clip_gradient_forward_mode_uses_the_function(backend):
    # Beyond JAX: forward mode differentiates fun (the identity) instead of raising.
    x = np.array([0.01, 0.1, -1.0, 2.0])
    _, t = backend(lambda x, v: ft.jvp(_clipped, (x,), (v,)))(x, np.ones(4))
    np.testing.assert_allclose(t, np.sum(18.0 * x), rtol=1e-12)
    np.testing.assert_allclose(backend(ft.jacfwd(_clipped))(x), 18.0 * x, rtol=1e-12)
    y, f_jvp = ft.linearize(backend.jit(lambda v: clip_gradient(-0.5, 0.5, v) * 2.0), x)
    np.testing.assert_allclose(ft.device_get(y), 2.0 * x)
    np.testing.assert_allclose(ft.device_get(f_jvp(np.ones(4))), 2.0 * np.ones(4))  # custom_lin forward
    ft.typecheck_jaxpr(f_jvp.jaxpr)


def test_clip_gradient_under_vmap_and_staging(backend):
    xs = np.array([[0.01, 2.0], [-1.0, 0.05]])
    expected = np.stack([3.0 * np.clip(6.0 * r, -0.5, 0.5) for r in xs])
    np.testing.assert_allclose(backend(ft.vmap(ft.grad(_clipped)))(xs), expected, rtol=1e-12)
    # vmap inside grad: the batched bwd; lo/hi are unbatched.
    per_row = backend(ft.grad(lambda m: fnp.sum(ft.vmap(_clipped)(m))))(xs)
    np.testing.assert_allclose(per_row, expected, rtol=1e-12)
    np.testing.assert_allclose(backend(ft.vmap(lambda v: clip_gradient(-1.0, 1.0, v)))(xs), xs)
    np.testing.assert_allclose(_staged(ft.grad(_clipped))(xs[0]), expected[0], rtol=1e-12)
    np.testing.assert_allclose(ft.device_get(ft.grad(backend.jit(_clipped))(xs[0])), expected[0],
                               rtol=1e-12)
    for fn, arg in ((ft.grad(_clipped), xs[0]), (ft.vmap(ft.grad(_clipped)), xs),
                    (lambda v: ft.jvp(_clipped, (v,), (v,)), xs[0])):
        ft.typecheck_jaxpr(ft.make_jaxpr(fn)(arg))


def test_grad_of_staged_custom_vjp_keeps_the_rule():
    # make_jaxpr + eval_jaxpr by hand (grad of jit is in the test above, on every back end)
    x = np.array([0.01, 2.0])
    staged = _staged(_clipped)
    np.testing.assert_allclose(ft.grad(staged)(x), 3.0 * np.clip(6.0 * x, -0.5, 0.5))


def test_hessian_of_custom_vjp_function(backend):
    @ft.custom_vjp
    def softplus(x):
        return fnp.log(1.0 + fnp.exp(x))

    def fwd(x):
        return softplus(x), (x,)

    def bwd(res, g):
        (x,) = res
        return (g / (1.0 + fnp.exp(-x)),)

    softplus.defvjp(fwd, bwd)
    x = np.array([-1.0, 0.5, 2.0])
    s = _sigmoid(x)
    f = lambda v: fnp.sum(softplus(v) * v)
    # f' = s(x) x + softplus(x);  f'' = s(1-s) x + 2 s
    np.testing.assert_allclose(backend(ft.grad(f))(x), s * x + np.log1p(np.exp(x)), rtol=1e-12)
    h_expected = np.diag(s * (1 - s) * x + 2 * s)
    np.testing.assert_allclose(backend(ft.hessian(f))(x), h_expected, rtol=1e-10)  # fwd-over-rev
    np.testing.assert_allclose(backend(ft.jacfwd(ft.jacfwd(f)))(x), h_expected, rtol=1e-10)
    np.testing.assert_allclose(backend(ft.jacrev(ft.jacrev(f)))(x), h_expected, rtol=1e-10)
    np.testing.assert_allclose(backend(ft.hessian(f, chunk_size=2))(x), h_expected, rtol=1e-10)
    check_grads(backend.jit(f), (x,), order=2, modes=("fwd", "rev"))


def test_custom_vjp_rule_is_what_reverse_mode_uses(backend):
    @ft.custom_vjp
    def f(x, y):
        return fnp.sin(x) * y

    f.defvjp(lambda x, y: (f(x, y), (x, y)),
             lambda res, g: (7.0 * g, 5.0 * g))
    gx, gy = backend(ft.grad(f, argnums=(0, 1)))(0.2, 0.3)
    assert (float(gx), float(gy)) == (7.0, 5.0)
    np.testing.assert_allclose(backend(ft.grad(f))(0.2, 0.3), 7.0)
    # forward mode is the true derivative of fun
    np.testing.assert_allclose(
        backend(lambda x, y: ft.jvp(f, (x, y), (1.0, 0.0))[1])(0.2, 0.3), np.cos(0.2) * 0.3)


def test_custom_vjp_pytrees_nondiff_and_none_cotangents(backend):
    @functools.partial(ft.custom_vjp, nondiff_argnums=(1,))
    def f(params, scale):
        return {"out": params["w"] * scale + params["b"]}

    def fwd(params, scale):
        return f(params, scale), {"w": params["w"]}

    def bwd(scale, res, ct):
        return ({"w": ct["out"] * scale * 2.0, "b": None},)

    f.defvjp(fwd, bwd)
    p = {"w": np.array([1.0, 2.0]), "b": np.array([0.5, 0.5])}
    g = backend(ft.grad(lambda q: fnp.sum(f(q, 3.0)["out"])))(p)
    np.testing.assert_allclose(g["w"], [6.0, 6.0])
    np.testing.assert_allclose(g["b"], [0.0, 0.0])
    _, t = backend(lambda p, t: ft.jvp(lambda q: f(q, 3.0), (p,), (t,)))(
        p, {"w": np.ones(2), "b": np.ones(2)})
    np.testing.assert_allclose(t["out"], [4.0, 4.0])


def test_custom_vjp_closure_over_differentiated_value(backend):
    def outer(w):
        @ft.custom_vjp
        def f(x):
            return w * x

        f.defvjp(lambda x: (f(x), None), lambda res, g: (100.0 * g,))
        return f(2.0)

    np.testing.assert_allclose(backend(ft.grad(outer))(3.0), 2.0)  # d/dw by ordinary AD of fun
    np.testing.assert_allclose(backend(ft.jacfwd(outer))(3.0), 2.0)


def test_custom_vjp_errors():
    @ft.custom_vjp
    def f(x, y):
        return x * y

    with pytest.raises(AttributeError, match="defvjp"):
        ft.grad(f)(1.0, 2.0)
    f.defvjp(lambda x, y: (f(x, y), (x, y)), lambda res, g: (g,))
    with pytest.raises(TypeError, match="one cotangent per differentiable argument") as e:
        ft.grad(f)(1.0, 2.0)
    assert THIS_FILE in str(e.value)
    f.defvjp(lambda x, y: (f(x, y), (x, y)), lambda res, g: (fnp.ones(2), g))
    with pytest.raises(TypeError, match=r"shape \(2,\)"):
        ft.grad(f)(1.0, 2.0)


def test_custom_gradient(backend):
    @ft.custom_gradient
    def f(x):
        y = fnp.sin(x)
        return y, lambda g: (g * 3.0 * fnp.cos(x),)

    x = np.array([0.1, 0.7])
    np.testing.assert_allclose(backend(f)(x), np.sin(x))
    np.testing.assert_allclose(backend(ft.grad(lambda v: fnp.sum(f(v))))(x), 3.0 * np.cos(x),
                               rtol=1e-12)
    np.testing.assert_allclose(backend(lambda x, t: ft.jvp(f, (x,), (t,))[1])(x, np.ones(2)),
                               np.cos(x), rtol=1e-12)
    np.testing.assert_allclose(backend(ft.vmap(ft.grad(f)))(x), 3.0 * np.cos(x), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# checkpoint


def _chain(x):
    for _ in range(4):
        x = fnp.sin(x) * 1.1
    return fnp.sum(x * x)


def test_checkpoint_same_gradient_fewer_residuals(backend):
    x = np.linspace(-1.0, 1.0, 6)
    np.testing.assert_allclose(backend(ft.grad(ft.checkpoint(_chain)))(x), ft.grad(_chain)(x),
                               rtol=1e-12)
    plain = ft.linearize(_chain, x)[1]
    remat = ft.linearize(ft.checkpoint(_chain), x)[1]
    assert len(remat.jaxpr.consts) < len(plain.jaxpr.consts)
    assert len(remat.jaxpr.consts) == 1  # only the input is kept
    ft.typecheck_jaxpr(remat.jaxpr)
    v = np.cos(x)
    np.testing.assert_allclose(remat(v), plain(v), rtol=1e-12)
    saved_all = ft.linearize(ft.checkpoint(
        _chain, policy=ft.checkpoint_policies.everything_saveable), x)[1]
    assert len(saved_all.jaxpr.consts) >= len(plain.jaxpr.consts) - 1


def test_checkpoint_under_every_transformation(backend):
    x = np.linspace(-1.0, 1.0, 4)
    f = ft.checkpoint(_chain)
    # default rtol 1e-7: jit may fuse and reorder the arithmetic (rounding-level differences)
    np.testing.assert_allclose(backend(f)(x), _chain(x))
    np.testing.assert_allclose(backend(lambda x, t: ft.jvp(f, (x,), (t,))[1])(x, x),
                               ft.jvp(_chain, (x,), (x,))[1])
    np.testing.assert_allclose(backend(ft.hessian(f))(x), ft.hessian(_chain)(x), rtol=1e-10)
    xs = np.stack([x, 2 * x])
    np.testing.assert_allclose(backend(ft.vmap(ft.grad(f)))(xs), ft.vmap(ft.grad(_chain))(xs))
    np.testing.assert_allclose(backend(ft.grad(lambda m: fnp.sum(ft.vmap(f)(m))))(xs),
                               ft.grad(lambda m: fnp.sum(ft.vmap(_chain)(m)))(xs))
    for g in (_staged(ft.grad(f)), ft.grad(backend.jit(f))):
        np.testing.assert_allclose(ft.device_get(g(x)), ft.grad(_chain)(x), rtol=1e-12)
    closed = ft.make_jaxpr(ft.grad(f))(x)
    ft.typecheck_jaxpr(closed)
    check_grads(backend.jit(f), (x,), order=2)


def test_checkpoint_policies_and_names(backend):
    x = np.linspace(0.1, 1.0, 5)
    policies = ft.checkpoint_policies

    def g(v):
        a = ft.checkpoint_name(fnp.sin(v) * 2.0, "a")
        return fnp.sum(fnp.sin(fnp.sin(a)))

    expected = ft.grad(g)(x)
    nothing = ft.linearize(ft.checkpoint(g), x)[1]
    named = ft.linearize(ft.checkpoint(g, policy=policies.save_only_these_names("a")), x)[1]
    assert len(nothing.jaxpr.consts) == 1
    assert len(named.jaxpr.consts) == 2
    # the saved value is the named one
    assert any(np.allclose(c, np.sin(x) * 2.0) for c in named.jaxpr.consts)
    for pol in (policies.save_only_these_names("a"), policies.save_any_names_but_these("a"),
                policies.everything_saveable, policies.nothing_saveable,
                policies.dots_saveable,
                policies.save_from_both_policies(policies.dots_saveable,
                                                 policies.save_only_these_names("a"))):
        np.testing.assert_allclose(backend(ft.grad(ft.checkpoint(g, policy=pol)))(x), expected,
                                   rtol=1e-12)


def test_checkpoint_dots_saveable_keeps_the_product(backend):
    a = np.arange(12.0).reshape(3, 4) / 10.0

    def f(w):
        return fnp.sum(fnp.tanh(lax.dot(a, fnp.sin(w))))

    w = np.linspace(0.0, 1.0, 4)
    lin = ft.linearize(ft.checkpoint(f, policy=ft.checkpoint_policies.dots_saveable), w)[1]
    prod = np.dot(a, np.sin(w))
    assert any(np.shape(c) == (3,) and np.allclose(c, prod) for c in lin.jaxpr.consts)
    np.testing.assert_allclose(
        backend(ft.grad(ft.checkpoint(f, policy=ft.checkpoint_policies.dots_saveable)))(w),
        ft.grad(f)(w), rtol=1e-12)


def test_checkpoint_static_argnums_pytrees_and_nesting(backend):
    def f(params, n):
        x = params["x"]
        for _ in range(n):
            x = fnp.sin(x)
        return {"y": x, "z": [params["y"] * x]}

    p = {"x": np.array([0.3, 0.4]), "y": np.array([2.0, 3.0])}
    cf = ft.checkpoint(f, static_argnums=(1,))
    loss = lambda q, fn: fnp.sum(fn(q, 3)["y"]) + fnp.sum(fn(q, 3)["z"][0])
    g1 = backend(ft.grad(lambda q: loss(q, cf)))(p)
    g0 = ft.grad(lambda q: loss(q, f))(p)
    np.testing.assert_allclose(g1["x"], g0["x"], rtol=1e-12)
    np.testing.assert_allclose(g1["y"], g0["y"], rtol=1e-12)

    nested = ft.checkpoint(lambda v: fnp.sum(ft.checkpoint(_chain)(fnp.sin(v)) * v))
    plain = lambda v: fnp.sum(_chain(fnp.sin(v)) * v)
    x = np.array([0.2, -0.4])
    np.testing.assert_allclose(backend(ft.grad(nested))(x), ft.grad(plain)(x), rtol=1e-12)
    np.testing.assert_allclose(backend(ft.hessian(nested))(x), ft.hessian(plain)(x), rtol=1e-10)


def test_checkpoint_of_custom_vjp_recomputes_fwd(backend):
    f = ft.checkpoint(lambda v: fnp.sum(fnp.sin(clip_gradient(-0.5, 0.5, fnp.sin(v) * 3.0))))
    x = np.array([0.05, 1.0])
    u = np.sin(x) * 3.0
    expected = np.clip(np.cos(u), -0.5, 0.5) * 3.0 * np.cos(x)
    np.testing.assert_allclose(backend(ft.grad(f))(x), expected, rtol=1e-12)
