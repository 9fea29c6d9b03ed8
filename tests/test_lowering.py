"""The lowering pipeline: plan passes (inline, simplify, fuse, liveness) and the CPU back end's
three kernel styles (numba loops, blocked numpy chains, plain impl calls), each checked
against the reference interpreter; and the on-disk kernel cache."""
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import core, lax, lowering
from functrax.lowering import cache, numba_cpu, plan


@pytest.fixture(scope="module")
def kernel_cache_dir(tmp_path_factory):
    """A private kernel cache for this module, so the disk-cache test starts cold."""
    d = str(tmp_path_factory.mktemp("functrax_cache"))
    old = os.environ.get("FUNCTRAX_CACHE_DIR")
    os.environ["FUNCTRAX_CACHE_DIR"] = d
    yield d
    if old is None:
        os.environ.pop("FUNCTRAX_CACHE_DIR", None)
    else:
        os.environ["FUNCTRAX_CACHE_DIR"] = old


@pytest.fixture
def force_numba(monkeypatch, kernel_cache_dir):
    """Send every arithmetic cluster, however small, to numba (tests stay small)."""
    monkeypatch.setattr(numba_cpu, "NUMBA_MIN_SIZE", 1)
    monkeypatch.setattr(numba_cpu, "NUMBA_MIN_OPS", 1)
    return kernel_cache_dir


@pytest.fixture
def force_blocked(monkeypatch):
    """Blocked chains on tiny arrays, with blocks of 64 bytes (many blocks, a ragged end)."""
    monkeypatch.setattr(numba_cpu, "BLOCKED_MIN_SIZE", 1)
    monkeypatch.setattr(numba_cpu, "BLOCK_BYTES", 64)


def _simplified(f, *args):
    closed = ft.make_jaxpr(f)(*args)
    jaxpr, consts = plan.inline_calls(closed.jaxpr, closed.consts)
    return plan.simplify(jaxpr, consts)


def _prims(jaxpr):
    return [e.primitive.name for e in jaxpr.eqns]


def _run_both(f, *args):
    """(cpu result, reference result) for f lowered from the same jaxpr."""
    closed = ft.make_jaxpr(f)(*args)
    flat = [a for a in args]
    cpu = lowering.numba_cpu.lower(closed)(*flat)
    ref = [np.asarray(o) for o in core.eval_jaxpr(closed.jaxpr, closed.consts, *flat)]
    return cpu, ref


def _assert_close(got, want, rtol=1e-6, atol=1e-6):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (g.shape, w.shape)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        if g.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# simplify


def test_simplify_drops_ad_units_and_folds_constants():
    x = np.arange(4.0)
    jaxpr, _ = _simplified(lambda x: (x * 1.0 + 0.0) * (2.0 * 3.0) - 0.0, x)
    assert _prims(jaxpr) == ["mul"]
    lit = [v for v in jaxpr.eqns[0].invars if type(v) is core.Literal][0]
    assert float(lit.val) == 6.0


def test_simplify_drops_broadcast_ones_of_a_gradient():
    x = np.linspace(-1, 1, 5)
    g = ft.grad(lambda x: fnp.sum(fnp.sin(x)))
    jaxpr, _ = _simplified(g, x)
    # d/dx sum(sin x) = cos(x) * broadcast(1.0): the broadcast of one and its product go.
    assert "broadcast_in_dim" not in _prims(jaxpr)
    assert _prims(jaxpr).count("mul") == 0


def test_simplify_cse_and_dce():
    x = np.arange(3.0)

    def f(x):
        fnp.exp(x)  # dead: DCE removes it
        return fnp.sin(x) + fnp.sin(x)

    jaxpr, _ = _simplified(f, x)
    assert _prims(jaxpr) == ["sin", "add"]


def test_simplify_keeps_values():
    x = np.linspace(0.1, 2.0, 7)

    def f(x):
        y = fnp.full((7,), 1.0) * x + fnp.zeros(7)
        z = fnp.arange(7.0) * 2.0 + 1.0  # folds to a constant
        return fnp.sum(y * z) * 1.0, fnp.negative(fnp.negative(y)), y.astype(np.float64)

    closed = ft.make_jaxpr(f)(x)
    jaxpr, consts = plan.simplify(closed.jaxpr, closed.consts)
    got = core.eval_jaxpr(jaxpr, consts, x)
    _assert_close(got, [np.asarray(o) for o in f(x)])
    assert "neg" not in _prims(jaxpr) and "convert_element_type" not in _prims(jaxpr)


_OPS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "max": fnp.maximum, "sin": lambda a, b: fnp.sin(a), "neg": lambda a, b: -a,
    "one": lambda a, b: a * 1.0, "zero": lambda a, b: b + 0.0,
}


@given(st.lists(st.tuples(st.sampled_from(sorted(_OPS)), st.integers(0, 10),
                          st.integers(0, 10)), min_size=1, max_size=12))
def test_simplify_random_programs_match_eager(prog):
    x, y = np.linspace(-1.0, 1.0, 6), np.linspace(0.5, 2.0, 6)

    def f(x, y):
        vals = [x, y, x * 1.0, y + 0.0]
        for op, i, j in prog:
            vals.append(_OPS[op](vals[i % len(vals)], vals[j % len(vals)]))
        return vals[-1], fnp.sum(vals[-1])

    closed = ft.make_jaxpr(f)(x, y)
    jaxpr, consts = plan.simplify(*plan.inline_calls(closed.jaxpr, closed.consts))
    _assert_close(core.eval_jaxpr(jaxpr, consts, x, y), [np.asarray(o) for o in f(x, y)])
    _assert_close(numba_cpu.lower(closed)(x, y), [np.asarray(o) for o in f(x, y)])


# ---------------------------------------------------------------------------------------------
# inline


def test_inline_nested_jit_called_twice_gets_fresh_variables():
    inner = ft.jit(lambda a: fnp.sin(a) * 2.0)
    outer = lambda x: inner(x) + inner(x + 1.0)  # noqa: E731
    x = np.arange(3.0)
    closed = ft.make_jaxpr(outer)(x)
    assert "pjit" in _prims(closed.jaxpr)
    jaxpr, consts = plan.inline_calls(closed.jaxpr, closed.consts)
    assert "pjit" not in _prims(jaxpr)
    core.typecheck_jaxpr(core.ClosedJaxpr(jaxpr, consts))
    _assert_close(core.eval_jaxpr(jaxpr, consts, x), [np.asarray(outer(x))])


# ---------------------------------------------------------------------------------------------
# fuse


def _steps(f, *args):
    jaxpr, _ = _simplified(f, *args)
    return plan.fuse(jaxpr, plan.DEFAULT_FUSIBLE, numba_cpu._can_fuse), jaxpr


def test_fuse_elementwise_chain_with_broadcast_and_reduction_is_one_cluster():
    x, b = np.ones((4, 5)), np.ones(5)
    steps, _ = _steps(lambda x, b: fnp.sum(fnp.maximum(x * 2.0 + b, 0.0), axis=0), x, b)
    assert [type(s).__name__ for s in steps] == ["Cluster"]
    c = steps[0]
    assert c.shape == (4, 5) and len(c.outputs) == 1
    views = sorted(view for _, view in c.loads)
    assert (1, 5) in views and (4, 5) in views


def test_fuse_consumer_of_a_reduction_starts_a_new_cluster():
    # softmax: x - max(x) needs the finished max, so two passes.
    x = np.ones((3, 8))
    steps, _ = _steps(lambda x: fnp.exp(x - fnp.max(x, axis=1, keepdims=True)), x)
    kinds = [type(s).__name__ for s in steps]
    assert kinds.count("Cluster") == 2


def test_fuse_library_call_splits_clusters_and_order_is_topological():
    x, w = np.ones((4, 3)), np.ones((3, 2))

    def f(x, w):
        h = fnp.tanh(x * 2.0)
        y = h @ w
        return fnp.maximum(y, 0.0) + 1.0

    steps, jaxpr = _steps(f, x, w)
    names = [s.eqn.primitive.name if isinstance(s, plan.OpStep) else "cluster" for s in steps]
    assert names == ["cluster", "dot_general", "cluster"]
    defined = set(jaxpr.invars) | set(jaxpr.constvars)
    for s in steps:
        ins = s.invars if isinstance(s, plan.OpStep) else [
            op for op, _ in s.loads if type(op) is not core.Literal]
        assert all(v in defined for v in ins)
        defined.update(s.outvars if isinstance(s, plan.OpStep) else s.outputs)


def test_last_uses():
    x = np.ones(3)
    steps, jaxpr = _steps(lambda x: (fnp.sin(x) @ x, x * 2.0), x)
    last = plan.last_uses(steps, jaxpr.outvars)
    assert last[jaxpr.invars[0]] == max(i for i, s in enumerate(steps))


# ---------------------------------------------------------------------------------------------
# The CPU back end's kernel styles


def _kitchen_sink(x, row, col, n, m):
    """Many elementwise and reduction forms over one iteration shape: one numba kernel."""
    y = x * 2.0 + row - col / 3.0
    z = fnp.where(x > 0.25, y, -y)
    k = (n * 3 + 7).astype(np.int8)           # int8 wraps
    q = fnp.maximum(n, 5) - fnp.minimum(n, 2)
    b = fnp.logical_and(m, x < 0.5) | (n > 3)
    t = (y * 1.5).astype(np.int32)             # float -> int truncates toward zero
    r = fnp.sqrt(fnp.abs(y)) + fnp.floor(x * 4.0) + x ** 3 + fnp.sign(y)
    return (y, z, k, q, b, t, r,
            fnp.sum(y, axis=0), fnp.sum(z * x, axis=1), fnp.max(y), fnp.min(z, axis=0),
            fnp.sum(n, axis=1), fnp.max(fnp.where(m, fnp.nan, y), axis=1))


def _sink_args(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 5)).astype(dtype)
    row = rng.uniform(-1, 1, 5).astype(dtype)
    col = rng.uniform(-1, 1, (6, 1)).astype(dtype)
    n = rng.integers(-50, 50, (6, 5)).astype(np.int32)
    m = rng.uniform(size=(6, 5)) > 0.7
    return x, row, col, n, m


def test_numba_kernel_matches_reference(force_numba):
    args = _sink_args()
    closed = ft.make_jaxpr(_kitchen_sink)(*args)
    exe = numba_cpu.lower(closed)
    assert any(s.startswith("numba kernel") for s in exe.steps_summary)
    ref = [np.asarray(o) for o in core.eval_jaxpr(closed.jaxpr, closed.consts, *args)]
    _assert_close(exe(*args), ref, rtol=1e-5, atol=1e-5)
    # The same cluster in another program shares the kernel (no new module).
    before = numba_cpu.counters["numba_kernels_built"]
    numba_cpu.lower(ft.make_jaxpr(_kitchen_sink)(*args))
    assert numba_cpu.counters["numba_kernels_built"] == before


def test_numba_kernel_non_contiguous_and_donated_inputs(force_numba):
    x = np.arange(12.0).reshape(3, 4)

    def f(a, b):
        return a * 2.0 + b, fnp.sum(a * b, axis=1)

    jf = ft.jit(f, donate_argnums=0)
    want = [np.asarray(o) for o in f(x.T.copy(), x.T)]
    got = jf(x.T.copy(), x.T)  # second operand is a transposed (F-ordered) view
    _assert_close(got, want)


def test_blocked_chain_matches_reference(force_blocked):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000).astype(np.float32)
    s = np.float32(0.5)

    def f(x, s):
        a = fnp.sin(x) * fnp.exp(-x * x) + fnp.tanh(x) * s
        b = lax.logistic(x * 3.0) + lax.integer_pow(x, 3)
        c = fnp.where(x > 0, a, b).astype(np.float64)
        return a, fnp.sum(a), fnp.max(b), c, fnp.min(fnp.log1p(x * x))

    closed = ft.make_jaxpr(f)(x, s)
    exe = numba_cpu.lower(closed)
    assert any(st_.startswith("blocked kernel") for st_ in exe.steps_summary)
    ref = [np.asarray(o) for o in core.eval_jaxpr(closed.jaxpr, closed.consts, x, s)]
    _assert_close(exe(x, s), ref, rtol=2e-5, atol=1e-4)


def test_blocked_chain_with_broadcasts_and_partial_reductions(force_blocked):
    args = _sink_args(np.float64)
    closed = ft.make_jaxpr(_kitchen_sink)(*args)
    exe = numba_cpu.lower(closed)
    assert any(s.startswith("blocked kernel") for s in exe.steps_summary)
    assert not exe.dispatchers
    ref = [np.asarray(o) for o in core.eval_jaxpr(closed.jaxpr, closed.consts, *args)]
    _assert_close(exe(*args), ref, rtol=1e-12, atol=1e-12)


def test_small_clusters_run_impls_without_numba():
    x = np.ones((4, 4), np.float32)
    closed = ft.make_jaxpr(lambda x: fnp.maximum(x * 2.0 + 1.0, 0.0))(x)
    exe = numba_cpu.lower(closed)
    assert not exe.dispatchers and not exe.kernel_sources
    _assert_close(exe(x), [np.full((4, 4), 3.0, np.float32)])


def test_transcendental_cluster_with_broadcast_operands_stays_on_numpy(force_blocked):
    # Transcendental clusters never go to numba's scalar libm, broadcast operands or not.
    x, r = np.ones((40, 30), np.float32), np.ones(30, np.float32)
    closed = ft.make_jaxpr(lambda x, r: fnp.exp(x + r) * 2.0)(x, r)
    exe = numba_cpu.lower(closed)
    assert not exe.dispatchers
    _assert_close(exe(x, r), [np.exp(x + r) * 2.0])


def test_control_flow_bodies_are_compiled_once():
    xs = np.arange(12.0).reshape(4, 3)

    def f(h, xs):
        return lax.scan(lambda h, x: (fnp.tanh(h + x), h.sum()), h, xs)

    closed = ft.make_jaxpr(f)(np.zeros(3), xs)
    exe = numba_cpu.lower(closed)
    _assert_close(exe(np.zeros(3), xs), [np.asarray(o) for o in f(np.zeros(3), xs)])


# ---------------------------------------------------------------------------------------------
# The on-disk cache


def test_disk_cache_second_loader_hits(force_numba):
    x = np.linspace(-1, 1, 24).reshape(4, 6)

    def f(x):
        return fnp.maximum(x * 3.0 - 1.0, x) * x + 2.0

    first = ft.jit(f)
    first(x)
    # A fresh loader: forget modules and programs, as a new process would.
    cache.clear_memory_cache()
    lowering.clear_caches()
    second = ft.jit(f)
    out = second(x)
    np.testing.assert_allclose(out, np.maximum(x * 3 - 1, x) * x + 2)
    assert second.stats.numba_compiles == 0
    assert second.stats.numba_disk_hits >= 1
    assert first.stats.numba_compiles + first.stats.numba_disk_hits >= 1
    files = os.listdir(os.path.join(cache.cache_dir(), "kernels"))
    assert any(f.startswith("k_") and f.endswith(".py") for f in files)


def test_cache_keys_are_content_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCTRAX_CACHE_DIR", str(tmp_path))
    src = "VALUE = 41 + 1\n"
    mod, in_memory, existed = cache.load_module(src)
    assert mod.VALUE == 42 and not in_memory and not existed
    again, in_memory, _ = cache.load_module(src)
    assert again is mod and in_memory
    assert cache.source_key(src) != cache.source_key(src + "\n")
    cache.clear_memory_cache()
    _, in_memory, existed = cache.load_module(src)
    assert not in_memory and existed


# ---------------------------------------------------------------------------------------------
# Scans inlined into the driver; accumulators moved out of the loop; direct numpy calls


def _rnn_loss(p, xs, ys):
    wx, wh, b, v = p

    def cell(h, x):
        h = fnp.tanh(x @ wx + h @ wh + b)
        return h, h @ v
    _, preds = lax.scan(cell, fnp.zeros((xs.shape[1], wh.shape[0]), xs.dtype), xs)
    return fnp.mean((preds - ys) ** 2)


def _rnn_args(dtype=np.float64, steps=5):
    rng = np.random.default_rng(0)
    p = [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((4, 4)).astype(dtype),
         rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)]
    return p, rng.standard_normal((steps, 2, 3)).astype(dtype), \
        rng.standard_normal((steps, 2)).astype(dtype)


def test_scan_gradient_accumulators_leave_the_loop():
    p, xs, ys = _rnn_args()
    closed = ft.make_jaxpr(ft.grad(_rnn_loss))(p, xs, ys)
    jaxpr, consts = _simplified(ft.grad(_rnn_loss), p, xs, ys)
    sunk, _ = plan.sink_scan_accumulators(jaxpr, consts)
    scans = [e for e in sunk.eqns if e.primitive.name == "scan"]
    # The reverse scan carried the four weight gradients and the hidden cotangent; only the
    # hidden cotangent is still a carry, the weight gradients are summed after the loop.
    assert [e.params["num_carry"] for e in scans] == [1, 1]
    assert any(e.primitive.name == "dot_general" and e.params["dimension_numbers"][0][0][0] == 0
               for e in sunk.eqns)
    core.typecheck_jaxpr(sunk)
    _assert_close(numba_cpu.lower(closed)(*p, xs, ys),
                  [np.asarray(o) for o in ft.grad(_rnn_loss)(p, xs, ys)], rtol=1e-10)


def _scan_bodies(jaxpr):
    return [e.params["jaxpr"].jaxpr for e in jaxpr.eqns if e.primitive.name == "scan"]


def test_scan_input_only_and_output_only_work_leaves_the_loop():
    p, xs, ys = _rnn_args()
    jaxpr, consts = _simplified(lambda p, xs: lax.scan(
        lambda h, x: (fnp.tanh(x @ p[0] + h @ p[1] + p[2]), (fnp.tanh(x @ p[0] + h @ p[1] +
                                                                       p[2]) @ p[3])),
        fnp.zeros((2, 4)), xs), p, xs)
    hoisted, hconsts = plan.hoist_scan_invariants(jaxpr, consts)
    core.typecheck_jaxpr(hoisted)
    (body,) = _scan_bodies(hoisted)
    # Left in the loop: h @ wh, one add and the tanh. x @ wx (+ b) is one product over all
    # steps before the loop, h @ v one product over the stacked h after it.
    assert sorted(_prims(body)) == ["add", "dot_general", "tanh"]
    pre = hoisted.eqns[:[e.primitive.name for e in hoisted.eqns].index("scan")]
    assert any(e.primitive.name == "dot_general" and e.invars[0].aval.ndim == 3 for e in pre)
    want = core.eval_jaxpr(jaxpr, consts, *p, xs)
    _assert_close(core.eval_jaxpr(hoisted, hconsts, *p, xs), want, rtol=1e-12)


def test_scan_hoisting_in_the_gradient_program():
    p, xs, ys = _rnn_args(np.float32, steps=7)
    closed = ft.make_jaxpr(ft.grad(_rnn_loss))(p, xs, ys)
    jaxpr, consts = _simplified(ft.grad(_rnn_loss), p, xs, ys)
    jaxpr, consts = plan.sink_scan_accumulators(jaxpr, consts)
    hoisted, _ = plan.hoist_scan_invariants(*plan.simplify(jaxpr, consts))
    core.typecheck_jaxpr(hoisted)
    fwd, bwd = _scan_bodies(hoisted)
    assert _prims(fwd).count("dot_general") == 1
    # The backward loop: the cotangent of h, times tanh', through wh; the outer product of
    # the output cotangent with v was computed for every step before the loop.
    assert _prims(bwd).count("dot_general") == 1
    want = [np.asarray(o) for o in ft.grad(_rnn_loss)(p, xs, ys)]
    _assert_close(numba_cpu.lower(closed)(*p, xs, ys), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_hoisting_edge_cases(reverse):
    # Invariant work (sin w), an xs-only y, a carry set to an input-only value, a y computed
    # after the loop from a stacked carry, a nested scan, and an unused xs.
    def f(c0, xs, zs, w):
        def body(c, xz):
            x, z, _ = xz
            a, b = c
            sw = fnp.sin(w)
            a = fnp.tanh(a @ sw + x)
            inner, _ = lax.scan(lambda k, e: (k * 0.5 + e, None), fnp.sum(a), x)
            return (a, x * 2.0), (x + 1.0, a * 3.0 + inner, fnp.sum(b), sw.sum())
        return lax.scan(body, (c0, c0), (xs, zs, zs), reverse=reverse)
    rng = np.random.default_rng(3)
    c0, xs, zs = rng.standard_normal(3), rng.standard_normal((5, 3)), rng.standard_normal(5)
    w = rng.standard_normal((3, 3))
    jaxpr, consts = _simplified(f, c0, xs, zs, w)
    hoisted, hconsts = plan.hoist_scan_invariants(jaxpr, consts)
    core.typecheck_jaxpr(hoisted)
    (body,) = [b for b in _scan_bodies(hoisted) if "tanh" in _prims(b)]
    assert "sin" not in _prims(body)
    want = ft.tree_util.tree_flatten(f(c0, xs, zs, w))[0]
    _assert_close(core.eval_jaxpr(hoisted, hconsts, c0, xs, zs, w),
                  [np.asarray(o) for o in want], rtol=1e-12)
    _assert_close(numba_cpu.lower(ft.make_jaxpr(f)(c0, xs, zs, w))(c0, xs, zs, w),
                  [np.asarray(o) for o in want], rtol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_inlined_scan_matches_eager(reverse):
    def f(c0, xs, w):
        def body(c, x):
            a, s = c
            a = fnp.tanh(a @ w + x)
            return (a, s + fnp.sum(a * x)), (a, s)
        return lax.scan(body, (c0, 0.0), xs, reverse=reverse)
    rng = np.random.default_rng(1)
    c0, xs, w = rng.standard_normal(3), rng.standard_normal((6, 3)), rng.standard_normal((3, 3))
    closed = ft.make_jaxpr(f)(c0, xs, w)
    exe = numba_cpu.lower(closed)
    assert "for " in exe.source  # the loop runs in the driver, not through a sub-program
    want = ft.tree_util.tree_flatten(f(c0, xs, w))[0]
    _assert_close(exe(c0, xs, w), [np.asarray(o) for o in want], rtol=1e-12)
    # ys that are the carry from before the step keep that value.
    _assert_close([exe(c0, xs, w)[3]], [np.asarray(want[3])], rtol=1e-12)


def test_scan_of_length_zero_and_nested_scans():
    def inner(c, x):
        return c + x, c * x

    def outer(c, xs):
        c2, ys = lax.scan(inner, c, xs)
        return c2, ys.sum()

    def f(c, xss):
        return lax.scan(outer, c, xss)
    c, xss = np.float64(0.5), np.arange(12.0).reshape(3, 4)
    closed = ft.make_jaxpr(f)(c, xss)
    want = ft.tree_util.tree_flatten(f(c, xss))[0]
    _assert_close(numba_cpu.lower(closed)(c, xss), [np.asarray(o) for o in want])
    empty = np.zeros((0, 4))
    closed0 = ft.make_jaxpr(f)(c, empty)
    want0 = ft.tree_util.tree_flatten(f(c, empty))[0]
    _assert_close(numba_cpu.lower(closed0)(c, empty), [np.asarray(o) for o in want0])


@pytest.mark.parametrize("dims", [
    (((1,), (0,)), ((), ())), (((0,), (0,)), ((), ())), (((1,), (1,)), ((), ())),
    (((0,), (1,)), ((), ()))])
def test_direct_dot_general_forms_match_impl(dims):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    f = lambda a, b: lax.dot_general(a, b, dims)  # noqa: E731
    cpu, ref = _run_both(f, a, b)
    _assert_close(cpu, ref, rtol=1e-12)
    # Stacks contracted over their leading (or trailing) dims become one 2-D GEMM.
    x, y = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    g = lambda x, y: lax.dot_general(x, y, (((0, 1), (0, 1)), ((), ())))  # noqa: E731
    cpu, ref = _run_both(g, x, y)
    _assert_close(cpu, ref, rtol=1e-12)
    assert "_np.dot" in numba_cpu.lower(ft.make_jaxpr(g)(x, y)).source


@pytest.mark.parametrize("shapes,dims", [
    (((6, 3), (6, 4)), (((), ()), ((0,), (0,)))),              # per-example outer product
    (((3, 6), (4, 6)), (((), ()), ((1,), (1,)))),              # batch dims last
    (((6, 2, 3), (4, 6)), (((), ()), ((0,), (1,)))),
    (((2, 5, 3), (5, 2)), (((), ()), ((0, 1), (1, 0)))),
    (((6, 3), (4,)), (((), ()), ((), ()))),                    # outer products of any rank
    (((2, 3, 4), (5, 2, 4)), (((2,), (2,)), ((0,), (1,)))),    # contraction: the impl
])
def test_direct_outer_products_match_impl(shapes, dims):
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    f = lambda a, b: lax.dot_general(a, b, dims)  # noqa: E731
    cpu, ref = _run_both(f, a, b)
    _assert_close(cpu, ref, rtol=0, atol=0)  # products without sums are exact
    src = numba_cpu.lower(ft.make_jaxpr(f)(a, b)).source
    assert ("einsum" in src or "outer" in src) == (not dims[0][0])


def test_broadcasts_read_by_elementwise_ops_are_not_materialised():
    x, s = np.arange(6.0).reshape(2, 3), np.float64(2.0)
    f = lambda x, s: lax.broadcast_in_dim(s, (2, 3), ()) * x + lax.broadcast_in_dim(  # noqa
        fnp.sum(x, 0), (2, 3), (1,))
    closed = ft.make_jaxpr(f)(x, s)
    exe = numba_cpu.lower(closed)
    assert "broadcast" not in exe.source
    _assert_close(exe(x, s), [np.asarray(f(x, s))])
    # A weak-typed Python scalar argument keeps numpy's promotion (float32 stays float32).
    x32 = x.astype(np.float32)
    closed = ft.make_jaxpr(f)(x32, 2.0)
    _assert_close(numba_cpu.lower(closed)(x32, 2.0), [np.asarray(f(x32, 2.0))])


def test_commutative_cse_and_folding_products_with_constants():
    x = np.arange(3.0)
    jaxpr, _ = _simplified(lambda x: fnp.sin(x) * x + x * fnp.sin(x), x)
    assert _prims(jaxpr).count("mul") == 1
    eye = np.eye(80)
    jaxpr, consts = _simplified(lambda x: (eye @ np.ones((80, 80))) @ x, np.ones(80))
    assert _prims(jaxpr) == ["dot_general"]  # the constant product was evaluated once


# ---------------------------------------------------------------------------------------------
# float32 transcendental clusters: numba kernels with vectorizable polynomial helpers


_SPECIALS32 = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 1e-5, -3e-5, 88.7,
                        88.8, -87.0, -103.0, -104.5, -200.0, 200.0, 3.4e38, -3.4e38, 1e4,
                        -9999.5, 1e6, 2e6, -5e7], np.float32)


def _poly_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-1e4, 1e4, 3000), rng.standard_normal(3000) * 3,
                           rng.uniform(-1e-3, 1e-3, 500)]).astype(np.float32)


@pytest.mark.parametrize("name", ["sin", "cos", "exp", "tanh", "logistic"])
def test_poly32_helpers_accuracy_and_specials(name, force_numba):
    fn = {"sin": fnp.sin, "cos": fnp.cos, "exp": fnp.exp, "tanh": fnp.tanh,
          "logistic": ft.nn.sigmoid}[name]
    ref = {"sin": np.sin, "cos": np.cos, "exp": np.exp, "tanh": np.tanh,
           "logistic": lambda v: 1 / (1 + np.exp(-v))}[name]
    # Three ops, so the cluster is a kernel; the scalings are exact in float32 (the reference
    # sees the same float32 argument).
    f = ft.jit(lambda x: fn(x * np.float32(1.5)) * np.float32(2))
    x = np.concatenate([_poly_inputs(), _SPECIALS32, _SPECIALS32 / np.float32(1.5)])
    lw = f.lower(x)
    kernel = lw._entry.exe.kernel_sources[0].split("def kernel")[1]
    assert "numba kernel" in lw.as_text() and "_np." + name not in kernel
    out = np.asarray(f(x))
    assert out.dtype == np.float32
    with np.errstate(all="ignore"):
        arg = (x * np.float32(1.5)).astype(np.float64)
        want = (ref(arg) * 2).astype(np.float32)
        ref32 = np.asarray(fn(x * np.float32(1.5)) * np.float32(2))  # numpy float32 path
    same_class = np.isnan(out) == np.isnan(want)
    assert same_class.all(), x[~same_class]
    fin = np.isfinite(want)
    np.testing.assert_array_equal(out[~fin], want[~fin])
    # Within 2 float32 ulps of the float64 reference (numpy's float32 loops: about as close).
    np.testing.assert_allclose(out[fin], want[fin], rtol=2.5e-7, atol=1e-38)
    np.testing.assert_allclose(out[fin], ref32[fin], rtol=5e-7, atol=1e-38)


def test_poly32_sign_of_zero_and_tiny(force_numba):
    f = ft.jit(lambda x: (fnp.sin(x) * np.float32(1), fnp.tanh(x) * np.float32(1)))
    x = np.array([-0.0, 1e-40, -1e-30], np.float32)
    s, t = (np.asarray(v) for v in f(x))
    assert np.signbit(s[0]) and np.signbit(t[0])
    np.testing.assert_array_equal(s[1:], x[1:])
    np.testing.assert_array_equal(t[1:], x[1:])


def test_poly32_huge_sin_argument_falls_back_to_numpy(force_numba):
    f = ft.jit(lambda x: fnp.sum(fnp.sin(x) * fnp.cos(x) + x))
    g = ft.jit(lambda x: fnp.sin(x) * fnp.cos(x))
    x = np.linspace(-3, 3, 101).astype(np.float32)
    big = x.copy()
    big[7] = 3e7  # beyond exact range reduction: the cluster is recomputed with numpy
    text = g.lower(big).as_text()
    assert "if nbig" in text
    for arr in (x, big):
        want64 = np.sin(arr.astype(np.float64)) * np.cos(arr.astype(np.float64))
        np.testing.assert_allclose(np.asarray(g(arr)), want64, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(float(f(arr)), (want64 + arr).sum(), rtol=1e-5)


def test_poly32_value_and_grad_matches_reference(force_numba):
    # W4's program on a ragged size: fused forward and backward in one kernel.
    f = lambda x: fnp.sum(fnp.sin(x) * fnp.exp(-x * x) + fnp.tanh(x))
    x = np.random.default_rng(4).standard_normal(1001).astype(np.float32)
    jf = ft.jit(ft.value_and_grad(f))
    assert "numba kernel" in jf.lower(x).as_text()
    v, g = jf(x)
    rv, rg = ft.jit(ft.value_and_grad(f), backend="numpy")(x)
    assert np.asarray(g).dtype == np.float32
    np.testing.assert_allclose(float(v), float(rv), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g), np.asarray(rg), rtol=1e-6, atol=1e-6)


def test_poly32_off_for_float64(force_numba):
    f = ft.jit(lambda x: fnp.sin(x) * 2.0 + 1.0)
    x = np.linspace(0, 1, 10)
    assert "numba kernel" not in f.lower(x).as_text()
    np.testing.assert_array_equal(np.asarray(f(x)), np.sin(x) * 2.0 + 1.0)


def test_pooled_outputs_are_never_overwritten_while_held(force_numba, monkeypatch):
    monkeypatch.setattr(numba_cpu, "POOL_MIN_BYTES", 1)
    f = ft.jit(lambda x: x * 2.0 + 1.0)
    x = np.arange(8.0)
    assert "_pooled" in f.lower(x).as_text()
    a = f(x)
    view = np.asarray(a)[2:]
    del a
    b = f(x + 1)            # the first result is still viewed: a new buffer
    np.testing.assert_array_equal(view, (np.arange(8.0) * 2 + 1)[2:])
    np.testing.assert_array_equal(np.asarray(b), (np.arange(8.0) + 1) * 2 + 1)
    del view
    ptr = np.asarray(b).__array_interface__["data"][0]
    del b
    c = f(x)                # nothing holds the last buffer: it is reused
    assert np.asarray(c).__array_interface__["data"][0] == ptr
    np.testing.assert_array_equal(np.asarray(c), np.arange(8.0) * 2 + 1)
    d = f(c)                # the argument is the pooled buffer itself: not reused
    np.testing.assert_array_equal(np.asarray(d), (np.arange(8.0) * 2 + 1) * 2 + 1)
    np.testing.assert_array_equal(np.asarray(c), np.arange(8.0) * 2 + 1)


# ---------------------------------------------------------------------------------------------
# Small programs tier up to one numba function


@pytest.fixture
def tier_now(monkeypatch, kernel_cache_dir):
    """Small programs switch to their numba function on the first call."""
    monkeypatch.setattr(numba_cpu, "SMALL_TIER_CALLS", 1)
    monkeypatch.setattr(numba_cpu, "SMALL_MIN_EQNS", 1)
    return kernel_cache_dir


def _check_tiered(f, *args, rtol=1e-12, atol=1e-12):
    exe = f.lower(*args)._entry.exe
    assert exe.small_source is not None
    got = f(*args)
    assert exe.tiered, "the numba function was rejected (see _Tiered._tier_up)"
    got2 = f(*args)  # the second call runs the numba function directly
    want = ft.jit(f._fun, backend="numpy")(*args)
    for g in (got, got2):
        for a, b in zip(ft.tree_util.tree_leaves(g), ft.tree_util.tree_leaves(want)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape and a.dtype == b.dtype, (a.dtype, b.dtype)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    return exe


def test_small_program_hvp_tiers_up(tier_now):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((7, 5))

    def f(x):
        return fnp.sum(fnp.tanh(A @ x) ** 2) + ft.nn.logsumexp(x)
    hvp = ft.jit(lambda x, v: ft.jvp(ft.grad(f), (x,), (v,))[1])
    exe = _check_tiered(hvp, rng.standard_normal(5), rng.standard_normal(5))
    # numba saved it: a program lowered to the same source later (another process) switches
    # after SMALL_TIER_ON_DISK calls instead of SMALL_TIER_CALLS.
    assert cache.compiled_on_disk(exe.small_source)
    assert not cache.compiled_on_disk(exe.small_source + "\n# another program\n")
    _check_tiered(ft.jit(ft.hessian(f)), rng.standard_normal(5))


def test_small_program_layout_reductions_and_dots(tier_now):
    rng = np.random.default_rng(1)
    m = rng.standard_normal((3, 4))
    t = rng.standard_normal((2, 3, 4))

    def f(x, y, s, k):
        a = x * y[None, :] + s                       # broadcasts, scalar operand
        b = fnp.transpose(a) @ x                     # (4, 4): transposed operand
        c = fnp.max(a, axis=0) + fnp.min(a, axis=1).sum() + fnp.sum(a, axis=(0, 1))
        d = fnp.where(fnp.isfinite(a / s), a, 0.0).reshape(12)
        e = lax.dot_general(t, x, (((1, 2), (0, 1)), ((), ())))   # 3-D operand, 2 dims
        g = y @ fnp.transpose(x) + (k * 3 - 1).astype(fnp.float64)[..., None].sum()
        return b, c, d, e, g, fnp.sum(y * y), k + 1, (x > 0).sum()
    _check_tiered(ft.jit(f), m, rng.standard_normal(4), 0.5, np.arange(3, dtype=np.int32))


def test_small_program_float32_and_nonfinite(tier_now):
    def f(x):
        y = fnp.exp(x) * np.float32(2) - fnp.sin(x)
        return y, fnp.sum(y), fnp.max(x), fnp.cos(x * x)
    x = np.array([0.5, -1.0, np.inf, -np.inf, np.nan, 1e6, 30.0], np.float32)
    exe = _check_tiered(ft.jit(f), x, rtol=1e-6, atol=1e-6)
    assert "_np.sin(" in exe.small_source  # scalar libm in small programs: exact everywhere


def test_small_program_stays_on_numpy_when_not_called_often(kernel_cache_dir):
    f = ft.jit(lambda x: fnp.sum(fnp.tanh(x) * 2.0 + x * x - 1.0) / 3.0 + fnp.max(x) * x)
    x = np.linspace(-1, 1, 5)
    f(x)
    exe = f.lower(x)._entry.exe
    assert exe.small_source is not None and not exe.tiered


def test_small_program_never_returns_its_constants(tier_now):
    c = np.arange(6.0).reshape(2, 3)
    f = ft.jit(lambda x: (fnp.asarray(c).reshape(6), x * 2.0 + 1.0, fnp.sum(x) * 3.0))
    x = np.ones(3)
    _check_tiered(f, x)
    out = f(x)[0]
    np.asarray(out)[0] = 100.0
    assert float(np.asarray(f(x)[0])[0]) == 0.0


def test_poly32_parallel_kernel_with_range_flag(force_numba, monkeypatch):
    monkeypatch.setattr(numba_cpu, "PARALLEL_MIN_SIZE", 1)
    # No whole-axis reduction: those keep a kernel serial.
    f = ft.jit(lambda x: (fnp.sin(x) * fnp.exp(-x * x), fnp.tanh(x) * x + 1.0))
    x = np.linspace(-4, 4, 999).astype(np.float32)
    text = f.lower(x).as_text()
    if numba_cpu._numba_num_threads() > 1:
        assert "parallel=True" in text
    for arr in (x, np.concatenate([x, np.float32([5e7])])):
        v, t = f(arr)
        xd = arr.astype(np.float64)
        np.testing.assert_allclose(np.asarray(v), np.sin(xd) * np.exp(-xd * xd), rtol=1e-6,
                                   atol=1e-30)
        np.testing.assert_allclose(np.asarray(t), np.tanh(xd) * xd + 1, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Compiled loops: a hot scan runs as one numba function (numba_cpu._LoopTier)


@pytest.fixture
def loop_tier_now(monkeypatch, kernel_cache_dir):
    """Scans switch to their compiled loop after the first call."""
    monkeypatch.setattr(numba_cpu, "LOOP_TIER_CALLS", 1)
    return kernel_cache_dir


def _check_compiled_loops(f, args, rtol, atol, n_loops):
    """f jitted: the first call runs the Python loops (and tiers them up), the second the
    compiled ones; both must match eager evaluation."""
    jf = ft.jit(f)
    first = jf(*args)
    exe = jf.lower(*args)._entry.exe
    assert len(exe.loop_tiers) == n_loops
    assert all(t.fast is not None for t in exe.loop_tiers), "a compiled loop was rejected"
    second = jf(*args)
    want = f(*args)
    for got in (first, second):
        for a, b in zip(ft.tree_util.tree_leaves(got), ft.tree_util.tree_leaves(want)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape and a.dtype == b.dtype, (a.dtype, b.dtype)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert "as one numba function (in use)" in exe.as_text()
    return exe


@pytest.mark.parametrize("reverse", [False, True])
def test_compiled_scan_pytree_carry_int_carry_and_several_ys(loop_tier_now, reverse):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 4)) * 0.5

    def f(h0, xs, k):
        def step(carry, x):
            h, (n, tot) = carry
            h = fnp.tanh(h @ w + x * 0.5) + fnp.sum(x) * 0.1
            n = n + 1                                  # int32 counter
            tot = tot + (x[0] > 0).astype(fnp.int32) * k
            return (h, (n, tot)), (h * 2.0, n, fnp.max(h), x[::1] - h)
        return lax.scan(step, (h0, (np.int32(0), np.int32(0))), xs, reverse=reverse)
    _check_compiled_loops(f, (rng.standard_normal((3, 4)), rng.standard_normal((7, 4)),
                              np.int32(3)), rtol=1e-12, atol=1e-12, n_loops=1)


def test_compiled_scan_rnn_gradient_float32(loop_tier_now):
    rng = np.random.default_rng(4)
    wx = (rng.standard_normal((3, 8)) / 2).astype(np.float32)
    wh = (rng.standard_normal((8, 8)) / 4).astype(np.float32)
    v = rng.standard_normal(8).astype(np.float32)
    xs = rng.standard_normal((12, 2, 3)).astype(np.float32)
    ys = rng.standard_normal((12, 2)).astype(np.float32)

    def loss(wx, wh, v):
        def cell(h, x):
            h = fnp.tanh(x @ wx + h @ wh)
            return h, h @ v
        _, preds = lax.scan(cell, fnp.zeros((2, 8), np.float32), xs)
        return fnp.mean((preds - ys) ** 2)
    # Forward and backward loops both compiled; tanh through the float32 helper, products
    # through BLAS in another order: float32 rounding.
    exe = _check_compiled_loops(ft.grad(loss, argnums=(0, 1, 2)), (wx, wh, v), rtol=2e-5,
                                atol=1e-6, n_loops=2)
    assert "_tanhf(" in exe.loop_tiers[0].source


def test_scan_outside_compiled_loops_falls_back(loop_tier_now):
    # sort has no compiled form: the scan keeps its Python loop, with the same results.
    def f(xs):
        return lax.scan(lambda c, x: (fnp.sort(c + x), c * 2.0), fnp.zeros(3), xs)
    jf = ft.jit(f)
    xs = np.arange(12.0).reshape(4, 3)[:, ::-1].copy()
    for _ in range(2):
        got = jf(xs)
        for a, b in zip(ft.tree_util.tree_leaves(got), ft.tree_util.tree_leaves(f(xs))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jf.lower(xs)._entry.exe.loop_tiers == []


def test_loop_tier_waits_until_the_loop_is_hot(kernel_cache_dir):
    # Default thresholds: a short loop called twice stays a Python loop (nothing compiled).
    f = ft.jit(lambda xs: lax.scan(lambda c, x: (c * 0.5 + x, c), 0.0, xs))
    xs = np.linspace(0, 1, 5)
    f(xs)
    f(xs)
    (tier,) = f.lower(xs)._entry.exe.loop_tiers
    assert tier.fast is None and tier.calls == 2 and not tier.done


# while loops (and fori_loop with traced bounds) compile whole too: predicate and body are two
# numba functions called by one compiled loop (numba_cpu._while_kernel_source).


def test_compiled_while_loops_traced_fori_bounds_and_zero_trips(loop_tier_now):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 3)) * 0.4

    def f(h0, n):
        def cond(c):
            h, k, _ = c
            return (k < n) & (fnp.sum(h * h) < 50.0)   # int and float tests in the predicate

        def body(c):
            h, k, tot = c
            return fnp.tanh(h @ w) * 2.0 + 0.1, k + 1, tot + fnp.max(h)
        h, k, tot = lax.while_loop(cond, body, (h0, np.int32(0), 0.0))
        # fori_loop with a traced upper bound is a while loop on (i, upper, carry)
        g = lax.fori_loop(1, n, lambda i, c: c * 0.5 + i * h[0], fnp.zeros(3))
        return h, k, tot, g
    h0, n = rng.standard_normal((2, 3)), np.int32(6)
    exe = _check_compiled_loops(f, (h0, n), rtol=1e-12, atol=1e-12, n_loops=2)
    assert "while True:" in exe.loop_tiers[0].source and "def cond(" in exe.loop_tiers[0].source
    # Compiled, the loops run no step when the predicate is false from the start.
    jf = ft.jit(f)
    jf(h0, n)
    for got, want in zip(jf(h0, np.int32(0)), f(h0, np.int32(0))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert np.asarray(got).dtype == np.asarray(want).dtype


def test_compiled_while_with_max_steps_and_its_gradient(loop_tier_now):
    def f(x):
        def body(c):
            y, k = c
            return fnp.sin(y) * 0.9 + y * y * 0.1, k + 1
        y, k = lax.while_loop(lambda c: fnp.sum(c[0]) < 100.0, body, (x, 0), max_steps=5)
        return fnp.sum(y) + k
    x = np.array([0.5, -0.2, 1.0])
    exe = _check_compiled_loops(f, (x,), rtol=1e-12, atol=1e-12, n_loops=1)
    assert "while n < 5:" in exe.loop_tiers[0].source
    # Its gradient (scans over max_steps with a cond inside: Python loops) next to it.
    g = ft.grad(f)
    jg = ft.jit(g)
    for _ in range(2):
        np.testing.assert_allclose(np.asarray(jg(x)), np.asarray(g(x)), rtol=1e-12)


def test_while_outside_compiled_loops_falls_back(loop_tier_now):
    # sort has no compiled form: the while loop keeps its Python loop, with the same results.
    def f(x):
        return lax.while_loop(lambda c: c[1] < 3, lambda c: (fnp.sort(c[0] * -1.0), c[1] + 1),
                              (x, 0))
    jf = ft.jit(f)
    x = np.array([3.0, 1.0, 2.0])
    for _ in range(2):
        for a, b in zip(jf(x), f(x)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jf.lower(x)._entry.exe.loop_tiers == []


def test_compiled_loop_body_indexing_and_integer_arithmetic(loop_tier_now):
    # What RNN / integrator loops index with: x[i] with a traced (wrapped, clamped) i,
    # dynamic_slice / dynamic_update_slice with out-of-range starts (lax clamps them), slices,
    # reversal, concatenate, iota, pad (interior and negative padding), select_n, and integer
    # div / rem with negative operands (rounding toward zero, as lax does).
    rng = np.random.default_rng(6)
    table = fnp.asarray(rng.standard_normal((5, 3)))

    def f(state, xs):
        def step(c, x):
            h, buf, k = c
            row = table[k % 7 - 1]
            win = lax.dynamic_slice(buf, (k - 2, 0), (3, 2))
            buf = lax.dynamic_update_slice(buf, (h[:2] * x)[None, :], (k, 0))
            cat = fnp.concatenate([h[1:], h[:1], lax.iota(np.float64, 2)])
            padded = lax.pad(h, 0.5, ((1, -1, 1),))
            q, r = lax.div(k, np.int32(-3)), lax.rem(k, np.int32(4))
            h = fnp.tanh(cat[:3] * 0.5 + row + fnp.sum(win) * 0.1 + h[::-1] + padded[1:4])
            h = fnp.where(h > 0.2, h, -h) + (q * 10 + r) * 0.01
            return (h, buf, k + 1), (fnp.max(win) + fnp.sum(padded), q * 10 + r)
        return lax.scan(step, state, xs)
    state = (rng.standard_normal(3), rng.standard_normal((6, 2)), np.int32(-4))
    exe = _check_compiled_loops(f, (state, rng.standard_normal(11)), rtol=1e-12, atol=1e-12,
                                n_loops=1)
    src = exe.loop_tiers[0].source
    assert "min(max(_np.int64(" in src and " // " in src   # clamped starts, integer division
