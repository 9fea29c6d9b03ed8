"""Small helpers shared by the examples: a progress bar, the smoke-test switch, and reading
the digits CSV the way a user would.

Set ``FUNCTRAX_EXAMPLE_SMOKE=1`` to run every example with a handful of steps (the test suite
does this); without it each example runs its full (still under a minute) job.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

SMOKE = os.environ.get("FUNCTRAX_EXAMPLE_SMOKE") == "1"


def steps(full: int, smoke: int = 2) -> int:
    """How many steps to run: ``full`` normally, ``smoke`` under the test suite."""
    return smoke if SMOKE else full


class progress:
    """A one-line progress bar: ``for i in progress(range(n), "training"): ...``; the caller
    can show a metric with ``bar.note = f"loss {loss:.3f}"``."""

    def __init__(self, iterable, label="", width=30):
        self.items = list(iterable)
        self.label = label
        self.width = width
        self.note = ""

    def __iter__(self):
        n = len(self.items)
        start = time.perf_counter()
        for i, item in enumerate(self.items):
            yield item
            done = (i + 1) / n
            filled = int(done * self.width)
            elapsed = time.perf_counter() - start
            sys.stdout.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                             f"{i + 1}/{n} {elapsed:5.1f}s {self.note}")
            sys.stdout.flush()
        sys.stdout.write("\n")


def load_digits_csv():
    """Read the 8x8 digits shipped with functrax from their CSV file: 64 pixel columns (0..16)
    and a label column per line. Returns (images (n, 8, 8) in [0, 1], labels (n,))."""
    from functrax.datasets import DATA_DIR
    table = np.loadtxt(os.path.join(DATA_DIR, "digits.csv"), delimiter=",", dtype=np.int64)
    images = table[:, :64].reshape(-1, 8, 8).astype(np.float32) / 16.0
    return images, table[:, 64]


def train_test_split(x, y, test_fraction=0.2, seed=0):
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
