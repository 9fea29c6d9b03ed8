"""The back-end-parametrized suite on the CUDA back end, under numba's simulator.

Every test that takes the ``backend`` fixture (see conftest.py) runs once more with
``jit(..., backend="cuda")`` in a child pytest with ``NUMBA_ENABLE_CUDASIM=1`` — a separate
process because numba fixes the simulator choice when ``numba.cuda`` is first imported, and
this process needs the real CUDA target for ``compile_ptx``. The simulator does no type
checking, so the kernels the child generated are then compiled here to PTX for a real GPU
(compute capability 9.0) — what would fail to compile on the device fails here. The child
generates thousands of distinct kernels, mostly differing in shapes; a covering sample (every
operation, helper and argument type of every kernel, per style and dtypes, appears in at least
one compiled kernel) keeps this to a minute or two.
"""
import json
import os
import re
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


_LOCAL_NAME = re.compile(r"[lornv]\d+|i\d+|acc\d+|kk|rr|nr|t\d+|n\d+")


def _features(kernel):
    """What a kernel's compile depends on: each name and operator of its body, paired with its
    style and the dtypes it touches, plus each (style, dtype, ndim) of its arguments. Two
    kernels that differ only in shapes, literals and the order of their operations share all
    of them."""
    body = kernel["source"][kernel["source"].rfind("\ndef kernel"):]
    tokens = set(re.findall(r"[A-Za-z_][\w.]*|[-+*/%<>=!&|^~]+", body))
    dts = tuple(sorted({a[1] for a in kernel["arg_types"] if a[0] != "size"}))
    feats = {(kernel["style"], dts, t) for t in tokens if not _LOCAL_NAME.fullmatch(t)}
    feats |= {(kernel["style"], a[1], a[2]) for a in kernel["arg_types"] if a[0] != "size"}
    return feats


def _covering_sample(kernels):
    """A small set of kernels covering every feature of all of them (greedy set cover): the
    suite generates thousands of kernels (0.5 s of NVVM each) that differ mostly in shapes."""
    feats = [_features(k) for k in kernels]
    covered, chosen, left = set(), [], set(range(len(kernels)))
    while left:
        best = max(left, key=lambda i: len(feats[i] - covered))
        if not feats[best] - covered:
            break
        chosen.append(kernels[best])
        covered |= feats[best]
        left.discard(best)
    return chosen


def test_every_kind_of_generated_kernel_compiles_to_ptx(suite_run):
    _, kernels = suite_run
    assert len(kernels) >= 20, f"only {len(kernels)} kernels were generated"
    assert {k["style"] for k in kernels} >= {"map", "rows"}
    sample = _covering_sample(kernels)
    print(f"{len(kernels)} distinct kernels generated; compiling a covering sample of "
          f"{len(sample)}")
    failures = []
    for k in sample:
        spec = fcuda.KernelSpec(k["source"], k["style"],
                                tuple(tuple(a) for a in k["arg_types"]), k["summary"])
        try:
            ptx = fcuda.compile_ptx(spec, cc=(9, 0))
            if ".visible .entry" not in ptx:
                failures.append((spec.summary, "no kernel entry in the PTX"))
        except Exception as e:  # report every kernel that fails, not just the first
            failures.append((spec.summary, f"{type(e).__name__}: {e}"))
    assert not failures, failures[:10]
