"""Theano's two-layer ReLU network, where ``theano.function(updates=...)`` changed shared
parameters in place at every call. The functional equivalent: a jitted step that returns new
parameters, with the old parameter buffers donated (``donate_argnums``) so they can be reused
in place instead of allocating new ones each step.

    python examples/theano_two_layer.py
"""
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402

from _common import progress, steps  # noqa: E402


def main():
    rng = np.random.default_rng(0)
    n, d_in, hidden, d_out = 64, 100, 50, 10
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    y = rng.standard_normal((n, d_out)).astype(np.float32)
    params = {"w1": (rng.standard_normal((d_in, hidden)) * 0.1).astype(np.float32),
              "w2": (rng.standard_normal((hidden, d_out)) * 0.1).astype(np.float32)}

    def loss(p, x, y):
        h = fnp.maximum(x @ p["w1"], 0.0)
        return fnp.sum((h @ p["w2"] - y) ** 2)

    # The "shared variables" are donated: their buffers may be overwritten by the update.
    @functools.partial(ft.jit, donate_argnums=0)
    def train(p, x, y, lr):
        l, g = ft.value_and_grad(loss)(p, x, y)
        return {k: p[k] - lr * g[k] for k in p}, l

    bar = progress(range(steps(500)), "training")
    for t in bar:
        params, l = train(params, x, y, 1e-4)
        if t % 50 == 0:
            bar.note = f"loss {float(l):.2f}"
    print(f"final loss {float(loss(params, x, y)):.4f}")


if __name__ == "__main__":
    main()
