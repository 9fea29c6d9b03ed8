"""The back-end-parametrized suite on the CUDA back end, under numba's simulator.

Every test that takes the ``backend`` fixture (see conftest.py) runs once more with
``jit(..., backend="cuda")`` in a child pytest with ``NUMBA_ENABLE_CUDASIM=1`` — a separate
process because numba fixes the simulator choice when ``numba.cuda`` is first imported, and
this process needs the real CUDA target for ``compile_ptx``. The simulator does no type
checking, so every kernel the child generated is then compiled here to PTX for a real GPU
(compute capability 9.0) — what would fail to compile on the device fails here.
"""
import json
import os
import subprocess
import sys

import pytest

import functrax as ft
from functrax.lowering import cuda as fcuda

REPO = os.path.dirname(os.path.dirname(os.path.abspath(ft.__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cuda_suite")
    log = tmp / "kernels.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", FUNCTRAX_TEST_KERNEL_LOG=str(log),
               FUNCTRAX_CACHE_DIR=str(tmp / "cache"),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", HERE, "-p", "no:cacheprovider",
         "--backends=cuda", "-p", "no:warnings",
         "--ignore", os.path.join(HERE, "test_cuda_suite.py"),
         "--ignore", os.path.join(HERE, "test_cuda.py"),
         "--ignore", os.path.join(HERE, "test_examples.py")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1500)
    kernels = json.loads(log.read_text()) if log.exists() else []
    return proc, kernels


def test_parametrized_suite_passes_on_simulated_cuda(suite_run):
    proc, _ = suite_run
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = [ln for ln in proc.stdout.splitlines() if " passed" in ln and " in " in ln]
    assert summary, proc.stdout[-2000:]
    print(summary[-1])


def test_every_generated_kernel_compiles_to_ptx(suite_run):
    _, kernels = suite_run
    assert len(kernels) >= 20, f"only {len(kernels)} kernels were generated"
    assert {k["style"] for k in kernels} >= {"map", "rows"}
    failures = []
    for k in kernels:
        spec = fcuda.KernelSpec(k["source"], k["style"],
                                tuple(tuple(a) for a in k["arg_types"]), k["summary"])
        try:
            ptx = fcuda.compile_ptx(spec, cc=(9, 0))
            if ".visible .entry" not in ptx:
                failures.append((spec.summary, "no kernel entry in the PTX"))
        except Exception as e:  # report every kernel that fails, not just the first
            failures.append((spec.summary, f"{type(e).__name__}: {e}"))
    assert not failures, failures[:10]
