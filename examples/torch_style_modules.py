"""A Torch-style module container, written as pure functions over a params pytree:
``Sequential(Linear(64, 128), ReLU(), Linear(128, 10))`` builds an ``init`` and an ``apply``,
and training goes through a loss-and-gradient callback (the ``closure`` of torch.optim),
driving Adam.

    python examples/torch_style_modules.py
"""
import os
import sys
from typing import Callable, NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402
from functrax import nn, optim, random  # noqa: E402

from _common import load_digits_csv, progress, steps, train_test_split  # noqa: E402


class Module(NamedTuple):
    init: Callable    # key -> params
    apply: Callable   # (params, x) -> y


def Linear(n_in, n_out):
    def init(key):
        w = nn.initializers.lecun_normal()(key, (n_in, n_out), fnp.float32)
        return {"weight": w, "bias": fnp.zeros(n_out, fnp.float32)}
    return Module(init, lambda p, x: x @ p["weight"] + p["bias"])


def ReLU():
    return Module(lambda key: {}, lambda p, x: nn.relu(x))


def Sequential(*layers):
    def init(key):
        return [layer.init(k) for layer, k in zip(layers, random.split(key, len(layers)))]

    def apply(params, x):
        for layer, p in zip(layers, params):
            x = layer.apply(p, x)
        return x
    return Module(init, apply)


def main():
    images, labels = load_digits_csv()
    x_train, y_train, x_test, y_test = train_test_split(images.reshape(-1, 64), labels)
    model = Sequential(Linear(64, 128), ReLU(), Linear(128, 10))
    params = model.init(random.key(3))

    def criterion(params, x, y):  # nn.CrossEntropyLoss
        return -fnp.mean(fnp.sum(nn.one_hot(y, 10) * nn.log_softmax(model.apply(params, x)), -1))

    loss_and_grad = ft.jit(ft.value_and_grad(criterion))
    optimizer = optim.adam(1e-2)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(0)
    bar = progress(range(steps(300)), "training")
    for i in bar:
        idx = rng.integers(0, len(x_train), 64)

        def closure(p):  # what torch's optimizer.step(closure) calls
            return loss_and_grad(p, x_train[idx], y_train[idx])
        loss, grads = closure(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optim.apply_updates(params, updates)
        if i % 20 == 0:
            bar.note = f"loss {float(loss):.3f}"
    acc = np.mean(np.argmax(model.apply(params, x_test), -1) == y_test)
    print(f"Sequential(Linear, ReLU, Linear) test accuracy: {acc:.3f}")


if __name__ == "__main__":
    main()
