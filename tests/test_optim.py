"""functrax.optim: each optimizer's first steps against the update equations written out in
numpy, convergence on a convex quadratic, schedules' values, and traced (jitted) steps.

Tests taking ``backend`` run the optimizer step (``update`` then ``apply_updates``) or the
schedule eagerly and under ``jit`` on every back end, against the same numpy references."""
import numpy as np
import pytest

import functrax
import functrax.numpy as fnp
from functrax import optim
from functrax.core import eval_jaxpr
from functrax.tree_util import tree_flatten, tree_map

P0 = {"w": np.array([1.0, -2.0, 0.5]), "b": (np.array([[0.3, -0.1]]),)}
GRADS = [tree_map(lambda p, i=i: np.cos(p * (i + 1)) + 0.1 * i, P0) for i in range(3)]


def _train_step(opt):
    def step(grads, state, params):
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state
    return step


def _run(opt, backend, n=3, params=P0):
    state = opt.init(params)
    step = backend(_train_step(opt))
    out = []
    for g in GRADS[:n]:
        params, state = step(g, state, params)
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


def _check(opt, step_fn, backend):
    got = _run(opt, backend)
    want = _ref_run(step_fn)
    for g, w in zip(got, want):
        for a, b in zip(tree_flatten(g)[0], w):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_sgd(backend):
    _check(optim.sgd(0.1), lambda p, g, s, t: (p - 0.1 * g, s), backend)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum(nesterov, backend):
    def step(p, g, m, t):
        m = g if m is None else g + 0.9 * m
        d = g + 0.9 * m if nesterov else m
        return p - 0.1 * d, m
    _check(optim.sgd(0.1, momentum=0.9, nesterov=nesterov), step, backend)


def _adam_step(lr, b1, b2, eps, wd=0.0):
    def step(p, g, s, t):
        m, v = s if s is not None else (np.zeros_like(p), np.zeros_like(p))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh = m / (1 - b1 ** t)
        vh = v / (1 - b2 ** t)
        return p - lr * (mh / (np.sqrt(vh) + eps) + wd * p), (m, v)
    return step


def test_adam(backend):
    _check(optim.adam(0.01, b1=0.8, b2=0.95, eps=1e-6), _adam_step(0.01, 0.8, 0.95, 1e-6),
           backend)


def test_adamw(backend):
    _check(optim.adamw(0.01, weight_decay=0.1), _adam_step(0.01, 0.9, 0.999, 1e-8, wd=0.1),
           backend)


def test_adamw_mask(backend):
    mask = {"w": True, "b": (False,)}
    got = _run(optim.adamw(0.01, weight_decay=0.5, mask=mask), backend, n=1)[0]
    plain = _run(optim.adam(0.01), backend, n=1)[0]
    np.testing.assert_allclose(got["b"][0], plain["b"][0])
    np.testing.assert_allclose(got["w"], plain["w"] - 0.01 * 0.5 * P0["w"])


def test_rmsprop(backend):
    def step(p, g, v, t):
        v = (0.0 if v is None else v)
        v = 0.9 * v + 0.1 * g * g
        return p - 0.01 * g / np.sqrt(v + 1e-8), v
    _check(optim.rmsprop(0.01), step, backend)


def test_rmsprop_centered_momentum(backend):
    def step(p, g, s, t):
        mu, nu, tr = s if s is not None else (0.0, 0.0, 0.0)
        mu = 0.9 * mu + 0.1 * g
        nu = 0.9 * nu + 0.1 * g * g
        u = -0.01 * g / np.sqrt(nu - mu ** 2 + 1e-8)
        tr = u + 0.5 * tr
        return p + tr, (mu, nu, tr)
    _check(optim.rmsprop(0.01, centered=True, momentum=0.5), step, backend)


def test_adagrad(backend):
    def step(p, g, s, t):
        s = (0.1 if s is None else s) + g * g
        return p - 0.1 * g / np.sqrt(s + 1e-7), s
    _check(optim.adagrad(0.1), step, backend)


def test_clip_by_global_norm(backend):
    g = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    clip = optim.clip_by_global_norm(1.0)
    clip_update = backend(clip.update)
    u, _ = clip_update(g, clip.init(g))
    np.testing.assert_allclose(backend(optim.global_norm)(u), 1.0)
    np.testing.assert_allclose(u["a"], [0.6, 0.0])
    small = tree_map(lambda x: x / 100, g)
    u, _ = clip_update(small, clip.init(small))
    np.testing.assert_allclose(u["a"], small["a"])
    zero = tree_map(np.zeros_like, g)
    u, _ = clip_update(zero, clip.init(zero))
    assert np.all(np.isfinite(u["a"]))
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(1.0))
    params, _ = backend(_train_step(opt))(g, opt.init(g), g)
    np.testing.assert_allclose(params["b"], [4.0 - 0.8])


def test_clipped_step_with_a_scalar_parameter(backend):
    # Regression: the global norm sums a 0-d leaf over no axes; the cpu back end's
    # whole-program (small-program) source once left that sum's result unnamed.
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1))
    params = {"x": np.zeros(2), "y": np.array(0.0)}
    g = {"x": np.array([3.0, 0.0]), "y": np.array(4.0)}
    new, _ = backend(_train_step(opt))(g, opt.init(params), params)
    np.testing.assert_allclose(new["x"], [-0.06, 0.0], rtol=1e-12)
    np.testing.assert_allclose(new["y"], -0.08, rtol=1e-12)


def test_clip_and_scale(backend):
    g = {"a": np.array([3.0, -0.2])}
    u, _ = backend(optim.clip(0.5).update)(g, optim.clip(0.5).init(g))
    np.testing.assert_allclose(u["a"], [0.5, -0.2])
    u, _ = backend(optim.scale(-2.0).update)(g, optim.EmptyState())
    np.testing.assert_allclose(u["a"], [-6.0, 0.4])


def test_schedule_learning_rate_counts_steps(backend):
    sched = optim.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    seen = []

    def step(p, g, s, t):
        lr = 0.1 * 0.5 ** (t - 1)
        seen.append(lr)
        return p - lr * g, s
    _check(optim.sgd(sched), step, backend)
    opt = optim.adam(sched)
    state = opt.init(P0)
    update = backend(opt.update)
    for g in GRADS:
        _, state = update(g, state, P0)
    assert int(state[1].count) == 3 and int(state[0].count) == 3


def test_float32_params_stay_float32(backend):
    p = {"w": np.ones(3, np.float32)}
    for opt in (optim.adam(0.1), optim.sgd(optim.cosine_decay_schedule(0.1, 10), 0.9),
                optim.rmsprop(0.1), optim.adagrad(0.1), optim.adamw(0.1)):
        state = opt.init(p)
        u, state = backend(opt.update)({"w": np.full(3, 0.5, np.float32)}, state, p)
        assert u["w"].dtype == np.float32
        assert backend(optim.apply_updates)(p, u)["w"].dtype == np.float32


CONVERGENCE = {
    "sgd": optim.sgd(0.1),
    "momentum": optim.sgd(0.05, momentum=0.9),
    "nesterov": optim.sgd(0.05, momentum=0.9, nesterov=True),
    "adam": optim.adam(0.1),
    "adamw": optim.adamw(0.1, weight_decay=1e-4),
    "rmsprop": optim.rmsprop(0.02),
    "adagrad": optim.adagrad(0.5),
    "clip+adam": optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1)),
    "adam+warmup_cosine": optim.adam(optim.warmup_cosine_decay_schedule(0.0, 0.2, 10, 300,
                                                                        1e-3)),
}
# Trained jitted on every back end: a traced momentum, a chain with a global-norm clip, a
# schedule of the traced count. The others' jitted steps are checked exactly against their
# update equations above (300 steps on the simulated CUDA back end cost seconds each).
JITTED_CONVERGENCE = ("nesterov", "clip+adam", "adam+warmup_cosine")


def _converge(opt, backend):
    a = np.array([[3.0, 0.5], [0.5, 1.0]])
    target = np.array([1.0, -2.0])

    def loss(p):
        d = p["x"] - target
        return 0.5 * fnp.sum(d * (a @ d)) + 0.5 * fnp.sum((p["y"] - 3.0) ** 2)

    params = {"x": np.zeros(2), "y": np.array(0.0)}
    state = opt.init(params)

    @backend
    def step(params, state):
        g = functrax.grad(loss)(params)
        updates, state = opt.update(g, state, params)
        return optim.apply_updates(params, updates), state

    for _ in range(300):
        params, state = step(params, state)
    np.testing.assert_allclose(params["x"], target, atol=2e-2)
    np.testing.assert_allclose(params["y"], 3.0, atol=2e-2)


@pytest.mark.parametrize("name", [n for n in CONVERGENCE if n not in JITTED_CONVERGENCE])
def test_convergence_on_convex_quadratic(name):
    _converge(CONVERGENCE[name], lambda f: f)


@pytest.mark.parametrize("name", JITTED_CONVERGENCE)
def test_jitted_training_converges(name, backend):
    # 300 calls of one jitted step: on the cpu back end the step tiers up to a single numba
    # function on the way (after SMALL_TIER_CALLS calls).
    _converge(CONVERGENCE[name], backend)


_WHOLE_OPT = optim.adam(optim.exponential_decay(0.1, 5, 0.9))


def _whole_step(params, state):
    g = functrax.grad(lambda p: fnp.sum((p["w"] - 1.0) ** 2))(params)
    updates, state = _WHOLE_OPT.update(g, state, params)
    return optim.apply_updates(params, updates), state


def test_whole_step_traces_and_matches_eager():
    params = {"w": np.array([0.0, 3.0])}
    state = _WHOLE_OPT.init(params)
    closed = functrax.make_jaxpr(_whole_step)(params, state)
    functrax.typecheck_jaxpr(closed)
    leaves, treedef = tree_flatten((params, state))
    outs = eval_jaxpr(closed.jaxpr, closed.consts, *leaves)
    eager = _whole_step(params, state)
    for a, b in zip(outs, tree_flatten(eager)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_whole_step_jitted_matches_eager(backend):
    params = {"w": np.array([0.0, 3.0])}
    state = _WHOLE_OPT.init(params)
    step = backend(_whole_step)
    p, s = params, state
    for _ in range(5):  # past the cpu back end's small-program tier-up (3 calls)
        p, s = step(p, s)
        params, state = _whole_step(params, state)
    for a, b in zip(tree_flatten((p, s))[0], tree_flatten((params, state))[0]):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_state_is_a_pytree_of_arrays(backend):
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.linear_schedule(
        0.1, 0.0, 10)))
    state = opt.init(P0)
    leaves = tree_flatten(state)[0]
    assert leaves and all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves)
    vmapped = backend(functrax.vmap(lambda p: tree_flatten(opt.init(p))[0][0]))(
        {"w": np.ones((4, 3)), "b": (np.ones((4, 1, 2)),)})
    assert vmapped.shape == (4,)


# --- schedules ----------------------------------------------------------------------------------

def _values(sched, steps, backend):
    # jitted, the count is a traced (weakly typed) integer, as in an optimizer's state
    sched = backend(sched)
    return np.array([float(sched(s)) for s in steps])


def test_constant_and_exponential(backend):
    assert float(backend(optim.constant_schedule(0.3))(17)) == 0.3
    s = optim.exponential_decay(1.0, 10, 0.5)
    np.testing.assert_allclose(_values(s, [0, 5, 10, 20], backend), [1.0, 0.5 ** 0.5, 0.5, 0.25])
    st = optim.exponential_decay(1.0, 10, 0.5, staircase=True)
    np.testing.assert_allclose(_values(st, [0, 9, 10, 19, 20], backend), [1, 1, 0.5, 0.5, 0.25])
    sb = optim.exponential_decay(1.0, 10, 0.5, transition_begin=5, end_value=0.3)
    np.testing.assert_allclose(_values(sb, [0, 5, 15, 100], backend), [1.0, 1.0, 0.5, 0.3])


def test_cosine_linear_polynomial(backend):
    c = optim.cosine_decay_schedule(2.0, 100, alpha=0.1)
    steps = np.array([0, 25, 50, 100, 150])
    want = 2.0 * ((1 - 0.1) * 0.5 * (1 + np.cos(np.pi * np.minimum(steps, 100) / 100)) + 0.1)
    np.testing.assert_allclose(_values(c, steps, backend), want)
    lin = optim.linear_schedule(1.0, 0.0, 10, transition_begin=2)
    np.testing.assert_allclose(_values(lin, [0, 2, 7, 12, 50], backend),
                               [1.0, 1.0, 0.5, 0.0, 0.0])
    poly = optim.polynomial_schedule(1.0, 0.0, 2, 10)
    np.testing.assert_allclose(_values(poly, [0, 5, 10], backend), [1.0, 0.25, 0.0])


def test_warmup_join_piecewise(backend):
    w = optim.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110,
                                           end_value=0.1)
    np.testing.assert_allclose(_values(w, [0, 5, 10, 60, 110, 200], backend),
                               [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1, 0.1], atol=1e-12)
    we = optim.warmup_exponential_decay_schedule(0.0, 1.0, 4, 2, 0.5)
    np.testing.assert_allclose(_values(we, [0, 2, 4, 6], backend), [0.0, 0.5, 1.0, 0.5])
    j = optim.join_schedules([optim.constant_schedule(1.0), optim.linear_schedule(2.0, 0.0, 4)],
                             [3])
    np.testing.assert_allclose(_values(j, [0, 2, 3, 5, 9], backend), [1.0, 1.0, 2.0, 1.0, 0.0])
    pc = optim.piecewise_constant_schedule(1.0, {5: 0.5, 10: 0.1})
    np.testing.assert_allclose(_values(pc, [0, 5, 9, 10], backend), [1.0, 0.5, 0.5, 0.05])
    with pytest.raises(ValueError, match="boundaries"):
        optim.join_schedules([optim.constant_schedule(1.0)], [3])


def test_schedules_trace_with_array_counts():
    s = optim.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100)
    closed = functrax.make_jaxpr(s)(np.int32(7))
    functrax.typecheck_jaxpr(closed)
    np.testing.assert_allclose(eval_jaxpr(closed.jaxpr, closed.consts, np.int32(7))[0], s(7))


def test_schedules_vmap_over_counts(backend):
    s = optim.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100)
    np.testing.assert_allclose(backend(functrax.vmap(s))(np.arange(5, dtype=np.int32)),
                               [float(s(i)) for i in range(5)])


def test_errors():
    opt = optim.adamw(0.1)
    with pytest.raises(ValueError, match="need the parameters"):
        opt.update(P0, opt.init(P0))
    with pytest.raises(ValueError, match="state holds"):
        optim.adam(0.1).update(P0, (1,), P0)
    assert isinstance(optim.adam(0.1), optim.GradientTransformation)
    assert isinstance(optim.GradientTransformation, type) and issubclass(
        optim.GradientTransformation, tuple)
