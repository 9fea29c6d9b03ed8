"""Differentially private SGD: per-example gradients (vmap of grad), each clipped to a
maximum L2 norm, summed, noised with Gaussian noise and averaged, on the digits.

    python examples/dp_sgd.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402
from functrax import nn, random, tree_util  # noqa: E402

from _common import load_digits_csv, progress, steps, train_test_split  # noqa: E402

CLIP, NOISE, LR, BATCH = 1.0, 1.1, 0.5, 64


def predict(params, x):
    (w1, b1), (w2, b2) = params
    return nn.relu(x @ w1 + b1) @ w2 + b2


def example_loss(params, x, y):
    return -nn.log_softmax(predict(params, x))[y]


@ft.jit
def private_step(params, key, x, y):
    grads = ft.vmap(ft.grad(example_loss), in_axes=(None, 0, 0))(params, x, y)
    leaves = tree_util.tree_leaves(grads)
    norms = fnp.sqrt(sum(fnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves))
    scale = fnp.minimum(1.0, CLIP / (norms + 1e-12))  # clip each example's gradient
    keys = random.split(key, len(leaves))

    def privatize(g, k):
        clipped = fnp.sum(g * scale.reshape((-1,) + (1,) * (g.ndim - 1)), axis=0)
        noise = NOISE * CLIP * random.normal(k, clipped.shape, clipped.dtype)
        return (clipped + noise) / x.shape[0]
    noisy = tree_util.tree_unflatten(tree_util.tree_structure(grads),
                                     [privatize(g, k) for g, k in zip(leaves, keys)])
    return tree_util.tree_map(lambda p, g: p - LR * g, params, noisy)


def main():
    images, labels = load_digits_csv()
    x_train, y_train, x_test, y_test = train_test_split(images.reshape(-1, 64), labels)
    k1, k2, key = random.split(random.key(6), 3)
    params = [(nn.initializers.he_normal()(k1, (64, 64), fnp.float32), fnp.zeros(64, fnp.float32)),
              (nn.initializers.glorot_normal()(k2, (64, 10), fnp.float32),
               fnp.zeros(10, fnp.float32))]
    rng = np.random.default_rng(0)
    for _ in progress(range(steps(300)), "DP-SGD"):
        idx = rng.integers(0, len(x_train), BATCH)
        key, sub = random.split(key)
        params = private_step(params, sub, x_train[idx], y_train[idx])
    acc = np.mean(np.argmax(predict(params, x_test), -1) == y_test)
    print(f"DP-SGD (clip {CLIP}, noise multiplier {NOISE}) test accuracy: {acc:.3f}")


if __name__ == "__main__":
    main()
