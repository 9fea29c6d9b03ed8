"""W8: the first call of W1's jitted step in a fresh process (trace + lower + compile + run;
the library is imported before the clock starts), cold (empty kernel cache) and warm (the disk
cache filled by a previous process)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

from .harness import Result

_SNIPPET = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from benchmarks.threads import pin_one_thread
    pin_one_thread()
    from benchmarks import workloads
    import {module}  # imported before the clock starts: W8 is trace + lower + compile + run
    w = workloads.w1()
    t0 = time.perf_counter()
    step = w.impls[{lib!r}]()
    out = step()
    if hasattr(out[0], "block_until_ready"):
        out[0].block_until_ready()
    print("FIRST_CALL", time.perf_counter() - t0)
""")


def _first_call(lib, env):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    module = {"functrax": "functrax.numpy", "jax": "jax.numpy"}[lib]
    proc = subprocess.run([sys.executable, "-c", _SNIPPET.format(root=root, lib=lib,
                                                                module=module)],
                          env=env, capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("FIRST_CALL"):
            return float(line.split()[1]), ""
    return float("nan"), (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]


def run(libs):
    results = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, FUNCTRAX_CACHE_DIR=cache, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "warm cache"):
            for lib in [l for l in libs if l in ("functrax", "jax")]:
                if lib == "jax" and label != "cold":
                    continue  # JAX's persistent cache is off by default: its cold is its start
                t, err = _first_call(lib, env)
                r = Result(f"W8 first call, {label}", lib, median_s=t, min_s=t, first_call_s=t,
                           ok=err == "", note=err)
                print(f"running W8 ({label}) {lib}: {'%.2f s' % t if not err else err}",
                      flush=True)
                results.append(r)
    return results
