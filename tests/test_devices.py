"""Devices: listing them, the default platform, moving pytrees, and the mixed-device error.

CPU behaviour is tested in this process; the simulated GPU (numba's CUDA simulator, chosen
when the process starts) in one subprocess whose checks are reported as separate tests.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import functrax as ft
import functrax.numpy as fnp
import importlib

devices = importlib.import_module("functrax.devices")  # the module, even once the
# package exports the function functrax.devices()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(ft.__file__)))
NO_GPU = not devices.gpu_available()


def test_cpu_device_always_listed():
    cpus = devices.devices("cpu")
    assert cpus == [devices.cpu_device()]
    assert repr(cpus[0]) == "CpuDevice(id=0)"
    assert cpus[0].platform == "cpu" and cpus[0].id == 0
    assert devices.local_devices("cpu") == cpus


@pytest.mark.skipif(not NO_GPU, reason="a GPU (or the simulator) is present")
def test_default_backend_is_cpu_without_gpu():
    assert devices.default_backend() == "cpu"
    assert devices.devices() == [devices.cpu_device()]
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        devices.devices("gpu")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        devices.devices("tpu")


def test_device_put_and_get_pytrees_on_cpu():
    tree = {"w": np.ones((2, 3), np.float32), "b": [np.arange(3), 2.5], "n": (np.float64(1),)}
    put = devices.device_put(tree, devices.cpu_device())
    assert type(put["w"]) is ft.Array and put["w"].dtype == np.float32
    assert put["b"][1].shape == () and put["b"][1].dtype == np.float64
    assert put["w"] is not tree["w"]  # a copy: later writes to the source do not leak in
    tree["w"][0, 0] = 7.0
    assert put["w"][0, 0] == 1.0
    got = devices.device_get(put)
    assert ft.tree_util.tree_structure(got) == ft.tree_util.tree_structure(tree)
    np.testing.assert_array_equal(got["b"][0], np.arange(3))
    assert all(devices.device_of(leaf) == devices.cpu_device()
               for leaf in ft.tree_util.tree_leaves(got))
    assert devices.device_put(3.0, "cpu").tolist() == 3.0


def test_device_put_rejects_bad_device():
    with pytest.raises(TypeError, match="functrax Device"):
        devices.device_put(np.ones(2), 0)


def test_host_arrays_need_no_backend_switch():
    assert devices.infer_backend([np.ones(2), 1.0, fnp.zeros(3)]) is None
    devices.check_same_device("add", (np.ones(2), np.ones(2)))  # no error on one device


def test_package_exports():
    for name in ("devices", "default_backend", "device_put", "device_get", "local_devices"):
        assert name in devices.__all__


SIM_DRIVER = textwrap.dedent(r'''
    import json, sys, traceback
    import numpy as np
    import functrax as ft, functrax.numpy as fnp
    import importlib
    devices = importlib.import_module("functrax.devices")

    res = {}

    def check(name, fn):
        try:
            res[name] = {"ok": bool(fn())}
        except Exception:
            res[name] = {"ok": False, "error": traceback.format_exc()[-2000:]}

    gpu = devices.devices("gpu")[0]
    check("listing", lambda: devices.devices() == [gpu] and repr(gpu) == "CudaDevice(id=0)"
          and gpu.platform == "gpu" and gpu.simulated
          and devices.devices("cpu") == [devices.cpu_device()])
    check("default_backend", lambda: devices.default_backend() == "gpu")
    tree = {"w": np.arange(6.0).reshape(2, 3), "s": 2.0}
    put = devices.device_put(tree)
    check("put_default_device", lambda: all(devices.device_of(l) == gpu
                                            for l in ft.tree_util.tree_leaves(put))
          and put["w"].device == gpu and put["s"].shape == ())
    check("get_back", lambda: type(devices.device_get(put)["w"]) is ft.Array and
          devices.device_get(put)["w"].tolist() == tree["w"].tolist())
    check("eager_stays_on_device", lambda: all(
        isinstance(r, devices.SimulatedGpuArray) for r in
        (fnp.sin(put["w"]) * 2.0 + 1.0, put["w"] @ put["w"].T, fnp.exp(put["w"]).T,
         put["w"].reshape(3, 2), fnp.tanh(put["w"]) - put["s"])))
    check("infer_backend", lambda: devices.infer_backend([np.ones(2), put["w"]]) == "cuda")
    check("put_to_cpu", lambda: type(devices.device_put(put, "cpu")["w"]) is ft.Array)
    try:
        fnp.add(put["w"], np.ones((2, 3)))  # the user's line: in this driver file
        res["mixing_error"] = {"ok": False, "error": "no error raised"}
    except TypeError as e:
        msg = str(e)
        res["mixing_error"] = {"ok": all(s in msg for s in (
            "add", "(2, 3)", "CudaDevice(id=0)", "CpuDevice(id=0)", "device_put",
            "driver.py")), "message": msg}
    check("scalar_mixing_allowed", lambda: isinstance(put["w"] * np.float32(2.0) + 1.0,
                                                      devices.SimulatedGpuArray))

    # Eager primitives whose impls once left numpy's namespace (np.asarray, scipy, ufunc.at):
    # on device operands each result must stay on the device and equal the host result.
    from functrax import lax
    from functrax.lax import linalg
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    spd = a @ a.T + 3.0 * np.eye(3)
    b = rng.normal(size=(3, 2))
    v = np.linspace(0.1, 0.9, 5)
    iv = np.array([3, 5, 12, -7], np.int32)
    jv = np.array([1, 2, 3, 1], np.int32)

    def stays(f, *args):
        ref = ft.tree_util.tree_leaves(f(*args))
        got = ft.tree_util.tree_leaves(f(*devices.device_put(args)))
        assert all(isinstance(g, devices.SimulatedGpuArray) for g in got), \
            [type(g).__name__ for g in got]
        return len(got) == len(ref) and all(
            np.asarray(g).dtype == np.asarray(r).dtype and
            np.allclose(np.asarray(g), np.asarray(r), equal_nan=True) for g, r in zip(got, ref))

    EAGER = {
        "cholesky": (linalg.cholesky, spd),
        "cholesky_not_pd": (lambda m: linalg.cholesky(m, symmetrize_input=False), -spd),
        "triangular_solve": (lambda m, r: linalg.triangular_solve(m, r, left_side=True,
                                                                  lower=True), np.tril(spd), b),
        "triangular_solve_batched": (lambda m, r: linalg.triangular_solve(m, r, lower=True),
                                     np.stack([np.tril(spd)] * 2), np.stack([b.T] * 2)),
        "eigh": (linalg.eigh, spd), "svd": (linalg.svd, a), "qr": (linalg.qr, a),
        "inv": (linalg.inv, spd), "solve": (linalg.solve, spd, b),
        "slogdet": (linalg.slogdet, spd),
        "erf": (lax.erf, v), "erfc": (lax.erfc, v), "erf_inv": (lax.erf_inv, v),
        "lgamma": (lax.lgamma, v), "digamma": (lax.digamma, v),
        "polygamma": (lambda t: lax.polygamma(1, t), v),
        "population_count": (lax.population_count, iv),
        "shift_right_logical": (lax.shift_right_logical, iv, jv),
        "shift_right_arithmetic": (lax.shift_right_arithmetic, iv.astype(np.uint32), jv),
        "complex": (lax.complex, v, v[::-1].copy()),
        "at_set": (lambda t: fnp.asarray(t).at[np.array([0, 2])].set(7.0), v),
        "at_add": (lambda t: fnp.asarray(t).at[np.array([0, 0, 2])].add(1.0), v),
        "at_mul": (lambda t: fnp.asarray(t).at[np.array([0, 0, 2])].multiply(2.0), v),
        "at_max": (lambda t: fnp.asarray(t).at[np.array([0, 0, 2])].max(0.5), v),
        "at_min": (lambda t: fnp.asarray(t).at[np.array([0, 0, 2])].min(0.5), v),
        "scatter_add_ints": (lambda u, i: lax.scatter_add_along_axis_p.bind(
            i, u, axis=0, size=3), np.array([1, 2, 3]), np.array([0, 1, 1])),
        "scan_carry": (lambda t: lax.scan(lambda c, e: (c + e, c * e), 0.0, t), v),
        "random_uniform": (lambda k: ft.random.uniform(k, (4,), minval=-1.0, maxval=2.0),
                           ft.random.PRNGKey(1)),
        "random_normal": (lambda k: ft.random.normal(k, (3,)), ft.random.PRNGKey(0)),
        "sort": (lambda t: lax.sort(t), v[::-1].copy()),
        "top_k": (lambda t: lax.top_k(t, 2), v),
        "cumlogsumexp": (lambda t: lax.cumlogsumexp(t), v),
        "conv_grad": (lambda x, w: ft.grad(lambda w: fnp.sum(lax.conv_general_dilated(
            x, w, (2, 1), "SAME") ** 2))(w), rng.normal(size=(1, 1, 5, 5)),
            rng.normal(size=(2, 1, 3, 3))),
        "maxpool_grad": (lambda x: ft.grad(lambda x: fnp.sum(lax.reduce_window_max(
            x, (1, 1, 2, 2), (1, 1, 2, 2), "SAME") ** 2))(x), rng.normal(size=(1, 1, 5, 5))),
    }
    for name, (f, *args) in EAGER.items():
        check("eager_" + name, lambda f=f, args=args: stays(f, *args))
    with open(sys.argv[1], "w") as f:
        json.dump(res, f)
''')

EAGER_PRIMITIVES = ["cholesky", "cholesky_not_pd", "triangular_solve",
                    "triangular_solve_batched", "eigh", "svd", "qr", "inv", "solve", "slogdet",
                    "erf", "erfc", "erf_inv", "lgamma", "digamma", "polygamma",
                    "population_count", "shift_right_logical", "shift_right_arithmetic",
                    "complex", "at_set", "at_add", "at_mul", "at_max", "at_min",
                    "scatter_add_ints", "scan_carry", "random_uniform", "random_normal", "sort",
                    "top_k", "cumlogsumexp", "conv_grad", "maxpool_grad"]

SIM_CHECKS = ["listing", "default_backend", "put_default_device", "get_back",
              "eager_stays_on_device", "infer_backend", "put_to_cpu", "mixing_error",
              "scalar_mixing_allowed"] + ["eager_" + n for n in EAGER_PRIMITIVES]


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("simdev")
    script = d / "driver.py"
    script.write_text(SIM_DRIVER)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", FUNCTRAX_CACHE_DIR=str(d / "cache"),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), str(d / "out.json")], env=env,
                          cwd=str(d), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((d / "out.json").read_text())


@pytest.mark.parametrize("check", SIM_CHECKS)
def test_simulated_gpu(sim_results, check):
    assert sim_results[check]["ok"], sim_results[check]


def test_simulated_run_reported_every_check(sim_results):
    assert sorted(sim_results) == sorted(SIM_CHECKS)


def test_scipy_namespace_follows_the_arrays():
    import scipy.linalg
    import scipy.special
    from functrax.lax import _util
    assert _util.scipy_namespace(np, "special") is scipy.special
    assert _util.scipy_namespace(np, "linalg") is scipy.linalg
    # The simulated GPU's stand-in wraps scipy so results come back as device arrays.
    sim = _util.scipy_namespace(devices.sim_numpy, "special")
    out = sim.erf(np.array([0.5]))
    assert type(out) is devices.SimulatedGpuArray and np.allclose(out, scipy.special.erf(0.5))
    x = np.zeros(3)
    _util.ufunc_at(np, "add", x, np.array([0, 0, 2]), 1.0)
    assert x.tolist() == [2.0, 0.0, 1.0]
