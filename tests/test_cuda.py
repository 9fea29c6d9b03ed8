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
             "training_loop_on_device"]


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
