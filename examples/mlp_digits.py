"""A fully connected network (FCN) on the handwritten digits, as the framework-comparison
posts build it: 64-256-128-10 with ReLU, softmax cross-entropy, SGD with momentum, jit.

    python examples/mlp_digits.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402
from functrax import nn, optim, random  # noqa: E402

from _common import load_digits_csv, progress, steps, train_test_split  # noqa: E402


def init(key, sizes=(64, 256, 128, 10)):
    keys = random.split(key, len(sizes) - 1)
    return [(nn.initializers.he_normal()(k, (m, n), fnp.float32), fnp.zeros(n, fnp.float32))
            for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def forward(params, x):
    for w, b in params[:-1]:
        x = nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def loss_fn(params, x, y):
    return -fnp.mean(nn.log_softmax(forward(params, x))[fnp.arange(x.shape[0]), y])


def main():
    images, labels = load_digits_csv()
    x_train, y_train, x_test, y_test = train_test_split(images.reshape(-1, 64), labels)
    params = init(random.key(1))
    opt = optim.sgd(0.1, momentum=0.9)
    state = opt.init(params)

    @ft.jit
    def step(params, state, x, y):
        loss, g = ft.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(g, state, params)
        return optim.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(0)
    bar = progress(range(steps(20, 1)), "epochs")
    for _ in bar:
        for idx in np.array_split(rng.permutation(len(x_train)), len(x_train) // 64):
            params, state, loss = step(params, state, x_train[idx], y_train[idx])
        bar.note = f"loss {float(loss):.3f}"
    pred = np.argmax(forward(params, x_test), axis=-1)
    print(f"FCN test accuracy: {np.mean(pred == y_test):.3f}")


if __name__ == "__main__":
    main()
