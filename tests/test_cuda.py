"""The CUDA back end.

* Simulator runs: one subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (numba fixes the simulator
  choice when ``numba.cuda`` is first imported, so it cannot be switched on here) runs
  ``jit(f, backend="cuda")`` on small programs and compares with eager numpy; each program is
  reported as its own test below.
* PTX checks, in this process and without a GPU: every kernel the simulator run generated, and
  the kernels of representative programs (broadcast chains, reductions of every style, an MLP
  training step and its gradient), compile for a real GPU (cc 9.0) with ``compile_ptx``.
* Tests marked ``gpu`` need an NVIDIA GPU with CuPy and are skipped without one.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import functrax as ft
import functrax.numpy as fnp
from functrax import lax, lowering
from functrax.lowering import cuda as fcuda

REPO = os.path.dirname(os.path.dirname(os.path.abspath(ft.__file__)))


def _has_gpu():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_GPU = _has_gpu()
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU "
                                                 "with CuPy")]

# ---------------------------------------------------------------------------------------------
# The simulator run

SIM_DRIVER = textwrap.dedent(r'''
    import json, sys, traceback
    import numpy as np
    import functrax as ft, functrax.numpy as fnp
    import importlib
    from functrax import lax
    devices = importlib.import_module("functrax.devices")
    from functrax.lowering import cuda

    rng = np.random.default_rng(0)
    results = {}

    def leaves(t):
        return ft.tree_util.tree_leaves(t)

    def run(name, f, args, tol=1e-6, put=True):
        try:
            ref = f(*args)
            dev_args = devices.device_put(args) if put else args
            got = ft.jit(f, backend="cuda")(*dev_args)
            on_dev = all(isinstance(g, devices.SimulatedGpuArray) for g in leaves(got))
            host = devices.device_get(got)
            errs = [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                                 initial=0.0))
                    for a, b in zip(leaves(host), leaves(ref))]
            same = all(np.asarray(a).shape == np.asarray(b).shape and
                       np.asarray(a).dtype == np.asarray(b).dtype
                       for a, b in zip(leaves(host), leaves(ref)))
            ok = on_dev and same and len(leaves(host)) == len(leaves(ref)) and all(
                np.allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol, equal_nan=True)
                for a, b in zip(leaves(host), leaves(ref)))
            results[name] = {"ok": bool(ok), "on_device": on_dev, "same_types": same,
                             "max_err": max(errs, default=0.0)}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()[-3000:]}

    x34 = np.linspace(-2.0, 2.0, 12).reshape(3, 4).astype(np.float32)
    row = np.linspace(0.5, 1.5, 4).astype(np.float32)
    col = np.linspace(-1.0, 1.0, 3).reshape(3, 1).astype(np.float32)
    run("chain_broadcast", lambda x, r, c: fnp.sin(x) * fnp.exp(-x * x) + fnp.tanh(x) * r - c,
        (x34, row, col))
    special = np.array([-np.inf, -3.5, -1.0, -0.0, 0.0, 0.25, 1.0, 2.5, np.inf, np.nan])
    run("chain_edge_values", lambda x: (fnp.maximum(x, 0.5), fnp.minimum(x, 0.5), fnp.sign(x),
                                        fnp.floor(x), lax.logistic(x), fnp.abs(x) ** 1.5,
                                        fnp.fmod(x, 0.75), fnp.log1p(fnp.abs(x)),
                                        fnp.expm1(-fnp.abs(x)), fnp.sqrt(x), fnp.log(x)),
        (special,))
    iv = np.array([[-7, -2, 0, 3], [5, 8, -11, 120]], np.int32)
    run("int_and_bool", lambda i: (i * 3 - 1, fnp.maximum(i, 2), (i > 0) & (i < 6),
                                   fnp.where(i > 0, i, -i), (i * 2).astype(np.float32) / 4.0,
                                   ~i, fnp.abs(i)), (iv,))
    run("select_compare", lambda x, y: fnp.where(x > y, x * 2.0, y - 1.0) + (x == y),
        (x34, np.float32(0.5) * x34[::-1]))
    run("weak_scalar_arg", lambda x, s: x * s + 1.0, (x34, 3.0), put=False)
    x568 = np.linspace(-1.0, 1.0, 5 * 6 * 8).reshape(5, 6, 8)
    run("reductions_rows", lambda x: (fnp.sum(x * 2.0, axis=2), fnp.max(fnp.sin(x), axis=(0, 2)),
                                      fnp.min(x + 1.0, axis=0)), (x568,))
    big = np.linspace(-3.0, 3.0, 1500)
    run("reductions_blocks", lambda v: (fnp.sum(fnp.sin(v) * fnp.exp(-v * v)),
                                        fnp.max(fnp.cos(v) + v)), (big,), tol=1e-9)
    run("reduction_blocks_with_output",
        lambda v: (lambda t: (t, fnp.sum(t)))(fnp.tanh(v) * 3.0), (big.astype(np.float32),),
        tol=1e-3)  # numpy sums float32 in float32; the kernel accumulates in float64
    run("reduction_nan", lambda v: (fnp.max(v * 1.0), fnp.min(v * 1.0), fnp.sum(v * 1.0)),
        (np.where(np.arange(600) == 300, np.nan, np.linspace(0, 1, 600)),))
    run("int_reduction", lambda i: (fnp.sum(i * 2, axis=1), fnp.max(i + 1, axis=0)), (iv,))
    run("dot", lambda a, b: (a @ b.T, fnp.einsum("ij,jk->ik", a, b.T) * 2.0),
        (rng.normal(size=(3, 4)), rng.normal(size=(5, 4))))
    run("batched_dot", lambda a, b: lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,)))),
        (rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4, 5))))

    def mlp(params, x):
        for w, b in params[:-1]:
            x = fnp.tanh(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    def loss(params, x, y):
        logits = mlp(params, x)
        m = fnp.max(logits, axis=1, keepdims=True)
        logp = logits - m - fnp.log(fnp.sum(fnp.exp(logits - m), axis=1, keepdims=True))
        return -fnp.mean(fnp.sum(logp * y, axis=1))

    params = [(rng.normal(size=(5, 7)).astype(np.float32) * 0.3, np.zeros(7, np.float32)),
              (rng.normal(size=(7, 3)).astype(np.float32) * 0.3, np.zeros(3, np.float32))]
    xb = rng.normal(size=(4, 5)).astype(np.float32)
    yb = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    run("mlp_loss", loss, (params, xb, yb), 1e-5)
    run("mlp_grad", ft.grad(loss), (params, xb, yb), 1e-4)

    def sgd(params, x, y):
        g = ft.grad(loss)(params, x, y)
        return ft.tree_util.tree_map(lambda p, d: p - 0.1 * d, params, g)

    run("mlp_sgd_step", sgd, (params, xb, yb), 1e-4)
    run("per_example_grads", ft.vmap(ft.grad(loss), in_axes=(None, 0, 0)),
        (params, xb[:, None], yb[:, None]), 1e-4)
    run("vmap_chain", ft.vmap(lambda v, s: fnp.sum(fnp.sin(v) * s)), (x34, row[:3]))
    run("grad_of_grad", ft.grad(ft.grad(lambda v: fnp.sum(fnp.tanh(v) ** 3))), (np.float64(0.3),))

    def rnn(h, xs):
        def body(h, x):
            h = fnp.tanh(h * 0.5 + x)
            return h, fnp.sum(h * h)
        return lax.scan(body, h, xs)

    run("scan", rnn, (np.zeros(3), rng.normal(size=(5, 3))))
    run("grad_scan", ft.grad(lambda h, xs: fnp.sum(rnn(h, xs)[1])),
        (np.ones(3), rng.normal(size=(5, 3))))
    run("while_loop", lambda x: lax.while_loop(lambda c: c[0] < 5,
                                               lambda c: (c[0] + 1, c[1] * 1.5), (0, x)),
        (np.ones(3),))
    run("cond", lambda p, x: lax.cond(p > 0, fnp.sin, fnp.cos, x), (1.0, np.ones(3)))

    # A training loop keeps its parameters on the device and never retraces.
    try:
        step = ft.jit(sgd, backend="cuda")
        p_dev = devices.device_put(params)
        p_ref = params
        for _ in range(3):
            p_dev = step(p_dev, xb, yb)
            p_ref = sgd(p_ref, xb, yb)
        stays = all(isinstance(l, devices.SimulatedGpuArray) for l in leaves(p_dev))
        close = all(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
                    for a, b in zip(leaves(devices.device_get(p_dev)), leaves(p_ref)))
        results["training_loop_on_device"] = {"ok": bool(stays and close and
                                                         step.stats.traces == 1),
                                              "traces": step.stats.traces, "stays": stays}
    except Exception:
        results["training_loop_on_device"] = {"ok": False, "error": traceback.format_exc()}

    # donate_argnums: the output is written into the donated input's device buffer; without
    # donation the input is left as it was.
    try:
        def donor(a, b):
            return a * 2.0 + b, fnp.sum(a * b, axis=1)
        xa, xb = np.arange(12.0).reshape(3, 4), np.linspace(0.0, 1.0, 12).reshape(3, 4)
        want = donor(xa, xb)
        da, db = devices.device_put((xa, xb))
        got = ft.jit(donor, backend="cuda", donate_argnums=0)(da, db)
        reused = bool(np.shares_memory(np.asarray(got[0]), np.asarray(da)))
        correct = all(np.allclose(np.asarray(g), w) for g, w in zip(got, want))
        ka, kb = devices.device_put((xa, xb))
        kept = ft.jit(donor, backend="cuda")(ka, kb)
        untouched = not np.shares_memory(np.asarray(kept[0]), np.asarray(ka)) and \
            np.array_equal(np.asarray(ka), xa)
        # A dtype change (float32 in, float64 out) cannot reuse the buffer.
        fa = devices.device_put(xa.astype(np.float32))
        other = ft.jit(lambda a: a.astype(np.float64) * 2.0, backend="cuda",
                       donate_argnums=0)(fa)
        no_reuse = not np.shares_memory(np.asarray(other), np.asarray(fa)) and \
            np.allclose(np.asarray(other), xa * 2.0)
        results["donated_buffers_reused"] = {
            "ok": reused and correct and untouched and no_reuse, "reused": reused,
            "correct": correct, "untouched": untouched, "no_reuse": no_reuse,
            "on_device": isinstance(got[0], devices.SimulatedGpuArray)}
    except Exception:
        results["donated_buffers_reused"] = {"ok": False, "error": traceback.format_exc()}

    kernels = [{"source": k.source, "style": k.style, "arg_types": [list(a) for a in k.arg_types],
                "summary": k.summary} for k in cuda.generated_kernels]
    with open(sys.argv[1], "w") as f:
        json.dump({"cases": results, "kernels": kernels}, f)
''')

SIM_CASES = ["chain_broadcast", "chain_edge_values", "int_and_bool", "select_compare",
             "weak_scalar_arg", "reductions_rows", "reductions_blocks",
             "reduction_blocks_with_output", "reduction_nan", "int_reduction", "dot",
             "batched_dot", "mlp_loss", "mlp_grad", "mlp_sgd_step", "per_example_grads",
             "vmap_chain", "grad_of_grad", "scan", "grad_scan", "while_loop", "cond",
             "training_loop_on_device", "donated_buffers_reused"]


def run_simulated(tmp_path, source, timeout=600):
    """Run ``source`` (given the output path as argv[1]) in a fresh interpreter with numba's
    CUDA simulator on; returns the JSON it wrote."""
    script = tmp_path / "driver.py"
    script.write_text(source)
    out = tmp_path / "out.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               FUNCTRAX_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    return run_simulated(tmp_path_factory.mktemp("cudasim"), SIM_DRIVER)


@pytest.mark.parametrize("case", SIM_CASES)
def test_simulator_matches_numpy(sim_results, case):
    r = sim_results["cases"][case]
    assert r["ok"], r


# ---------------------------------------------------------------------------------------------
# PTX: the kernels compile for a real GPU

_compiled: dict = {}


def _ptx(spec):
    ptx = _compiled.get(spec.source)
    if ptx is None:
        ptx = _compiled[spec.source] = fcuda.compile_ptx(spec, cc=(9, 0))
    return ptx


def _f64_ops(ptx):
    return sorted(set(re.findall(r"\b[a-z]+(?:\.[a-z0-9]+)*\.f64\b", ptx)))


def test_simulated_kernels_compile_to_ptx(sim_results):
    specs = {}
    for k in sim_results["kernels"]:
        specs[k["source"]] = fcuda.KernelSpec(k["source"], k["style"],
                                              tuple(tuple(a) for a in k["arg_types"]),
                                              k["summary"])
    assert len(specs) >= 10
    assert {s.style for s in specs.values()} == {"map", "rows", "blocks"}
    for spec in specs.values():
        ptx = _ptx(spec)
        assert ".visible .entry" in ptx, spec.summary


def _mlp_loss(params, x, y):
    h = x
    for w, b in params[:-1]:
        h = fnp.maximum(h @ w + b, 0.0)
    w, b = params[-1]
    logits = h @ w + b
    m = fnp.max(logits, axis=1, keepdims=True)
    logp = logits - m - fnp.log(fnp.sum(fnp.exp(logits - m), axis=1, keepdims=True))
    return -fnp.mean(fnp.sum(logp * y, axis=1))


def _representative_programs():
    rng = np.random.default_rng(0)
    f32 = np.float32
    params = [(rng.normal(size=(16, 32)).astype(f32), np.zeros(32, f32)),
              (rng.normal(size=(32, 10)).astype(f32), np.zeros(10, f32))]
    x = rng.normal(size=(8, 16)).astype(f32)
    y = np.eye(10, dtype=f32)[rng.integers(0, 10, 8)]

    def step(p, x, y):
        g = ft.grad(_mlp_loss)(p, x, y)
        return ft.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g)

    big = np.ones(100_000, f32)
    return {
        "broadcast_chain": (lambda a, r, c: fnp.sin(a) * fnp.exp(-a * a) + fnp.tanh(a) * r - c,
                            (np.ones((4, 5, 6), f32), np.ones(6, f32), np.ones((4, 1, 1), f32))),
        "edge_ops": (lambda a: (fnp.sign(a), fnp.floor(a), lax.logistic(a), a ** 2.5,
                                fnp.fmod(a, 0.5), fnp.maximum(a, 0.0), fnp.where(a > 0, a, -a)),
                     (np.ones((3, 7), f32),)),
        "int_ops": (lambda i: (i * 3 - 1, (i > 0) & (i < 6), ~i, fnp.abs(i), fnp.sum(i, axis=1)),
                    (np.ones((4, 9), np.int32),)),
        "rows_reductions": (lambda a: (fnp.sum(a * a, axis=1), fnp.max(a + 1.0, axis=0)),
                            (np.ones((300, 20), np.float64),)),
        "blocks_reductions": (lambda a: fnp.sum(fnp.sin(a) * fnp.exp(-a * a) + fnp.tanh(a)),
                              (big,)),
        "w4_value_and_grad": (ft.value_and_grad(
            lambda a: fnp.sum(fnp.sin(a) * fnp.exp(-a * a) + fnp.tanh(a))), (big,)),
        "mlp_loss": (_mlp_loss, (params, x, y)),
        "mlp_grad": (ft.grad(_mlp_loss), (params, x, y)),
        "mlp_sgd_step": (step, (params, x, y)),
        "per_example_grads": (ft.vmap(ft.grad(_mlp_loss), in_axes=(None, 0, 0)),
                              (params, x[:, None], y[:, None])),
    }


def test_representative_programs_compile_to_ptx():
    styles = set()
    n = 0
    for name, (f, args) in _representative_programs().items():
        prog = fcuda.generate(ft.make_jaxpr(f)(*args))
        assert prog.kernels, name
        for spec in prog.kernels:
            styles.add(spec.style)
            ptx = _ptx(spec)
            assert ".visible .entry" in ptx, (name, spec.summary)
            n += 1
            # A float32 kernel computing in float64 runs at a fraction of the GPU's speed;
            # only sums (accumulated in float64 like numpy's pairwise sums) may use it.
            arrays = [a for a in spec.arg_types if a[0] == "array"]
            # (CUDA's own sinf/cosf reduce huge arguments in float64: allowed.)
            trig = "'sin'" in spec.summary or "'cos'" in spec.summary
            if spec.style == "map" and arrays and not trig and \
                    all(a[1] == "float32" for a in arrays):
                assert _f64_ops(ptx) == [], (name, spec.summary, _f64_ops(ptx))
    assert styles == {"map", "rows", "blocks"}
    assert n >= 15


def test_generated_source_is_canonical():
    # Sizes are kernel arguments: programs differing only in sizes share kernel source.
    f = lambda a: fnp.tanh(a) * 2.0 + 1.0  # noqa: E731
    s1 = [k.source for k in fcuda.generate(ft.make_jaxpr(f)(np.ones((3, 4)))).kernels]
    s2 = [k.source for k in fcuda.generate(ft.make_jaxpr(f)(np.ones((30, 7)))).kernels]
    assert s1 == s2 and len(s1) == 1
    assert "target sm_90" in s1[0]


def test_one_kernel_per_fused_chain():
    prog = fcuda.generate(ft.make_jaxpr(
        lambda a, b: fnp.sum(fnp.exp(a - b[:, None]) * 3.0, axis=1))(np.ones((6, 5)),
                                                                    np.ones(6)))
    assert len(prog.kernels) == 1
    assert prog.kernels[0].style == "rows"


def test_backend_names():
    assert lowering.canonical_backend("gpu") == "cuda"
    assert lowering.canonical_backend("CUDA") == "cuda"
    assert "cuda" in lowering.available_backends()


@pytest.mark.skipif(HAS_GPU or os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"),
                    reason="a CUDA device is present")
def test_cuda_without_a_device_says_what_to_do():
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        ft.jit(lambda a: a + 1.0, backend="cuda")(np.ones(3))


# ---------------------------------------------------------------------------------------------
# Real GPU


def _gpu_check(f, args, tol=1e-5):
    import cupy
    import importlib
    devices = importlib.import_module("functrax.devices")
    ref = f(*args)
    got = ft.jit(f, backend="cuda")(*devices.device_put(args, devices.devices("gpu")[0]))
    for g, r in zip(ft.tree_util.tree_leaves(got), ft.tree_util.tree_leaves(ref)):
        assert isinstance(g, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(g), np.asarray(r), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["broadcast_chain", "edge_ops", "int_ops", "rows_reductions",
                                  "blocks_reductions", "w4_value_and_grad", "mlp_loss",
                                  "mlp_grad", "mlp_sgd_step", "per_example_grads"])
@needs_gpu[0]
@needs_gpu[1]
def test_gpu_matches_numpy(name):
    f, args = _representative_programs()[name]
    _gpu_check(f, args, tol=1e-3)


@needs_gpu[0]
@needs_gpu[1]
def test_gpu_convnet_grad():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    w = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)

    def loss(w, x):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME")
        return fnp.sum(fnp.maximum(y, 0.0) ** 2)
    _gpu_check(ft.grad(loss), (w, x), tol=1e-3)


@needs_gpu[0]
@needs_gpu[1]
def test_gpu_scan_and_timing():
    import time
    import cupy
    import importlib
    devices = importlib.import_module("functrax.devices")

    def rnn(h, xs):
        return lax.scan(lambda h, x: (fnp.tanh(h * 0.5 + x), fnp.sum(h)), h, xs)
    _gpu_check(rnn, (np.zeros(64, np.float32), np.ones((50, 64), np.float32)), tol=1e-4)
    g = ft.jit(lambda a: fnp.sum(fnp.sin(a) * fnp.exp(-a * a) + fnp.tanh(a)), backend="cuda")
    x = devices.device_put(np.linspace(-3, 3, 10_000_000).astype(np.float32),
                           devices.devices("gpu")[0])
    g(x).block_until_ready() if hasattr(g(x), "block_until_ready") else None
    cupy.cuda.runtime.deviceSynchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        out = g(x)
    cupy.cuda.runtime.deviceSynchronize()
    per_call = (time.perf_counter() - t0) / 10
    print(f"W4 forward on the GPU: {per_call * 1e3:.3f} ms per call")
    ref = np.sum(np.sin(cupy.asnumpy(x).astype(np.float64)) *
                 np.exp(-cupy.asnumpy(x).astype(np.float64) ** 2) +
                 np.tanh(cupy.asnumpy(x).astype(np.float64)))
    assert abs(float(out) - ref) <= 1e-3 * abs(ref) + 1e-2


# ---------------------------------------------------------------------------------------------
# Convolution through cuDNN: the plan (which cuDNN call, and its parameters) is pure shape
# arithmetic, checked here without a GPU by running it against a numpy stand-in for CuPy's
# cudnn module whose three functions are defined by the reference convolution itself.


class _NumpyCudnn:
    """cuDNN's contract in numpy: symmetric ``pad``, NC+spatial layouts, ``groups``; the
    backward functions are the adjoints of the forward one (via functrax's vjp), and every
    call checks the shapes cuDNN would (the output size implied by the input size)."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def _fwd(x, w, pad, stride, dilation, groups):
        return lax.conv_general_dilated(x, w, stride, [(p, p) for p in pad],
                                        rhs_dilation=dilation, feature_group_count=groups)

    def convolution_forward(self, x, W, b, y, pad, stride, dilation, groups, *, auto_tune,
                            tensor_core):
        self.calls.append("forward")
        out = np.asarray(self._fwd(x, W, pad, stride, dilation, groups))
        assert out.shape == y.shape, (out.shape, y.shape)
        y[...] = out

    def convolution_backward_data(self, W, x, b, y, pad, stride, dilation, groups, *,
                                  deterministic, auto_tune, tensor_core):
        self.calls.append("backward_data")
        f = lambda gx: self._fwd(gx, W, pad, stride, dilation, groups)  # noqa: E731
        out, vjp = ft.vjp(f, np.zeros(y.shape, y.dtype))
        assert out.shape == x.shape, (out.shape, x.shape)
        y[...] = np.asarray(vjp(x)[0])

    def convolution_backward_filter(self, x, gy, gW, pad, stride, dilation, groups, *,
                                    deterministic, auto_tune, tensor_core):
        self.calls.append("backward_filter")
        f = lambda w: self._fwd(x, w, pad, stride, dilation, groups)  # noqa: E731
        out, vjp = ft.vjp(f, np.zeros(gW.shape, gW.dtype))
        assert out.shape == gy.shape, (out.shape, gy.shape)
        gW[...] = np.asarray(vjp(gy)[0])


def _conv_eqns(f, *args):
    """(lhs, rhs, params) of every conv_general_dilated in f's jaxpr (with its gradient's)."""
    found = []

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "conv_general_dilated":
                found.append((e.invars[0].aval, e.invars[1].aval, e.params))
            for sub in ft.core.subjaxprs_of_eqn(e):
                walk(sub.jaxpr if hasattr(sub, "jaxpr") else sub)
    walk(ft.make_jaxpr(f)(*args).jaxpr)
    return found


_CONV_CASES = {
    # name: (lhs shape, rhs shape, kwargs of conv_general_dilated)
    "nchw_same": ((2, 3, 7, 6), (4, 3, 3, 3), dict(window_strides=(1, 1), padding="SAME")),
    "nchw_strided_even_kernel": ((2, 3, 9, 8), (4, 3, 2, 4),
                                 dict(window_strides=(2, 3), padding="SAME")),
    "nhwc_hwio_dilated": ((2, 8, 7, 3), (3, 2, 3, 5),
                          dict(window_strides=(1, 2), padding=((2, 1), (0, 3)),
                               rhs_dilation=(2, 1), dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    "negative_padding": ((1, 2, 9, 9), (3, 2, 3, 3),
                         dict(window_strides=(2, 2), padding=((-1, 2), (1, -2)))),
    "grouped": ((2, 4, 6, 6), (6, 2, 3, 3),
                dict(window_strides=(2, 1), padding="SAME", feature_group_count=2)),
    "depthwise_nhwc": ((1, 6, 6, 4), (3, 3, 1, 4),
                       dict(window_strides=(2, 2), padding="VALID", feature_group_count=4,
                            dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    "conv1d": ((2, 3, 14), (5, 3, 4), dict(window_strides=(3,), padding="SAME")),
    "strided_dilated_valid": ((1, 2, 13, 9), (3, 2, 3, 2),
                              dict(window_strides=(3, 2), padding="VALID",
                                   rhs_dilation=(2, 3))),
    "conv3d": ((1, 2, 5, 4, 6), (3, 2, 2, 3, 3),
               dict(window_strides=(2, 1, 2), padding="SAME")),
}


def _conv_case_eqns(name):
    lshape, rshape, kw = _CONV_CASES[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=lshape)
    w = rng.normal(size=rshape)

    def loss(x, w):
        return fnp.sum(lax.conv_general_dilated(x, w, **kw) ** 2)
    return _conv_eqns(ft.grad(loss, argnums=(0, 1)), x, w)


@pytest.mark.parametrize("name", sorted(_CONV_CASES))
def test_cudnn_plan_matches_reference_convolution(name):
    from functrax.lax.conv import conv_general_dilated_p
    eqns = _conv_case_eqns(name)
    # forward, the input gradient and the kernel gradient
    assert len(eqns) == 3
    rng = np.random.default_rng(1)
    ops = []
    for la, ra, params in eqns:
        plan = fcuda.cudnn_conv_plan(la.shape, ra.shape, la.dtype, ra.dtype, params)
        assert plan is not None, (name, params)
        a, b = rng.normal(size=la.shape), rng.normal(size=ra.shape)
        fake = _NumpyCudnn()
        got = fcuda.run_cudnn_conv(plan, a, b, np, fake)
        want = np.asarray(conv_general_dilated_p.bind(a, b, **params))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=repr(plan))
        ops.append(fake.calls[0])
    assert ops[0] == "forward"
    # The gradient's transposed convolutions go to cuDNN's backward functions (the input
    # gradient of a stride-1 convolution is an ordinary convolution: forward).
    strided = any(s > 1 for s in _CONV_CASES[name][2]["window_strides"])
    assert sorted(ops[1:]) == sorted(["backward_data" if strided else "forward",
                                      "backward_filter"]), ops


def test_cudnn_plan_parameters():
    # NHWC/HWIO 3x3 stride 2 'SAME' on 8x8: pads (0, 1) are asymmetric, so cuDNN gets pad 0
    # and the input one explicit row/column of zeros at the high end; layouts become NCHW.
    (la, ra, params), = _conv_eqns(
        lambda x, w: lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")),
        np.ones((1, 8, 8, 3)), np.ones((3, 3, 3, 5)))
    plan = fcuda.cudnn_conv_plan(la.shape, ra.shape, la.dtype, ra.dtype, params)
    assert plan.op == "forward"
    assert plan.perms == ((0, 3, 1, 2), (3, 2, 0, 1))
    assert plan.out_perm == (0, 2, 3, 1)
    assert (plan.pad, plan.stride, plan.dilation, plan.groups) == ((0, 0), (2, 2), (1, 1), 1)
    assert plan.in_adjust == ((0, 1), (0, 1))
    assert plan.y_shape == (1, 5, 4, 4)
    # Symmetric padding needs no copy.
    (la, ra, params), = _conv_eqns(
        lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (2, 2)),
                                              rhs_dilation=(1, 2)),
        np.ones((2, 3, 6, 6)), np.ones((4, 3, 3, 3)))
    plan = fcuda.cudnn_conv_plan(la.shape, ra.shape, la.dtype, ra.dtype, params)
    assert plan.pad == (1, 2) and plan.in_adjust == ((0, 0), (0, 0))
    assert plan.dilation == (1, 2)


def test_cudnn_plan_declines_what_cudnn_cannot_do():
    def plan_of(f, *args):
        (la, ra, params), = _conv_eqns(f, *args)
        return fcuda.cudnn_conv_plan(la.shape, ra.shape, la.dtype, ra.dtype, params)
    ints = (np.ones((1, 1, 5, 5), np.int32), np.ones((1, 1, 3, 3), np.int32))
    assert plan_of(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME"), *ints) is None
    # An input dilation with a stride (no transpose rule emits this) is not a cuDNN call.
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    assert plan_of(lambda x, w: lax.conv_general_dilated(
        x, w, (2, 2), "VALID", lhs_dilation=(2, 2)), x, w) is None
    # Four spatial dims.
    assert plan_of(lambda x, w: lax.conv_general_dilated(x, w, (1,) * 4, "VALID"),
                   np.ones((1, 1, 3, 3, 3, 3)), np.ones((1, 1, 2, 2, 2, 2))) is None


def test_conv_lowering_uses_the_impl_without_cudnn():
    # Without CuPy (this machine) or in the simulator, the rule falls back to the impl.
    (eqn,) = [e for e in ft.make_jaxpr(lambda x, w: lax.conv_general_dilated(
        x, w, (1, 1), "SAME"))(np.ones((1, 1, 4, 4)), np.ones((2, 1, 3, 3))).jaxpr.eqns
        if e.primitive.name == "conv_general_dilated"]

    class Sim:
        sim, xp = True, np
    fn = fcuda.lowering_rules["conv_general_dilated"](eqn, None, Sim())
    x, w = np.ones((1, 1, 4, 4)), np.ones((2, 1, 3, 3))
    np.testing.assert_allclose(fn(x, w), lax.conv_general_dilated(x, w, (1, 1), "SAME"))


@needs_gpu[0]
@needs_gpu[1]
@pytest.mark.parametrize("name", sorted(_CONV_CASES))
def test_gpu_cudnn_convolutions_match_numpy(name):
    import cupy
    from functrax.lax.conv import conv_general_dilated_p
    cudnn = fcuda.cudnn_module()
    if cudnn is None:
        pytest.skip("CuPy has no cuDNN here")
    rng = np.random.default_rng(2)
    for la, ra, params in _conv_case_eqns(name):
        plan = fcuda.cudnn_conv_plan(la.shape, ra.shape, la.dtype, ra.dtype, params)
        a, b = rng.normal(size=la.shape), rng.normal(size=ra.shape)
        got = fcuda.run_cudnn_conv(plan, cupy.asarray(a), cupy.asarray(b), cupy, cudnn)
        want = np.asarray(conv_general_dilated_p.bind(a, b, **params))
        np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# The kernel cache keeps one entry per GPU architecture


def test_kernel_cache_is_keyed_by_gpu_architecture(tmp_path, monkeypatch):
    from functrax.lowering import cache
    monkeypatch.setenv("FUNCTRAX_CACHE_DIR", str(tmp_path))
    assert fcuda.arch_name("90") == "sm_90" and fcuda.arch_name(80) == "sm_80"
    assert fcuda.arch_name("120") == "sm_120"
    closed = ft.make_jaxpr(lambda a: fnp.tanh(a) * 3.0 + 1.0)(np.ones(8, np.float32))
    k80 = fcuda.generate(closed, fcuda.Target(arch="sm_80")).kernels[0]
    k90 = fcuda.generate(closed, fcuda.Target(arch="sm_90")).kernels[0]
    assert "target sm_80" in k80.source and "target sm_90" in k90.source
    assert cache.source_key(k80.source) != cache.source_key(k90.source)
    cache.load_module(k80.source)
    cache.load_module(k90.source)
    files = sorted(p.name for p in (tmp_path / "kernels").glob("k_*.py"))
    assert files == sorted(f"k_{cache.source_key(k.source)}.py" for k in (k80, k90))
    # The same architecture again finds its file: no new entry.
    again = fcuda.generate(closed, fcuda.Target(arch="sm_80")).kernels[0]
    assert cache.load_module(again.source)[1:] == (True, True)
    assert len(list((tmp_path / "kernels").glob("k_*.py"))) == 2
