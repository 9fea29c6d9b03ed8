"""functrax.optim: each optimizer's first steps against the update equations written out in
numpy, convergence on a convex quadratic, schedules' values, and traced (jitted) steps."""
import numpy as np
import pytest

import functrax
import functrax.numpy as fnp
from functrax import optim
from functrax.core import eval_jaxpr
from functrax.tree_util import tree_flatten, tree_map

P0 = {"w": np.array([1.0, -2.0, 0.5]), "b": (np.array([[0.3, -0.1]]),)}
GRADS = [tree_map(lambda p, i=i: np.cos(p * (i + 1)) + 0.1 * i, P0) for i in range(3)]


def _run(opt, n=3, params=P0):
    state = opt.init(params)
    out = []
    for g in GRADS[:n]:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
        out.append(params)
    return out


def _ref_run(step_fn, n=3):
    """step_fn(p, g, state, t) -> (p, state) on flat numpy leaves, t = 1, 2, ..."""
    params = [np.asarray(x, np.float64) for x in tree_flatten(P0)[0]]
    states = [None] * len(params)
    out = []
    for t, g in enumerate(GRADS[:n], start=1):
        gl = tree_flatten(g)[0]
        for i, (p, gi) in enumerate(zip(params, gl)):
            params[i], states[i] = step_fn(p, np.asarray(gi), states[i], t)
        out.append(list(params))
    return out


def _check(opt, step_fn):
    got = _run(opt)
    want = _ref_run(step_fn)
    for g, w in zip(got, want):
        for a, b in zip(tree_flatten(g)[0], w):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_sgd():
    _check(optim.sgd(0.1), lambda p, g, s, t: (p - 0.1 * g, s))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum(nesterov):
    def step(p, g, m, t):
        m = g if m is None else g + 0.9 * m
        d = g + 0.9 * m if nesterov else m
        return p - 0.1 * d, m
    _check(optim.sgd(0.1, momentum=0.9, nesterov=nesterov), step)


def _adam_step(lr, b1, b2, eps, wd=0.0):
    def step(p, g, s, t):
        m, v = s if s is not None else (np.zeros_like(p), np.zeros_like(p))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh = m / (1 - b1 ** t)
        vh = v / (1 - b2 ** t)
        return p - lr * (mh / (np.sqrt(vh) + eps) + wd * p), (m, v)
    return step


def test_adam():
    _check(optim.adam(0.01, b1=0.8, b2=0.95, eps=1e-6), _adam_step(0.01, 0.8, 0.95, 1e-6))


def test_adamw():
    _check(optim.adamw(0.01, weight_decay=0.1), _adam_step(0.01, 0.9, 0.999, 1e-8, wd=0.1))


def test_adamw_mask():
    mask = {"w": True, "b": (False,)}
    got = _run(optim.adamw(0.01, weight_decay=0.5, mask=mask), n=1)[0]
    plain = _run(optim.adam(0.01), n=1)[0]
    np.testing.assert_allclose(got["b"][0], plain["b"][0])
    np.testing.assert_allclose(got["w"], plain["w"] - 0.01 * 0.5 * P0["w"])


def test_rmsprop():
    def step(p, g, v, t):
        v = (0.0 if v is None else v)
        v = 0.9 * v + 0.1 * g * g
        return p - 0.01 * g / np.sqrt(v + 1e-8), v
    _check(optim.rmsprop(0.01), step)


def test_rmsprop_centered_momentum():
    def step(p, g, s, t):
        mu, nu, tr = s if s is not None else (0.0, 0.0, 0.0)
        mu = 0.9 * mu + 0.1 * g
        nu = 0.9 * nu + 0.1 * g * g
        u = -0.01 * g / np.sqrt(nu - mu ** 2 + 1e-8)
        tr = u + 0.5 * tr
        return p + tr, (mu, nu, tr)
    _check(optim.rmsprop(0.01, centered=True, momentum=0.5), step)


def test_adagrad():
    def step(p, g, s, t):
        s = (0.1 if s is None else s) + g * g
        return p - 0.1 * g / np.sqrt(s + 1e-7), s
    _check(optim.adagrad(0.1), step)


def test_clip_by_global_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    clip = optim.clip_by_global_norm(1.0)
    u, _ = clip.update(g, clip.init(g))
    np.testing.assert_allclose(optim.global_norm(u), 1.0)
    np.testing.assert_allclose(u["a"], [0.6, 0.0])
    small = tree_map(lambda x: x / 100, g)
    u, _ = clip.update(small, clip.init(small))
    np.testing.assert_allclose(u["a"], small["a"])
    zero = tree_map(np.zeros_like, g)
    u, _ = clip.update(zero, clip.init(zero))
    assert np.all(np.isfinite(u["a"]))
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(1.0))
    params = optim.apply_updates(g, opt.update(g, opt.init(g))[0])
    np.testing.assert_allclose(params["b"], [4.0 - 0.8])


def test_clip_and_scale():
    g = {"a": np.array([3.0, -0.2])}
    u, _ = optim.clip(0.5).update(g, optim.clip(0.5).init(g))
    np.testing.assert_allclose(u["a"], [0.5, -0.2])
    u, _ = optim.scale(-2.0).update(g, optim.EmptyState())
    np.testing.assert_allclose(u["a"], [-6.0, 0.4])


def test_schedule_learning_rate_counts_steps():
    sched = optim.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    seen = []

    def step(p, g, s, t):
        lr = 0.1 * 0.5 ** (t - 1)
        seen.append(lr)
        return p - lr * g, s
    _check(optim.sgd(sched), step)
    opt = optim.adam(sched)
    state = opt.init(P0)
    for g in GRADS:
        _, state = opt.update(g, state, P0)
    assert int(state[1].count) == 3 and int(state[0].count) == 3


def test_float32_params_stay_float32():
    p = {"w": np.ones(3, np.float32)}
    for opt in (optim.adam(0.1), optim.sgd(optim.cosine_decay_schedule(0.1, 10), 0.9),
                optim.rmsprop(0.1), optim.adagrad(0.1), optim.adamw(0.1)):
        state = opt.init(p)
        u, state = opt.update({"w": np.full(3, 0.5, np.float32)}, state, p)
        assert u["w"].dtype == np.float32
        assert optim.apply_updates(p, u)["w"].dtype == np.float32


@pytest.mark.parametrize("opt", [optim.sgd(0.1), optim.sgd(0.05, momentum=0.9),
                                 optim.sgd(0.05, momentum=0.9, nesterov=True),
                                 optim.adam(0.1), optim.adamw(0.1, weight_decay=1e-4),
                                 optim.rmsprop(0.02), optim.adagrad(0.5),
                                 optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1)),
                                 optim.adam(optim.warmup_cosine_decay_schedule(
                                     0.0, 0.2, 10, 300, 1e-3))],
                         ids=["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop",
                              "adagrad", "clip+adam", "adam+warmup_cosine"])
def test_convergence_on_convex_quadratic(opt):
    a = np.array([[3.0, 0.5], [0.5, 1.0]])
    target = np.array([1.0, -2.0])

    def loss(p):
        d = p["x"] - target
        return 0.5 * fnp.sum(d * (a @ d)) + 0.5 * fnp.sum((p["y"] - 3.0) ** 2)

    params = {"x": np.zeros(2), "y": np.array(0.0)}
    state = opt.init(params)

    def step(params, state):
        g = functrax.grad(loss)(params)
        updates, state = opt.update(g, state, params)
        return optim.apply_updates(params, updates), state

    for _ in range(300):
        params, state = step(params, state)
    np.testing.assert_allclose(params["x"], target, atol=2e-2)
    np.testing.assert_allclose(params["y"], 3.0, atol=2e-2)


def test_whole_step_traces_and_matches_eager():
    opt = optim.adam(optim.exponential_decay(0.1, 5, 0.9))

    def loss(p):
        return fnp.sum((p["w"] - 1.0) ** 2)

    def step(params, state):
        g = functrax.grad(loss)(params)
        updates, state = opt.update(g, state, params)
        return optim.apply_updates(params, updates), state

    params = {"w": np.array([0.0, 3.0])}
    state = opt.init(params)
    closed = functrax.make_jaxpr(step)(params, state)
    functrax.typecheck_jaxpr(closed)
    leaves, treedef = tree_flatten((params, state))
    outs = eval_jaxpr(closed.jaxpr, closed.consts, *leaves)
    eager = step(params, state)
    for a, b in zip(outs, tree_flatten(eager)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    if callable(getattr(functrax, "jit", None)):
        jitted = functrax.jit(step)
        p, s = params, state
        for _ in range(3):
            p, s = jitted(p, s)
            params, state = step(params, state)
        np.testing.assert_allclose(p["w"], params["w"], rtol=1e-12)


def test_state_is_a_pytree_of_arrays():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.linear_schedule(
        0.1, 0.0, 10)))
    state = opt.init(P0)
    leaves = tree_flatten(state)[0]
    assert leaves and all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves)
    vmapped = functrax.vmap(lambda p: tree_flatten(opt.init(p))[0][0])(
        {"w": np.ones((4, 3)), "b": (np.ones((4, 1, 2)),)})
    assert vmapped.shape == (4,)


# --- schedules ----------------------------------------------------------------------------------

def _values(sched, steps):
    return np.array([float(sched(s)) for s in steps])


def test_constant_and_exponential():
    assert float(optim.constant_schedule(0.3)(17)) == 0.3
    s = optim.exponential_decay(1.0, 10, 0.5)
    np.testing.assert_allclose(_values(s, [0, 5, 10, 20]), [1.0, 0.5 ** 0.5, 0.5, 0.25])
    st = optim.exponential_decay(1.0, 10, 0.5, staircase=True)
    np.testing.assert_allclose(_values(st, [0, 9, 10, 19, 20]), [1, 1, 0.5, 0.5, 0.25])
    sb = optim.exponential_decay(1.0, 10, 0.5, transition_begin=5, end_value=0.3)
    np.testing.assert_allclose(_values(sb, [0, 5, 15, 100]), [1.0, 1.0, 0.5, 0.3])


def test_cosine_linear_polynomial():
    c = optim.cosine_decay_schedule(2.0, 100, alpha=0.1)
    steps = np.array([0, 25, 50, 100, 150])
    want = 2.0 * ((1 - 0.1) * 0.5 * (1 + np.cos(np.pi * np.minimum(steps, 100) / 100)) + 0.1)
    np.testing.assert_allclose(_values(c, steps), want)
    lin = optim.linear_schedule(1.0, 0.0, 10, transition_begin=2)
    np.testing.assert_allclose(_values(lin, [0, 2, 7, 12, 50]), [1.0, 1.0, 0.5, 0.0, 0.0])
    poly = optim.polynomial_schedule(1.0, 0.0, 2, 10)
    np.testing.assert_allclose(_values(poly, [0, 5, 10]), [1.0, 0.25, 0.0])


def test_warmup_join_piecewise():
    w = optim.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110,
                                           end_value=0.1)
    np.testing.assert_allclose(_values(w, [0, 5, 10, 60, 110, 200]),
                               [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1, 0.1], atol=1e-12)
    we = optim.warmup_exponential_decay_schedule(0.0, 1.0, 4, 2, 0.5)
    np.testing.assert_allclose(_values(we, [0, 2, 4, 6]), [0.0, 0.5, 1.0, 0.5])
    j = optim.join_schedules([optim.constant_schedule(1.0), optim.linear_schedule(2.0, 0.0, 4)],
                             [3])
    np.testing.assert_allclose(_values(j, [0, 2, 3, 5, 9]), [1.0, 1.0, 2.0, 1.0, 0.0])
    pc = optim.piecewise_constant_schedule(1.0, {5: 0.5, 10: 0.1})
    np.testing.assert_allclose(_values(pc, [0, 5, 9, 10]), [1.0, 0.5, 0.5, 0.05])
    with pytest.raises(ValueError, match="boundaries"):
        optim.join_schedules([optim.constant_schedule(1.0)], [3])


def test_schedules_trace_with_array_counts():
    s = optim.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100)
    closed = functrax.make_jaxpr(s)(np.int32(7))
    functrax.typecheck_jaxpr(closed)
    np.testing.assert_allclose(eval_jaxpr(closed.jaxpr, closed.consts, np.int32(7))[0], s(7))
    np.testing.assert_allclose(functrax.vmap(s)(np.arange(5, dtype=np.int32)),
                               _values(s, range(5)))


def test_errors():
    opt = optim.adamw(0.1)
    with pytest.raises(ValueError, match="need the parameters"):
        opt.update(P0, opt.init(P0))
    with pytest.raises(ValueError, match="state holds"):
        optim.adam(0.1).update(P0, (1,), P0)
    assert isinstance(optim.adam(0.1), optim.GradientTransformation)
    assert isinstance(optim.GradientTransformation, type) and issubclass(
        optim.GradientTransformation, tuple)
