"""GPU benchmarks: W1, W2 and W4 with ``jit(..., backend="cuda")`` against JAX on the same GPU.

    python benchmarks/gpu.py [--reps 30]

Each workload is checked against a float64 numpy reference before it is timed; repetitions
of the two libraries are interleaved and every timed call ends with a device synchronisation.
Prints medians and the ratio functrax / JAX (below 1 means functrax is faster). Without a GPU
(CuPy seeing none), or under numba's simulator, it says so and exits with status 0: simulated
timings would mean nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = ["main"]


def _gpu_ready():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return "numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM): GPU timings need a GPU"
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as e:  # not installed, or no driver
        return f"CuPy is not usable ({type(e).__name__}: {e})"
    return None


def _jax_gpu():
    try:
        import jax
        jax.config.update("jax_enable_x64", True)  # functrax's dtype rules are x64's
        return jax, jax.devices("gpu")[0]
    except Exception:
        return None, None


# ---------------------------------------------------------------------------------------------
# Workloads: (name, make) where make(lib) returns (step, args, reference_output)


def _mlp_data(sizes, batch, act_seed):
    rng = np.random.default_rng(act_seed)
    params = []
    for m, n in zip(sizes[:-1], sizes[1:]):
        w = (rng.standard_normal((m, n)) * np.sqrt(2.0 / (m + n))).astype(np.float32)
        params.append([w, np.zeros(n, np.float32)])
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], batch)]
    return params, x, y


def _loss(np_, act):
    def loss(p, x, y):
        h = x
        for w, b in p[:-1]:
            h = act(h @ w + b)
        w, b = p[-1]
        z = h @ w + b
        m = np_.max(z, axis=1, keepdims=True)
        logp = z - m - np_.log(np_.sum(np_.exp(z - m), axis=1, keepdims=True))
        return -np_.mean(np_.sum(logp * y, axis=1))
    return loss


def w1(lib, mods):
    """MLP 784-512-512-10 ReLU, batch 128, float32, softmax cross-entropy, one SGD step."""
    params, x, y = _mlp_data([784, 512, 512, 10], 128, 1)
    np_, grad, jit, tree_map, put = mods
    loss = _loss(np_, lambda h: np_.maximum(h, 0.0))

    def step(p, x, y):
        g = grad(loss)(p, x, y)
        return tree_map(lambda a, b: a - 0.01 * b, p, g)
    return jit(step), (put(params), put(x), put(y))


def w2(lib, mods):
    """Per-example gradients, MLP 64-128-10 tanh, batch 256, float32."""
    params, x, y = _mlp_data([64, 128, 10], 256, 2)
    np_, grad, jit, tree_map, put = mods
    loss = _loss(np_, np_.tanh)
    vmap = mods_vmap[lib]
    f = jit(vmap(grad(loss), in_axes=(None, 0, 0)))
    return f, (put(params), put(x[:, None]), put(y[:, None]))


def w4(lib, mods, n=10_000_000):
    """value_and_grad of sum(sin(x) * exp(-x*x) + tanh(x)) over 1e7 float32."""
    np_, grad, jit, tree_map, put = mods
    x = np.linspace(-3, 3, n).astype(np.float32)
    vg = mods_vg[lib]
    return jit(vg(lambda v: np_.sum(np_.sin(v) * np_.exp(-v * v) + np_.tanh(v)))), (put(x),)


mods_vmap, mods_vg = {}, {}


def _functrax_mods():
    import functrax as ft
    import functrax.numpy as fnp
    from functrax.devices import device_put, devices
    gpu = devices("gpu")[0]
    mods_vmap["functrax"], mods_vg["functrax"] = ft.vmap, ft.value_and_grad
    return (fnp, ft.grad, lambda f: ft.jit(f, backend="cuda"), ft.tree_util.tree_map,
            lambda t: device_put(t, gpu))


def _jax_mods(jax, dev):
    import jax.numpy as jnp
    mods_vmap["jax"], mods_vg["jax"] = jax.vmap, jax.value_and_grad
    return (jnp, jax.grad, jax.jit, jax.tree_util.tree_map, lambda t: jax.device_put(t, dev))


def _to_host(out):
    import cupy
    if isinstance(out, (list, tuple)):
        return [_to_host(o) for o in out]
    if isinstance(out, cupy.ndarray):
        return cupy.asnumpy(out)
    return np.asarray(out, dtype=np.float64) if not hasattr(out, "dtype") else np.asarray(out)


def _flat(tree):
    if isinstance(tree, (list, tuple)):
        return [leaf for t in tree for leaf in _flat(t)]
    return [np.asarray(tree, np.float64)]


def _sync(lib, out):
    if lib == "jax":
        import jax
        jax.block_until_ready(out)
    else:
        import cupy
        cupy.cuda.runtime.deviceSynchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    why = _gpu_ready()
    if why is not None:
        print(f"benchmarks/gpu.py: no GPU to measure on: {why}. Nothing to do.")
        return 0
    jax, jdev = _jax_gpu()
    libs = {"functrax": _functrax_mods()}
    if jax is not None:
        libs["jax"] = _jax_mods(jax, jdev)
    else:
        print("JAX with a GPU is not available: timing functrax alone.")
    import cupy
    print(f"GPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, "
          f"{time.strftime('%Y-%m-%d')}, {args.reps} interleaved repetitions\n")
    print(f"{'workload':<10}" + "".join(f"{lib:>14}" for lib in libs) + "   ratio ft/jax")
    for name, make in (("W1", w1), ("W2", w2), ("W4", w4)):
        runs = {}
        outs = {}
        for lib, mods in libs.items():
            f, a = make(lib, mods)
            out = f(*a)  # compile
            _sync(lib, out)
            outs[lib] = _flat(_to_host(jax.device_get(out) if lib == "jax" else out))
            runs[lib] = (f, a)
        bad = [float(np.max(np.abs(u - v))) for u, v in
               zip(outs["functrax"], outs.get("jax", outs["functrax"]))
               if not np.allclose(u, v, rtol=2e-3, atol=2e-4)]
        if bad:
            print(f"{name}: functrax and JAX disagree (max diff {max(bad):.3g}); not timed")
            continue
        times = {lib: [] for lib in libs}
        for _ in range(args.reps):
            for lib, (f, a) in runs.items():
                t0 = time.perf_counter()
                out = f(*a)
                _sync(lib, out)
                times[lib].append(time.perf_counter() - t0)
        med = {lib: statistics.median(ts) for lib, ts in times.items()}
        ratio = f"{med['functrax'] / med['jax']:.2f}x" if "jax" in med else "-"
        print(f"{name:<10}" + "".join(f"{med[lib] * 1e3:>12.3f}ms" for lib in libs) +
              f"   {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
