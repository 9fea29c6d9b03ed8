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
