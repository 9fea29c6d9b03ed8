"""A ConvNet on the handwritten digits: conv32-pool-conv64-pool-dense10 with 3x3 SAME
convolutions, ReLU, 2x2 max pooling and a softmax, trained with Adam under jit. (The digits
are 8x8, so two poolings leave 2x2x64 features.)

    python examples/convnet_digits.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402
from functrax import lax, nn, optim, random  # noqa: E402

from _common import load_digits_csv, progress, steps, train_test_split  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def init(key):
    k1, k2, k3 = random.split(key, 3)
    he = nn.initializers.he_normal()
    return {"conv1": (he(k1, (3, 3, 1, 32), fnp.float32), fnp.zeros(32, fnp.float32)),
            "conv2": (he(k2, (3, 3, 32, 64), fnp.float32), fnp.zeros(64, fnp.float32)),
            "dense": (nn.initializers.glorot_normal()(k3, (2 * 2 * 64, 10), fnp.float32),
                      fnp.zeros(10, fnp.float32))}


def max_pool(x):
    return lax.reduce_window(x, -fnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def forward(params, x):
    for name in ("conv1", "conv2"):
        k, b = params[name]
        x = max_pool(nn.relu(lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                      dimension_numbers=DN) + b))
    w, b = params["dense"]
    return x.reshape(x.shape[0], -1) @ w + b


def loss_fn(params, x, y):
    return -fnp.mean(fnp.sum(nn.one_hot(y, 10) * nn.log_softmax(forward(params, x)), axis=-1))


def main():
    images, labels = load_digits_csv()
    x_train, y_train, x_test, y_test = train_test_split(images[..., None], labels)
    params = init(random.key(2))
    opt = optim.adam(3e-3)
    state = opt.init(params)

    @ft.jit
    def step(params, state, x, y):
        loss, g = ft.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(g, state, params)
        return optim.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(0)
    bar = progress(range(steps(250)), "training")
    for i in bar:
        idx = rng.integers(0, len(x_train), 64)
        params, state, loss = step(params, state, x_train[idx], y_train[idx])
        if i % 10 == 0:
            bar.note = f"loss {float(loss):.3f}"
    pred = np.argmax(ft.jit(forward)(params, x_test), axis=-1)
    print(f"ConvNet test accuracy: {np.mean(pred == y_test):.3f}")


if __name__ == "__main__":
    main()
