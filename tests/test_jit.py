"""functrax.jit: results equal eager evaluation on every back end, transformations compose
with it in every order, the cache never retraces a known signature, retraces are explained,
and the ahead-of-time and debugging entry points work."""
import logging

import numpy as np
import pytest

import functrax as ft
import functrax.numpy as fnp
from functrax import config, core, lax
from functrax.jit import pjit_p
from functrax.test_util import check_grads

BACKENDS = ["numpy", "cpu"]


def jit_variants(f, **kwargs):
    """f jitted on every back end: {backend name: jitted f}."""
    return {b: ft.jit(f, backend=b, **kwargs) for b in BACKENDS}


def assert_tree_close(got, want, rtol=1e-6, atol=1e-8):
    g_leaves, g_tree = ft.tree_util.tree_flatten(got)
    w_leaves, w_tree = ft.tree_util.tree_flatten(want)
    assert g_tree == w_tree
    for g, w in zip(g_leaves, w_leaves):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


rng = np.random.default_rng(0)
X = rng.standard_normal((5, 4))
B = rng.standard_normal(4)
W = rng.standard_normal((4, 3))
N = rng.integers(-9, 9, (5, 4))


def chain(x, b):
    return fnp.tanh(x * 2.0 + b) - fnp.exp(-x) / (1.0 + b * b)


def reductions(x):
    return fnp.sum(x, axis=0), fnp.max(x, axis=1), fnp.mean(x), fnp.min(x)


def mlp(x, w, b):
    h = fnp.maximum(x @ w + b[:3], 0.0)
    return h - ft.nn.logsumexp(h, axis=1, keepdims=True) if hasattr(ft.nn, "logsumexp") \
        else h - fnp.log(fnp.sum(fnp.exp(h), axis=1, keepdims=True))


def indexing(x, n):
    x = fnp.asarray(x)
    return x[1:3, ::2] * 2.0, x[np.array([0, 2, 2])], x.at[0].set(1.0), fnp.where(n > 2, n, -n)


def ints(n):
    return (n * 3) % 7, fnp.maximum(n, 0) - 1, (n > 0) & (n < 5)


def pytree_io(p, x):
    y = p["w"] * x + p["b"][0]
    return {"y": y, "sum": (fnp.sum(y), [p["b"][1] * 2.0])}


PROGRAMS = [
    ("chain", chain, (X, B)),
    ("reductions", reductions, (X,)),
    ("mlp", mlp, (X, W, B)),
    ("indexing", indexing, (X, N)),
    ("ints", ints, (N,)),
    ("pytree", pytree_io, ({"w": X, "b": (B, 3.0)}, 2.0)),
    ("float32", lambda x: fnp.sin(x * 2.0) + 1, (X.astype(np.float32),)),
    ("scalar", lambda x: x + 1.0, (1.5,)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,f,args", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_jit_matches_eager(backend, name, f, args):
    jf = ft.jit(f, backend=backend)
    want = f(*args)
    assert_tree_close(jf(*args), want)
    assert_tree_close(jf(*args), want)  # the cached path too
    assert jf.stats.traces == 1 and jf.stats.cache_hits == 1


def test_results_are_functrax_arrays():
    jf = ft.jit(lambda x: x * 2.0)
    assert type(jf(np.ones(3))) is ft.Array
    assert type(jf(1.0)) is ft.Array and jf(1.0).shape == ()


# ---------------------------------------------------------------------------------------------
# Transformations compose with jit


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_of_jit_and_jit_of_grad(backend):
    def loss(x, b):
        return fnp.sum(chain(x, b) ** 2)

    g_eager = ft.grad(loss, argnums=(0, 1))(X, B)
    jl = ft.jit(loss, backend=backend)
    assert_tree_close(ft.grad(jl, argnums=(0, 1))(X, B), g_eager)
    jg = ft.jit(ft.grad(loss, argnums=(0, 1)), backend=backend)
    assert_tree_close(jg(X, B), g_eager)
    assert_tree_close(ft.jit(ft.value_and_grad(loss), backend=backend)(X, B),
                      ft.value_and_grad(loss)(X, B))


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_grads_through_jit(backend):
    jf = ft.jit(lambda x: fnp.sum(fnp.sin(x) * fnp.exp(-x * x)), backend=backend)
    check_grads(jf, (X[0],), order=2, modes=("fwd", "rev"))


def test_repeated_grad_of_jit_reuses_derived_programs():
    jl = ft.jit(lambda x: fnp.sum(fnp.tanh(x) ** 2))
    g = ft.grad(jl)
    g(X)
    lowered = jl.stats.lowerings
    for _ in range(3):
        g(X)
    assert jl.stats.traces == 1
    assert jl.stats.lowerings == lowered


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_of_jit(backend):
    jf = ft.jit(chain, backend=backend)
    xs = rng.standard_normal((3, 5, 4))
    got = ft.vmap(jf, in_axes=(0, None))(xs, B)
    want = np.stack([np.asarray(chain(x, B)) for x in xs])
    assert_tree_close(got, want)
    # Batched along an inner axis, and both operands batched.
    bs = rng.standard_normal((4, 3))
    got = ft.vmap(jf, in_axes=(2, 1))(xs.transpose(1, 2, 0), bs)
    want = np.stack([np.asarray(chain(xs[i], bs[:, i])) for i in range(3)])
    assert_tree_close(got, want)


def test_per_example_gradients_jit_vmap_grad():
    def loss(w, x, y):
        return fnp.sum((fnp.tanh(x @ w) - y) ** 2)

    xs, ys = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    f = ft.jit(ft.vmap(ft.grad(loss), in_axes=(None, 0, 0)))
    want = np.stack([np.asarray(ft.grad(loss)(W, x, y)) for x, y in zip(xs, ys)])
    assert_tree_close(f(W, xs, ys), want)


def test_nested_jit_and_jvp_hessian():
    inner = ft.jit(lambda x: fnp.sin(x) * x)
    outer = ft.jit(lambda x: inner(x) + inner(2.0 * x))
    x = X[0]
    assert_tree_close(outer(x), np.sin(x) * x + np.sin(2 * x) * 2 * x)
    closed = ft.make_jaxpr(outer)(x)
    assert [e.primitive for e in closed.jaxpr.eqns] == [pjit_p]
    inner_eqns = closed.jaxpr.eqns[0].params["jaxpr"].jaxpr.eqns
    assert sum(e.primitive is pjit_p for e in inner_eqns) == 2
    f = lambda x: fnp.sum(outer(x) ** 2)  # noqa: E731
    assert_tree_close(ft.jvp(outer, (x,), (np.ones_like(x),)),
                      ft.jvp(lambda x: fnp.sin(x) * x + fnp.sin(2.0 * x) * 2.0 * x,
                             (x,), (np.ones_like(x),)))
    h = ft.hessian(f)(x)
    h_ref = ft.hessian(lambda x: fnp.sum((fnp.sin(x) * x + fnp.sin(2.0 * x) * 2.0 * x) ** 2))(x)
    assert_tree_close(h, h_ref, rtol=1e-6, atol=1e-8)
    assert_tree_close(ft.jit(ft.hessian(f))(x), h_ref, rtol=1e-6, atol=1e-8)


def test_transformed_jaxprs_typecheck():
    jf = ft.jit(lambda x: fnp.sum(fnp.tanh(x) * 2.0))
    x = X[0]
    for fn in (jf, ft.grad(jf), ft.vmap(jf), ft.jit(ft.grad(jf)),
               lambda x: ft.jvp(jf, (x,), (x,))[1]):
        closed = ft.make_jaxpr(fn)(x if fn is not ft.vmap(jf) else X)
        core.typecheck_jaxpr(closed)
    core.typecheck_jaxpr(ft.make_jaxpr(ft.vmap(jf))(X))


def test_closed_over_tracers_become_inputs():
    def f(x):
        return ft.jit(lambda y: x * y + fnp.sin(x))(3.0)

    assert_tree_close(ft.grad(f)(0.5), np.asarray(3.0 + np.cos(0.5)))
    assert_tree_close(ft.jit(f)(0.5), np.asarray(1.5 + np.sin(0.5)))
    assert_tree_close(ft.vmap(f)(np.array([0.5, 1.0])), 3.0 * np.array([0.5, 1.0]) +
                      np.sin([0.5, 1.0]))


def test_closed_over_constants():
    table = np.arange(4.0)
    jf = ft.jit(lambda x: x * table + 1.0)
    assert_tree_close(jf(2.0), table * 2 + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_control_flow_under_jit(backend):
    def rnn(h, xs):
        return lax.scan(lambda h, x: (fnp.tanh(h * 0.5 + x), fnp.sum(h)), h, xs)

    h, xs = np.ones(4), rng.standard_normal((5, 4))
    assert_tree_close(ft.jit(rnn, backend=backend)(h, xs), rnn(h, xs))
    loss = lambda h: fnp.sum(rnn(h, xs)[1])  # noqa: E731
    assert_tree_close(ft.jit(ft.grad(loss), backend=backend)(h), ft.grad(loss)(h))

    def c(x):
        return lax.cond(fnp.sum(x) > 0, lambda x: x * 2.0, lambda x: -x, x)

    jc = ft.jit(c, backend=backend)
    assert_tree_close(jc(h), h * 2) and assert_tree_close(jc(-h), h)

    def w(x):
        return lax.while_loop(lambda s: s[0] < 4, lambda s: (s[0] + 1, s[1] * 1.5), (0, x))

    assert_tree_close(ft.jit(w, backend=backend)(h), w(h))


# ---------------------------------------------------------------------------------------------
# The cache: static arguments, retraces and their explanations


def test_no_retrace_for_known_signatures():
    jf = ft.jit(chain)
    for _ in range(5):
        jf(X, B)
    assert jf.stats.traces == 1 and jf.stats.cache_hits == 4 and jf.stats.cache_misses == 1
    jf(X + 1.0, B - 1.0)  # new values, same types
    assert jf.stats.traces == 1
    jf(X[:3], B)
    assert jf.stats.traces == 2
    jf(X, B), jf(X[:3], B)
    assert jf.stats.traces == 2 and not jf.stats.retraces[1:]


def test_weak_types_are_part_of_the_key():
    jf = ft.jit(lambda x, y: x * y)
    a = np.ones(3, np.float32)
    assert jf(a, 2.0).dtype == np.float32           # weak Python scalar
    assert jf(a, np.float64(2.0)).dtype == np.float64  # strong numpy scalar
    assert jf.stats.traces == 2
    assert "weak" in jf.stats.retraces[0]


def test_retrace_explanations(caplog):
    def f(x, y, n=1):
        return x * n + fnp.sum(y)

    jf = ft.jit(f, static_argnames="n")
    jf(np.ones(3), np.ones(3))
    jf(np.ones(4), np.ones(3))
    jf(np.ones(3), np.ones(3, np.float32))
    jf(np.ones(3), np.ones(3), n=2)
    r = jf.stats.retraces
    assert len(r) == 3
    assert "x changed from float64[3] to float64[4]" in r[0]
    assert "y changed from float64[3] to float32[3]" in r[1]
    assert "static n" in r[2] and "2" in r[2]
    config.update("explain_retraces", True)
    try:
        with caplog.at_level(logging.WARNING, logger="functrax.jit"):
            jf(np.ones(5), np.ones(3))
    finally:
        config.update("explain_retraces", False)
    assert any("retracing" in rec.getMessage() and "float64[5]" in rec.getMessage()
               for rec in caplog.records)


def test_static_argnums_and_argnames():
    def f(x, n, *, mode="sum"):
        y = x ** n
        return fnp.sum(y) if mode == "sum" else fnp.max(y)

    jf = ft.jit(f, static_argnums=1, static_argnames="mode")
    assert_tree_close(jf(X, 2), np.sum(X ** 2))
    assert_tree_close(jf(X, 3), np.sum(X ** 3))
    assert_tree_close(jf(X, 3, mode="max"), np.max(X ** 3))
    assert_tree_close(jf(X, n=3, mode="max"), np.max(X ** 3))  # static by name, set by number
    assert jf.stats.traces == 3
    with pytest.raises(TypeError, match="hashable"):
        jf(X, [2])


def test_kwargs_are_dynamic():
    jf = ft.jit(lambda x, scale=1.0: x * scale)
    assert_tree_close(jf(X, scale=2.0), X * 2)
    assert_tree_close(jf(X, scale=3.0), X * 3)
    assert jf.stats.traces == 1


def test_donate_argnums_accepted():
    def step(p, g):
        return p - 0.1 * g

    jf = ft.jit(step, donate_argnums=0)
    p, g = np.ones(1000), np.full(1000, 2.0)
    out = jf(p.copy(), g)
    np.testing.assert_allclose(out, np.full(1000, 0.8))
    out2 = jf(np.asarray(out).copy(), g)
    np.testing.assert_allclose(out2, np.full(1000, 0.6))


def test_backend_choice_and_errors():
    with pytest.raises(ValueError, match="unknown backend"):
        ft.jit(chain, backend="tpu")
    jf = ft.jit(lambda x: x + 1.0)
    jf(1.0)
    config.update("default_backend", "numpy")
    try:
        jf(1.0)
    finally:
        config.update("default_backend", "cpu")
    assert jf.stats.traces == 2


def test_python_control_flow_on_traced_values_explains():
    jf = ft.jit(lambda x: x if x > 0 else -x)
    with pytest.raises(core.ConcretizationTypeError, match="static_argnums"):
        jf(1.0)


def test_non_array_outputs_and_arguments_are_rejected():
    with pytest.raises(TypeError, match="must return arrays"):
        ft.jit(lambda x: "hello")(1.0)
    with pytest.raises(TypeError, match="static_argnums"):
        ft.jit(lambda x, s: x)(1.0, "text")


# ---------------------------------------------------------------------------------------------
# Debugging and ahead-of-time compilation


def test_disable_jit_runs_eagerly():
    seen = []

    def f(x):
        seen.append(type(x))
        return x * 2.0 if float(fnp.sum(x)) > 0 else -x  # Python control flow is fine eagerly

    jf = ft.jit(f)
    with ft.disable_jit():
        assert_tree_close(jf(np.ones(3)), np.full(3, 2.0))
        assert_tree_close(jf(-np.ones(3)), np.ones(3))
    assert jf.stats.traces == 0
    assert all(not issubclass(t, core.Tracer) for t in seen)


def test_lower_as_text_and_compile():
    jf = ft.jit(lambda x, b: fnp.sum(fnp.maximum(x * 2.0 + b, 0.0), axis=0))
    lowered = jf.lower(X, B)
    text = lowered.as_text()
    assert "reduce_sum" in text and "max" in text and "def " in text
    compiled = lowered.compile()
    assert_tree_close(compiled(X, B), np.sum(np.maximum(X * 2 + B, 0), axis=0))
    with pytest.raises(TypeError, match="lowered for"):
        compiled(X[:2], B)
    # lower() also accepts shape/dtype stand-ins.
    text2 = jf.lower(ft.ShapeDtypeStruct((5, 4), np.float64), B).as_text()
    assert "f64[5,4]" in text2


def test_stats_account_time():
    jf = ft.jit(chain)
    jf(X, B)
    s = jf.stats
    assert s.trace_seconds > 0 and s.lowerings == 1 and s.lower_seconds >= 0
    assert "traces=1" in repr(s) and s.as_dict()["cache_misses"] == 1


def test_global_caches_are_bounded_lru():
    from functrax import config, lowering
    from functrax._lru import LRUCache
    c = LRUCache(lambda: 2)
    c["a"], c["b"] = 1, 2
    assert c.get("a") == 1          # refreshes "a"
    c["c"] = 3                       # evicts "b", the least recently used
    assert sorted(c.keys()) == ["a", "c"] and c.evictions == 1
    old = config.jit_cache_size
    try:
        config.update("jit_cache_size", 3)
        for k in range(6):
            ft.jit(lambda x, k=k: x + k)(np.ones(2))
        assert len(lowering._executables) <= 3
        # an evicted program is lowered again on its next use, with the same result
        f = ft.jit(lambda x: x * 2.0)
        np.testing.assert_allclose(f(np.ones(2)), 2.0)
        for k in range(4):
            ft.jit(lambda x, k=k: x - k)(np.ones(2))
        np.testing.assert_allclose(f(np.ones(2)), 2.0)
        with pytest.raises(ValueError, match="positive int"):
            config.update("jit_cache_size", 0)
    finally:
        config.update("jit_cache_size", old)
