"""Run the benchmark workloads on functrax and on every installed peer, side by side.

    python benchmarks/run.py                 # all workloads, all installed libraries
    python benchmarks/run.py --only W1,W5    # a subset
    python benchmarks/run.py --reps 50 --libs functrax,jax

Every library's answer is checked against a float64 numpy reference before it is timed;
repetitions are interleaved across libraries; medians and the ratio to JAX are printed as a
markdown table (paste it into docs/benchmarks.md with the machine and date).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.threads import pin_one_thread, pin_torch  # noqa: E402

pin_one_thread()

from benchmarks import harness, workloads  # noqa: E402

PEERS = {"jax": "jax", "torch": "torch", "autograd": "autograd"}


def installed(libs):
    out = []
    for lib in libs:
        if lib in ("functrax", "numpy", "python-loop") or \
                importlib.util.find_spec(PEERS.get(lib, lib)):
            out.append(lib)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated workload ids (W1,...,W8; W1e, W3b, W5e "
                    "for one part of a group)")
    ap.add_argument("--libs", default="functrax,jax,torch,autograd,numpy,python-loop")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--w4-size", type=int, default=10_000_000)
    args = ap.parse_args(argv)
    libs = installed(args.libs.split(","))
    if "torch" in libs:
        pin_torch()
    chosen = [w.strip() for w in args.only.split(",") if w.strip()] or list(workloads.ALL) + ["W8"]
    print(f"# functrax benchmarks — {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}, one thread per library")
    print(f"libraries: {', '.join(libs)}\n")
    results = []
    for wid in chosen:
        if wid == "W8":
            from benchmarks import cold_start
            results.extend(cold_start.run(libs))
            continue
        if wid not in workloads.ALL and wid not in workloads.SINGLE:
            raise SystemExit(f"--only: unknown workload {wid!r}; choose from "
                             f"{', '.join(list(workloads.ALL) + list(workloads.SINGLE) + ['W8'])}")
        for make in workloads.ALL.get(wid) or [workloads.SINGLE[wid]]:
            w = make(args.w4_size) if make is workloads.w4 else make()
            print(f"running {w.name}: {w.description}", flush=True)
            rs = harness.run_workload(w, libs, reps=args.reps)
            for r in rs:
                if r.ok:
                    print(f"  {r.library:9s} median {harness.fmt_time(r.median_s):>10s}   "
                          f"first call {harness.fmt_time(r.first_call_s)}")
            results.extend(rs)
    print()
    print(harness.table(results, libs))
    return results


if __name__ == "__main__":
    main()
