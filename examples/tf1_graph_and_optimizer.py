"""TensorFlow 1's graph-and-optimizer workflow, written functionally.

In TF1 one builds a graph with Variables, asks the optimizer for
``compute_gradients(loss, [W, b])`` and then runs ``apply_gradients``. Here the "graph" is a
pure function of the variables, the gradients come from ``grad`` with respect to two
arguments, and Adam's ``update`` computes the step that ``apply_updates`` applies.

    python examples/tf1_graph_and_optimizer.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402
from functrax import optim  # noqa: E402

from _common import steps  # noqa: E402


def loss(W, b, x, y):
    # A tensordot over the feature axes, as TF1 code often writes it.
    pred = fnp.tensordot(x, W, axes=([1, 2], [0, 1])) + b
    return fnp.mean((pred - y) ** 2)


def main():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3, 4))
    W_true, b_true = rng.standard_normal((3, 4)), 0.5
    y = np.tensordot(x, W_true, axes=([1, 2], [0, 1])) + b_true

    variables = {"W": np.zeros((3, 4)), "b": np.zeros(())}
    opt = optim.adam(0.05)
    state = opt.init(variables)
    compute_gradients = ft.jit(ft.grad(loss, argnums=(0, 1)))  # d loss / d(W, b)

    for step in range(steps(400, 3)):
        g_W, g_b = compute_gradients(variables["W"], variables["b"], x, y)   # compute
        updates, state = opt.update({"W": g_W, "b": g_b}, state, variables)  # ...then
        variables = optim.apply_updates(variables, updates)                  # apply
        if step % 100 == 0:
            print(f"step {step:4d}  loss {float(loss(variables['W'], variables['b'], x, y)):.5f}")
    print(f"max |W - W_true| = {np.max(np.abs(variables['W'] - W_true)):.4f}, "
          f"b = {float(variables['b']):.4f} (true {b_true})")


if __name__ == "__main__":
    main()
