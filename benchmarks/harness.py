"""Timing harness: the same workload on every installed library, interleaved, checked first.

A workload provides, per library, a ``prepare()`` returning a zero-argument callable that
runs one step and returns its result as numpy-convertible values. The harness:

1. checks each library's result against the float64 numpy reference (before any timing),
2. warms each callable up (compiles happen here, and are reported separately),
3. times repetitions interleaved across libraries (library A, B, C, A, B, C, ...) so that
   machine noise hits everyone alike, and
4. reports medians and ratios to JAX.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Result:
    workload: str
    library: str
    median_s: float = float("nan")
    min_s: float = float("nan")
    first_call_s: float = float("nan")
    ok: bool = True
    note: str = ""


@dataclass
class Workload:
    name: str
    description: str
    reference: callable  # () -> numpy result (float64)
    impls: dict = field(default_factory=dict)  # library -> prepare() -> step callable
    rtol: float = 1e-4
    atol: float = 1e-5
    inner: int = 1  # calls per timed repetition, for microsecond-scale steps


def _to_numpy(x):
    if isinstance(x, (list, tuple)):
        return [_to_numpy(e) for e in x]
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in sorted(x.items())}
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _close(a, b, rtol, atol):
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol, atol) for k in a)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)


def _block(out):
    if hasattr(out, "block_until_ready"):
        out.block_until_ready()
    elif isinstance(out, (list, tuple)):
        for o in out:
            _block(o)
    elif isinstance(out, dict):
        for o in out.values():
            _block(o)
    return out


def run_workload(w: Workload, libraries, reps=20, min_time=0.0, log=print):
    ref = _to_numpy(w.reference())
    steps, results = {}, {}
    for lib in libraries:
        prepare = w.impls.get(lib)
        if prepare is None:
            continue
        res = Result(w.name, lib)
        results[lib] = res
        try:
            step = prepare()
            t0 = time.perf_counter()
            out = _block(step())
            res.first_call_s = time.perf_counter() - t0
            if not _close(_to_numpy(out), ref, w.rtol, w.atol):
                res.ok = False
                res.note = "WRONG ANSWER (differs from the float64 numpy reference)"
                log(f"  {w.name} {lib}: {res.note}")
                continue
            for _ in range(2):
                _block(step())
            steps[lib] = step
        except Exception as e:  # a peer lacking a feature must not stop the others
            res.ok = False
            res.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            log(f"  {w.name} {lib}: {res.note}")
    times = {lib: [] for lib in steps}
    for _ in range(reps):
        for lib, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(w.inner):
                out = step()
            _block(out)
            times[lib].append((time.perf_counter() - t0) / w.inner)
    for lib, ts in times.items():
        results[lib].median_s = statistics.median(ts)
        results[lib].min_s = min(ts)
    return list(results.values())


def fmt_time(s):
    if s != s:  # NaN
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def table(all_results, libraries):
    """A markdown table: one row per workload, median per library, ratio to JAX."""
    header = "| workload | " + " | ".join(libraries) + " | functrax / jax |"
    lines = [header, "|" + "---|" * (len(libraries) + 2)]
    by_w = {}
    for r in all_results:
        by_w.setdefault(r.workload, {})[r.library] = r
    for w, rs in by_w.items():
        cells = []
        for lib in libraries:
            r = rs.get(lib)
            if r is None:
                cells.append("n/a")
            elif not r.ok:
                cells.append("fail")
            else:
                cells.append(fmt_time(r.median_s))
        ft, jx = rs.get("functrax"), rs.get("jax")
        ratio = "—"
        if ft and jx and ft.ok and jx.ok and jx.median_s == jx.median_s:
            ratio = f"{ft.median_s / jx.median_s:.2f}x"
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)
