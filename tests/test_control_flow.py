"""Structured control flow (cond, switch, while_loop, fori_loop, scan, map) against the
equivalent Python code, and through every transform: jvp, linearize, grad/vjp, vmap, hessian,
and their compositions. Every transformed jaxpr is typechecked.

Numerical tests take the ``backend`` fixture (tests/conftest.py): the function under test runs
eagerly and under ``jit`` on every back end, against references computed eagerly (often a
Python loop over concrete values, which only eager mode can run)."""
import functools

import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import lax
from functrax.core import eval_jaxpr
from functrax.test_util import check_grads


def _allclose(a, b, **kw):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=kw.get("rtol", 1e-9), atol=kw.get("atol", 1e-9))


def _typecheck(f, *args):
    closed = ft.make_jaxpr(f)(*args)
    ft.typecheck_jaxpr(closed)
    return closed


def _via_jaxpr(f, *args):
    closed = _typecheck(f, *args)
    leaves = ft.tree_util.tree_leaves(args)
    return eval_jaxpr(closed.jaxpr, closed.consts, *leaves)


def _prims(closed):
    """Names of all primitives in a jaxpr, nested bodies included."""
    out = []
    for eqn in closed.jaxpr.eqns if hasattr(closed, "jaxpr") else closed.eqns:
        out.append(eqn.primitive.name)
        for sub in ft.core.subjaxprs_of_eqn(eqn):
            out.extend(_prims(sub))
    return out


def _matvec(m, v):
    return fnp.sum(m * fnp.expand_dims(v, 0), axis=1)


RNG = np.random.default_rng(0)

# ---------------------------------------------------------------------------------------------
# scan


def _cumulative(c, x):
    c = c * 0.9 + fnp.sin(x)
    return c, c * x


def _cumulative_ref(c, xs, reverse=False):
    ys = np.zeros_like(xs)
    order = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
    for i in order:
        c = c * 0.9 + np.sin(xs[i])
        ys[i] = c * xs[i]
    return c, ys


@given(st.integers(0, 6), st.booleans())
def test_scan_matches_python_loop(backend, n, reverse):
    xs = np.linspace(-1.0, 2.0, n)
    c, ys = backend(lambda xs: lax.scan(_cumulative, 0.5, xs, reverse=reverse))(xs)
    c_ref, ys_ref = _cumulative_ref(0.5, xs, reverse)
    _allclose(c, c_ref)
    _allclose(ys, ys_ref)
    assert ys.shape == (n,)


def test_scan_under_make_jaxpr_and_eval_jaxpr():
    xs = RNG.standard_normal(5)
    f = lambda xs: lax.scan(_cumulative, 0.5, xs)
    c, ys = _via_jaxpr(f, xs)
    c_ref, ys_ref = _cumulative_ref(0.5, xs)
    _allclose(c, c_ref)
    _allclose(ys, ys_ref)
    assert "scan" in _prims(ft.make_jaxpr(f)(xs))


def test_scan_pytrees_and_no_xs(backend):
    init = {"a": np.zeros(2), "n": 0}
    xs = (np.arange(6.0).reshape(3, 2), np.array([1, 2, 3]))

    def body(c, x):
        v, k = x
        return {"a": c["a"] + v * k, "n": c["n"] + k}, {"sq": v * v}

    c, ys = backend(lambda init, xs: lax.scan(body, init, xs))(init, xs)
    _allclose(c["a"], (np.arange(6.0).reshape(3, 2) * np.array([[1], [2], [3]])).sum(0))
    assert int(c["n"]) == 6
    _allclose(ys["sq"], np.arange(6.0).reshape(3, 2) ** 2)
    c, ys = backend(lambda c0: lax.scan(lambda c, _: (c * 2.0, c), c0, None, length=4))(1.0)
    _allclose(c, 16.0)
    _allclose(ys, [1.0, 2.0, 4.0, 8.0])


def test_scan_weak_initial_carry_adopts_body_dtype(backend):
    c, _ = backend(lambda xs: lax.scan(lambda c, x: (c + x, None), 0.0, xs))(
        np.ones(3, np.float32))
    assert c.dtype == np.float32 and float(c) == 3.0


def test_scan_carry_type_error_names_leaf_and_types():
    init = {"h": np.zeros(3), "n": 0}
    with pytest.raises(TypeError) as e:
        lax.scan(lambda c, x: ({"h": c["h"].astype(np.float32), "n": c["n"]}, x), init,
                 np.ones(2))
    msg = str(e.value)
    assert "carry['h']" in msg and "f64[3]" in msg and "f32[3]" in msg
    assert "test_control_flow.py" in msg
    with pytest.raises(TypeError, match=r"f64\[3\].*f64\[4\]"):
        lax.scan(lambda c, x: (fnp.ones(4), x), np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match=r"xs\['a'\]: 2, xs\['b'\]: 3"):
        lax.scan(lambda c, x: (c, x), 0.0, {"a": np.ones(2), "b": np.ones(3)})


def test_scan_chained_sums_of_loop_free_terms(backend):
    # ((c + x) + k) + k with x, k known before the loop: the lowering's hoisting pass regroups
    # both sums (c + (x + k)) + k -> c + ((x + k) + k); the second regrouping used to read
    # the first's removed inner sum (KeyError in the CPU lowering; seen in the RNN's
    # second-order reverse mode).
    def f(c0, xs):
        def body(c, x):
            k = fnp.sin(x)
            return ((c + x) + k) + k, None
        return lax.scan(body, c0, xs)[0]

    xs = np.linspace(0.1, 1.0, 4)
    ref = 0.5
    for x in xs:
        ref = ((ref + x) + np.sin(x)) + np.sin(x)
    _allclose(backend(f)(0.5, xs), ref, rtol=1e-12)


def test_scan_closure_over_traced_values_is_hoisted(backend):
    # The body closes over w, which is a tracer of grad and of make_jaxpr.
    def f(w, xs):
        return lax.scan(lambda c, x: (c * w + x, None), 0.0, xs)[0]

    xs = RNG.standard_normal(4)
    closed = _typecheck(f, 0.7, xs)
    scan_eqn = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"][0]
    assert scan_eqn.params["num_consts"] == 1
    assert all(not isinstance(c, ft.core.Tracer) for c in scan_eqn.params["jaxpr"].consts)
    check_grads(backend.jit(f), (0.7, xs), order=2)


# ---------------------------------------------------------------------------------------------
# Reverse mode through scan: a tanh RNN


def _rnn_loss(params, h0, xs):
    W, U = params["W"], params["U"]

    def step(h, x):
        h = fnp.tanh(_matvec(W, h) + _matvec(U, x))
        return h, fnp.sum(h * h)

    h, ys = lax.scan(step, h0, xs)
    return fnp.sum(h) + fnp.sum(ys)


def _rnn_loss_unrolled(params, h0, xs):
    h, total = h0, 0.0
    for t in range(xs.shape[0]):
        h = fnp.tanh(_matvec(params["W"], h) + _matvec(params["U"], xs[t]))
        total = total + fnp.sum(h * h)
    return fnp.sum(h) + total


def _rnn_args(hidden=3, inp=2, steps=5):
    params = {"W": RNG.standard_normal((hidden, hidden)) * 0.5,
              "U": RNG.standard_normal((hidden, inp)) * 0.5}
    return params, RNG.standard_normal(hidden) * 0.1, RNG.standard_normal((steps, inp))


def test_grad_rnn_scan_against_finite_differences(backend):
    params, h0, xs = _rnn_args()
    check_grads(backend.jit(_rnn_loss), (params, h0, xs), order=2, modes=("fwd", "rev"))
    g = backend(ft.grad(_rnn_loss))(params, h0, xs)
    g_ref = ft.grad(_rnn_loss_unrolled)(params, h0, xs)
    _allclose(g["W"], g_ref["W"])
    _allclose(g["U"], g_ref["U"])
    for f in (ft.grad(_rnn_loss), ft.grad(_rnn_loss, argnums=(0, 1, 2))):
        _typecheck(f, params, h0, xs)


def test_grad_scan_stores_only_per_step_residuals():
    # The weights are loop invariant: the forward scan must not stack a copy per step.
    params, h0, xs = _rnn_args(hidden=4, inp=3, steps=6)
    closed = _typecheck(ft.grad(_rnn_loss), params, h0, xs)
    fwd = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"][0]
    stacked_shapes = [v.aval.shape for v in fwd.outvars]
    assert (6, 4, 4) not in stacked_shapes and (6, 4, 3) not in stacked_shapes
    assert (6, 3) not in stacked_shapes[1:]  # xs slices are read from xs, not copied


def test_jvp_and_linearize_through_scan(backend):
    params, h0, xs = _rnn_args()
    t = {"W": np.ones_like(params["W"]), "U": np.zeros_like(params["U"])}
    y, dy = backend(lambda p, t: ft.jvp(lambda q: _rnn_loss(q, h0, xs), (p,), (t,)))(params, t)
    y_ref, dy_ref = ft.jvp(lambda p: _rnn_loss_unrolled(p, h0, xs), (params,), (t,))
    _allclose(y, y_ref)
    _allclose(dy, dy_ref)
    y2, f_jvp = ft.linearize(backend.jit(lambda p: _rnn_loss(p, h0, xs)), params)
    _allclose(y2, y_ref)
    _allclose(ft.device_get(f_jvp(t)), dy_ref)
    ft.typecheck_jaxpr(f_jvp.jaxpr)
    _typecheck(lambda p, t: ft.jvp(lambda q: _rnn_loss(q, h0, xs), (p,), (t,)), params, t)


def test_reverse_scan_gradients(backend):
    def f(xs):
        c, ys = lax.scan(lambda c, x: (c * fnp.sin(x), c + x), 1.0, xs, reverse=True)
        return c + fnp.sum(ys * ys)

    def f_ref(xs):
        c, total = 1.0, 0.0
        for i in reversed(range(xs.shape[0])):
            total = total + (c + xs[i]) ** 2
            c = c * fnp.sin(xs[i])
        return c + total

    xs = RNG.standard_normal(5)
    _allclose(backend(f)(xs), f_ref(xs))
    _allclose(backend(ft.grad(f))(xs), ft.grad(f_ref)(xs))
    check_grads(backend.jit(f), (xs,), order=2)
    _typecheck(ft.grad(f), xs)


def test_hessian_through_scan(backend):
    def f(x):
        return lax.scan(lambda c, xi: (fnp.sin(c) * xi + c * c, None), 0.3, x)[0]

    def f_ref(x):
        c = 0.3
        for i in range(x.shape[0]):
            c = fnp.sin(c) * x[i] + c * c
        return c

    x = RNG.standard_normal(4) * 0.5
    _allclose(backend(ft.hessian(f))(x), ft.hessian(f_ref)(x), rtol=1e-8)
    _typecheck(ft.hessian(f), x)
    _typecheck(ft.jacrev(ft.jacrev(f)), x)


def test_grad_of_vmap_of_scan_and_vmap_of_grad(backend):
    def f(w, xs):
        return lax.scan(lambda c, x: (fnp.tanh(c * w + x), c), fnp.zeros_like(w), xs)[0]

    xs = RNG.standard_normal((4, 3))
    w = RNG.standard_normal(3)
    loss = lambda w: fnp.sum(ft.vmap(f, in_axes=(None, 1))(w, xs))
    loss_ref = lambda w: sum(fnp.sum(f(w, xs[:, i])) for i in range(3))
    _allclose(backend(loss)(w), loss_ref(w))
    _allclose(backend(ft.grad(loss))(w), ft.grad(loss_ref)(w))
    check_grads(backend.jit(loss), (w,), order=2)
    _typecheck(ft.grad(loss), w)
    ws = RNG.standard_normal((2, 3))
    g = backend(ft.vmap(ft.grad(lambda w: fnp.sum(f(w, xs)))))(ws)
    _allclose(g, np.stack([ft.grad(lambda w: fnp.sum(f(w, xs)))(wi) for wi in ws]))
    _typecheck(ft.vmap(ft.grad(lambda w: fnp.sum(f(w, xs)))), ws)


def test_vmap_scan_batched_xs_consts_and_carry(backend):
    def f(w, c0, xs):
        return lax.scan(lambda c, x: (c * w + x, c * x), c0, xs)

    w, c0, xs = RNG.standard_normal(3), RNG.standard_normal(3), RNG.standard_normal((4, 3))
    for in_axes in [(0, None, 1), (None, 0, 1), (0, 0, None), (None, None, 1)]:
        args = [w, c0, xs[:, 0] if in_axes[2] is None else xs]
        if in_axes[0] is None:
            args[0] = 0.9
        if in_axes[1] is None:
            args[1] = 0.1
        bf = ft.vmap(f, in_axes=in_axes)
        c, ys = backend(bf)(*args)
        refs = [f(*[a if ax is None else np.take(a, i, axis=ax)
                    for a, ax in zip(args, in_axes)]) for i in range(3)]
        _allclose(c, np.stack([r[0] for r in refs]))
        _allclose(ys, np.stack([r[1] for r in refs]))
        _typecheck(bf, *args)


def test_nested_scan_and_cond_in_scan_gradients(backend):
    def nest(x):
        def outer(c, xi):
            inner = lax.scan(lambda d, y: (d * fnp.cos(y) + c, d), xi, x)[0]
            return c + inner, inner
        return lax.scan(outer, 0.5, x)[0]

    def cond_in_scan(x):
        def step(c, xi):
            c = lax.cond(xi > 0, lambda c: c * xi, lambda c: c + fnp.sin(xi), c)
            return c, c
        return fnp.sum(lax.scan(step, 1.0, x)[1])

    x = RNG.standard_normal(4)
    for f in (nest, cond_in_scan):
        check_grads(backend.jit(f), (x,), order=2)
        _typecheck(ft.grad(f), x)
        _typecheck(ft.vmap(ft.grad(f)), np.stack([x, -x]))
        _allclose(backend(ft.vmap(ft.grad(f)))(np.stack([x, -x])),
                  np.stack([ft.grad(f)(x), ft.grad(f)(-x)]))


# ---------------------------------------------------------------------------------------------
# cond and switch


def test_cond_eager_is_python_branch_and_traced_matches(backend):
    f = lambda x, y: lax.cond(x > 0, lambda a, b: a * b, lambda a, b: a - b, x, y)
    for x in (-1.5, 2.0):
        expected = x * 3.0 if x > 0 else x - 3.0
        _allclose(backend(f)(x, 3.0), expected)
        _allclose(_via_jaxpr(f, x, 3.0)[0], expected)
    assert "cond" in _prims(ft.make_jaxpr(f)(1.0, 2.0))


def test_cond_pytrees_and_numeric_predicate(backend):
    def f(p, ops):
        return lax.cond(p, lambda o: {"s": o[0] + o[1], "d": o[0]},
                        lambda o: {"s": o[0] - o[1], "d": o[1]}, ops)

    ops = (np.ones(2), np.full(2, 3.0))
    for p in (0.0, 2.0):
        expected = ({"s": ops[0] + ops[1], "d": ops[0]} if p else
                    {"s": ops[0] - ops[1], "d": ops[1]})
        out = _via_jaxpr(f, p, ops)
        _allclose(out[0], expected["d"])
        _allclose(out[1], expected["s"])
        got = backend(f)(p, ops)
        _allclose(got["d"], expected["d"])
        _allclose(got["s"], expected["s"])


def test_cond_branch_type_errors():
    with pytest.raises(TypeError) as e:
        ft.make_jaxpr(lambda x: lax.cond(x > 0, lambda: np.zeros(3),
                                         lambda: np.zeros(3, np.float32)))(1.0)
    msg = str(e.value)
    assert "f64[3]" in msg and "f32[3]" in msg and "true_fun" in msg and "false_fun" in msg
    assert "test_control_flow.py" in msg
    with pytest.raises(TypeError, match="same tree structure"):
        ft.make_jaxpr(lambda x: lax.cond(x > 0, lambda: (x, x), lambda: x))(1.0)
    with pytest.raises(TypeError, match="scalar"):
        lax.cond(np.ones(2) > 0, lambda: 1.0, lambda: 2.0)
    # A Python number in one branch adopts the other branch's dtype.
    out = ft.make_jaxpr(lambda x: lax.cond(x > 0, lambda: x, lambda: 1.0))(np.float32(1.0))
    assert out.jaxpr.outvars[0].aval.dtype == np.float32


def test_switch_clamps_and_matches_python(backend):
    branches = [lambda x: x, lambda x: 2.0 * x, lambda x: fnp.sin(x)]
    f = lambda i, x: lax.switch(i, branches, x)
    for i in (-3, 0, 1, 2, 7):
        expected = branches[min(max(i, 0), 2)](1.3)
        _allclose(backend(f)(i, 1.3), expected)
        _allclose(_via_jaxpr(f, np.int64(i), 1.3)[0], expected)


def test_cond_and_switch_gradients_traced_predicate(backend):
    # Under make_jaxpr (and jit) the predicate is abstract, so the cond primitive's jvp,
    # partial evaluation and transpose rules all run; evaluate the gradient on both sides.
    f = lambda x: lax.cond(x > 0, lambda v: fnp.sin(v) * v, lambda v: fnp.cos(v) + v * v, x)
    df = lambda x: np.cos(x) * x + np.sin(x) if x > 0 else -np.sin(x) + 2.0 * x
    d2f = lambda x: 2.0 * np.cos(x) - np.sin(x) * x if x > 0 else 2.0 - np.cos(x)
    g = _typecheck(ft.grad(f), 1.0)
    h = _typecheck(ft.grad(ft.grad(f)), 1.0)
    for x in (-0.7, 0.4):
        _allclose(eval_jaxpr(g.jaxpr, g.consts, x)[0], df(x))
        _allclose(backend(ft.grad(f))(x), df(x))
        _allclose(eval_jaxpr(h.jaxpr, h.consts, x)[0], d2f(x))
        _allclose(backend(ft.grad(ft.grad(f)))(x), d2f(x))
    branches = [lambda v, w: v * w, lambda v, w: fnp.exp(v) + w, lambda v, w: fnp.sin(v * w)]
    s = lambda i, v, w: lax.switch(i, branches, v, w)
    gs = _typecheck(ft.grad(s, argnums=(1, 2)), np.int64(0), 0.3, 0.8)
    for i in range(3):
        ref = ft.grad(branches[i], argnums=(0, 1))(0.3, 0.8)
        for got in (eval_jaxpr(gs.jaxpr, gs.consts, np.int64(i), 0.3, 0.8),
                    backend(ft.grad(s, argnums=(1, 2)))(np.int64(i), 0.3, 0.8)):
            _allclose(got[0], ref[0])
            _allclose(got[1], ref[1])


def test_cond_gradient_under_vmap_with_batched_predicate(backend):
    def f(w, x):
        return lax.cond(x > 0, lambda: fnp.sin(w * x), lambda: w * w)

    xs = np.array([-1.0, 0.5, 2.0])
    got = backend(ft.vmap(ft.grad(f), in_axes=(None, 0)))(0.7, xs)
    _allclose(got, [ft.grad(f)(0.7, x) for x in xs])
    _typecheck(ft.vmap(ft.grad(f), in_axes=(None, 0)), 0.7, xs)
    check_grads(backend.jit(lambda w: fnp.sum(ft.vmap(f, in_axes=(None, 0))(w, xs))), (0.7,),
                order=2)


def test_vmap_cond_batched_predicate_is_select(backend):
    f = lambda x, y: lax.cond(x > 0, lambda a, b: a * b, lambda a, b: (a - b) * 2.0, x, y)
    xs, ys = np.array([-1.0, 2.0, 0.5, -3.0]), np.array([3.0, 4.0, -1.0, 2.0])
    out = backend(ft.vmap(f))(xs, ys)
    _allclose(out, [f(x, y) for x, y in zip(xs, ys)])
    closed = _typecheck(ft.vmap(f), xs, ys)
    assert "select_n" in _prims(closed) and "cond" not in _prims(closed)
    # An unbatched predicate stays a cond with batched branches.
    out = backend(ft.vmap(f, in_axes=(None, 0)))(2.0, ys)
    _allclose(out, [f(2.0, y) for y in ys])
    closed = ft.make_jaxpr(lambda p, y: ft.vmap(lambda yy: f(p, yy))(y))(2.0, ys)
    assert "cond" in _prims(closed)


def test_vmap_switch_batched_index(backend):
    branches = [lambda x: x, lambda x: x * 2.0, lambda x: fnp.sin(x)]
    f = lambda i, x: lax.switch(i, branches, x)
    idx, xs = np.array([0, 1, 2, 7, -1]), np.arange(5.0)
    _allclose(backend(ft.vmap(f))(idx, xs), [f(i, x) for i, x in zip(idx, xs)])
    _typecheck(ft.vmap(f), idx, xs)
    _typecheck(ft.vmap(ft.grad(f, argnums=1)), idx, xs)
    # index 7 clamps to the last branch (d sin = cos), -1 to the first (identity)
    _allclose(backend(ft.vmap(ft.grad(f, argnums=1)))(idx, xs),
              [1.0, 2.0, np.cos(2.0), np.cos(3.0), 1.0])


# ---------------------------------------------------------------------------------------------
# while_loop and fori_loop


def _newton_sqrt(a):
    def body(c):
        x, i = c
        return 0.5 * (x + a / x), i + 1
    return lax.while_loop(lambda c: c[1] < 20, body, (a, 0))[0]


def test_while_loop_matches_python(backend):
    f = lambda x: lax.while_loop(lambda v: v < 10.0, lambda v: v * 1.5 + 1.0, x)

    def ref(v):
        while v < 10.0:
            v = v * 1.5 + 1.0
        return v

    for x in (0.5, 3.0, 12.0):
        _allclose(backend(f)(x), ref(x))
        _allclose(_via_jaxpr(f, x)[0], ref(x))
    counted = backend(lambda c0: lax.while_loop(lambda c: c[0] < 100,
                                                lambda c: (c[0] * 2, c[1] + 1), c0))((1, 0))
    assert (int(counted[0]), int(counted[1])) == (128, 7)


def test_while_loop_max_steps_stops_early(backend):
    out = backend(lambda v0: lax.while_loop(lambda v: v < 1000, lambda v: v + 1, v0,
                                            max_steps=7))(0)
    assert int(out) == 7
    out = _via_jaxpr(lambda x: lax.while_loop(lambda v: v < 1000.0, lambda v: v + 1.0, x,
                                              max_steps=5), 0.0)
    _allclose(out[0], 5.0)
    _allclose(backend(lambda x: lax.while_loop(lambda v: v < 1000.0, lambda v: v + 1.0, x,
                                               max_steps=5))(0.0), 5.0)


def test_while_loop_carry_errors():
    with pytest.raises(TypeError) as e:
        lax.while_loop(lambda c: c["x"] < 3, lambda c: {"x": c["x"] + fnp.ones(2)},
                       {"x": 0.0})
    assert "carry['x']" in str(e.value) and "f64[2]" in str(e.value)
    with pytest.raises(TypeError, match="boolean scalar"):
        lax.while_loop(lambda c: c, lambda c: c, 1.0)


def test_jvp_newton_sqrt_while_loop(backend):
    for a in (2.0, 9.0):
        y, dy = backend(lambda a, t: ft.jvp(_newton_sqrt, (a,), (t,)))(a, 1.0)
        _allclose(y, np.sqrt(a))
        _allclose(dy, 0.5 / np.sqrt(a))
    check_grads(backend.jit(_newton_sqrt), (3.0,), order=2, modes=("fwd",))
    _typecheck(lambda a: ft.jvp(_newton_sqrt, (a,), (1.0,)), 2.0)
    y, f_jvp = ft.linearize(backend.jit(_newton_sqrt), 4.0)
    _allclose(ft.device_get(y), 2.0)
    _allclose(ft.device_get(f_jvp(1.0)), 0.25)
    ft.typecheck_jaxpr(f_jvp.jaxpr)
    jac = backend(ft.jacfwd(lambda v: ft.vmap(_newton_sqrt)(v)))(np.array([1.0, 4.0]))
    _allclose(jac, np.diag([0.5, 0.25]))


def test_grad_unbounded_while_explains_max_steps():
    with pytest.raises(ValueError, match="max_steps"):
        ft.grad(_newton_sqrt)(2.0)


def _bounded(a):
    def body(c):
        x, i = c
        return x * fnp.cos(x) + a, i + 1.0
    return lax.while_loop(lambda c: c[1] < a * 3.0, body, (a, 0.0), max_steps=10)[0]


def _bounded_unrolled(a):
    x, i = a, 0.0
    for _ in range(10):
        if not i < a * 3.0:
            break
        x, i = x * fnp.cos(x) + a, i + 1.0
    return x


@functools.lru_cache(maxsize=None)
def _bounded_refs(a):
    """Value, first and second derivative of the unrolled loop at ``a`` (computed once: every
    back end compares against them)."""
    return (float(_bounded_unrolled(a)), float(ft.grad(_bounded_unrolled)(a)),
            float(ft.grad(ft.grad(_bounded_unrolled))(a)))


def test_bounded_while_gradients_against_unrolled_loop(backend):
    f, df, d2f = backend(_bounded), backend(ft.grad(_bounded)), backend(ft.grad(ft.grad(_bounded)))
    for a in (0.5, 1.2, 2.5, 4.0):  # 2, 4, 8 and (capped) 10 iterations
        ref, dref, d2ref = _bounded_refs(a)
        _allclose(f(a), ref)
        _allclose(df(a), dref)
        _allclose(d2f(a), d2ref)
    check_grads(backend.jit(_bounded), (1.2,), order=2)
    _typecheck(ft.grad(_bounded), 1.2)
    _typecheck(ft.hessian(_bounded), 1.2)


def test_bounded_while_newton_gradient(backend):
    def newton(a):
        body = lambda x: 0.5 * (x + a / x)
        return lax.while_loop(lambda x: fnp.abs(x * x - a) > 1e-12, body, a, max_steps=40)

    for a in (2.0, 7.0):
        _allclose(backend(ft.grad(newton))(a), 0.5 / np.sqrt(a), rtol=1e-7)


def test_vmap_while_batched_predicate_runs_until_all_done(backend):
    def f(x):
        return lax.while_loop(lambda c: c[0] < 10.0, lambda c: (c[0] * 2.0, c[1] + 1), (x, 0))

    xs = np.array([0.5, 3.0, 20.0, 1.0])
    v, n = backend(ft.vmap(f))(xs)
    refs = [f(x) for x in xs]
    _allclose(v, [r[0] for r in refs])
    assert n.tolist() == [int(r[1]) for r in refs]
    _typecheck(ft.vmap(f), xs)
    # Batched bound, unbatched initial value.
    g = lambda lim: lax.while_loop(lambda c: c < lim, lambda c: c + 1.0, 0.0)
    _allclose(backend(ft.vmap(g))(np.array([2.5, 0.0, 4.0])), [3.0, 0.0, 4.0])


def test_vmap_and_grad_of_bounded_while(backend):
    a = np.array([0.5, 1.2, 2.5])
    _allclose(backend(ft.vmap(_bounded))(a), [_bounded_refs(x)[0] for x in a])
    _allclose(backend(ft.vmap(ft.grad(_bounded)))(a), [_bounded_refs(x)[1] for x in a])
    loss = lambda a: fnp.sum(ft.vmap(_bounded)(a))
    _allclose(backend(ft.grad(loss))(a), [_bounded_refs(x)[1] for x in a])
    _typecheck(ft.grad(loss), a)
    _typecheck(ft.vmap(ft.grad(_bounded)), a)


def test_fori_loop_static_is_scan_traced_is_while(backend):
    body = lambda i, v: v * fnp.cos(v) + i
    f = lambda x: lax.fori_loop(1, 5, body, x)
    ref = 0.3
    for i in range(1, 5):
        ref = ref * np.cos(ref) + i
    _allclose(backend(f)(0.3), ref)
    assert "scan" in _prims(_typecheck(f, 0.3))
    check_grads(backend.jit(f), (0.3,), order=2)
    g = lambda lo, hi, x: lax.fori_loop(lo, hi, body, x)
    closed = _typecheck(g, 1, 5, 0.3)
    assert "while" in _prims(closed)
    _allclose(eval_jaxpr(closed.jaxpr, closed.consts, 1, 5, 0.3)[0], ref)
    _allclose(backend(g)(1, 5, 0.3), ref)
    # The loop index is weakly typed: it does not promote a float32 carry.
    out = backend(lambda x: lax.fori_loop(0, 3, lambda i, x: x + i, x))(np.float32(1))
    assert out.dtype == np.float32 and float(out) == 4.0


# ---------------------------------------------------------------------------------------------
# map


@pytest.mark.parametrize("batch_size", [None, 2, 5, 8])
def test_map_matches_python(backend, batch_size):
    xs = {"a": RNG.standard_normal((5, 2)), "b": np.arange(5.0)}
    f = lambda d: fnp.sum(d["a"] * d["b"]) + fnp.sin(d["b"])
    out = backend(lambda xs: lax.map(f, xs, batch_size=batch_size))(xs)
    _allclose(out, [f({"a": xs["a"][i], "b": xs["b"][i]}) for i in range(5)])
    loss = lambda a: fnp.sum(lax.map(lambda v: fnp.sin(v) * v, a, batch_size=batch_size))
    check_grads(backend.jit(loss), (xs["b"],), order=1)
    _typecheck(ft.grad(loss), xs["b"])


# ---------------------------------------------------------------------------------------------
# Python control flow on traced values


def test_python_if_under_jit_like_tracing_suggests_lax_cond():
    def f(x):
        if x > 0:
            return x
        return -x

    with pytest.raises(ft.core.ConcretizationTypeError) as e:
        ft.make_jaxpr(f)(1.0)
    msg = str(e.value)
    assert "lax.cond" in msg and "test_control_flow.py" in msg and "static_argnums" in msg
    with pytest.raises(ft.core.ConcretizationTypeError) as e:
        ft.vmap(f)(np.ones(2))
    assert "lax.cond" in str(e.value) and "test_control_flow.py" in str(e.value)


# ---------------------------------------------------------------------------------------------
# jit


def test_control_flow_under_jit_matches_python(backend):
    # One of each construct side by side (the sections above test each one in depth).
    xs = RNG.standard_normal(5)
    scan_f = lambda xs: lax.scan(_cumulative, 0.5, xs)
    for got, ref in zip(backend(scan_f)(xs), _cumulative_ref(0.5, xs)):
        _allclose(got, ref)
    cond_f = lambda x: lax.cond(x > 0, fnp.sin, fnp.cos, x)
    cond_ref = lambda x: np.sin(x) if x > 0 else np.cos(x)
    switch_f = lambda i, x: lax.switch(i, [fnp.sin, fnp.cos, fnp.exp], x)
    while_f = lambda x: lax.while_loop(lambda v: v < 10.0, lambda v: v * 1.5 + 1.0, x)
    fori_f = lambda x: lax.fori_loop(0, 4, lambda i, v: v * fnp.cos(v) + i, x)
    for x in (-0.8, 0.6):
        _allclose(backend(cond_f)(x), cond_ref(x))
        v = x
        while v < 10.0:
            v = v * 1.5 + 1.0
        _allclose(backend(while_f)(x), v)
        v = x
        for i in range(4):
            v = v * np.cos(v) + i
        _allclose(backend(fori_f)(x), v)
        for i, ref in enumerate((np.sin, np.cos, np.exp)):
            _allclose(backend(switch_f)(i, x), ref(x))
    params, h0, xs2 = _rnn_args()
    g = backend(ft.grad(_rnn_loss))(params, h0, xs2)
    g_ref = ft.grad(_rnn_loss_unrolled)(params, h0, xs2)
    _allclose(g["W"], g_ref["W"])
    _allclose(ft.device_get(ft.grad(backend.jit(_bounded))(1.2)), _bounded_refs(1.2)[1])
    _allclose(backend(ft.vmap(cond_f))(np.array([-1.0, 2.0])), [cond_ref(-1.0), cond_ref(2.0)])


def test_bounded_while_stores_one_carry_per_step(backend):
    # The body computes several intermediates of the carry's size; reverse mode must keep
    # only the per-step carry (the body is checkpointed), not every intermediate.
    def loop(a):
        def body(c):
            x, i = c
            junk = fnp.tanh(x) * fnp.exp(-x) + fnp.sin(x) * x  # intermediates, not needed
            return (0.5 * (x + a / x) + 0.0 * junk, i + 1)
        return lax.while_loop(lambda c: c[1] < 20, body, (a, 0), max_steps=25)[0]

    a = fnp.linspace(1.0, 4.0, 100)
    _, f_jvp = ft.linearize(lambda a: fnp.sum(loop(a)), a)
    per_step = [c for c in f_jvp.jaxpr.consts if np.shape(c) == (25, 100)]
    assert len(per_step) <= 3, f"{len(per_step)} per-step residual arrays stored"
    np.testing.assert_allclose(backend(ft.grad(lambda a: fnp.sum(loop(a))))(a),
                               0.5 / np.sqrt(a), rtol=1e-10)
