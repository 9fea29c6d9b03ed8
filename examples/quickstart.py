"""functrax in one minute: train a digit classifier with jit, grad and Adam; look at
per-example gradient norms with vmap(grad); compute a Hessian of the loss in a small
parameter subspace; print the jaxpr of the training step.

    python examples/quickstart.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402
from functrax import nn, optim, random  # noqa: E402

from _common import load_digits_csv, progress, steps, train_test_split  # noqa: E402


def init_params(key, sizes):
    params = []
    for k, (m, n) in zip(random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        w = nn.initializers.glorot_normal()(k, (m, n), fnp.float32)
        params.append({"w": w, "b": fnp.zeros(n, fnp.float32)})
    return params


def predict(params, x):
    for layer in params[:-1]:
        x = nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, labels):
    logits = predict(params, x)
    return -fnp.mean(fnp.sum(nn.one_hot(labels, 10) * nn.log_softmax(logits), axis=-1))


def main():
    images, labels = load_digits_csv()
    x = images.reshape(len(images), 64)
    x_train, y_train, x_test, y_test = train_test_split(x, labels)
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8 pixels")

    params = init_params(random.key(0), [64, 128, 10])
    opt = optim.adam(1e-2)
    opt_state = opt.init(params)

    @ft.jit
    def train_step(params, opt_state, x, y):
        loss, grads = ft.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optim.apply_updates(params, updates), opt_state, loss

    accuracy = ft.jit(lambda p, x, y: fnp.mean(fnp.argmax(predict(p, x), axis=-1) == y))

    batch = 128
    rng = np.random.default_rng(0)
    bar = progress(range(steps(300)), "training")
    for step in bar:
        idx = rng.integers(0, len(x_train), batch)
        params, opt_state, loss = train_step(params, opt_state, x_train[idx], y_train[idx])
        if step % 20 == 0:
            bar.note = f"loss {float(loss):.3f}"
    print(f"test accuracy: {float(accuracy(params, x_test, y_test)):.3f}")

    # Per-example gradients: one gradient per test image, in one vectorized call.
    per_example = ft.jit(ft.vmap(ft.grad(loss_fn), in_axes=(None, 0, 0)))
    grads = per_example(params, x_test[:256, None], y_test[:256, None])
    norms = np.sqrt(sum(np.sum(np.asarray(g).reshape(256, -1) ** 2, axis=1)
                        for g in ft.tree_util.tree_leaves(grads)))
    hardest = np.argsort(norms)[-3:][::-1]
    print(f"per-example gradient norms: median {np.median(norms):.4f}, largest "
          f"{', '.join(f'{norms[i]:.3f} (label {y_test[i]})' for i in hardest)}")

    # The Hessian of the loss in a 2-D subspace of parameters: the output bias of two classes.
    def loss_in_subspace(delta):
        bias = params[-1]["b"].at[:2].add(delta)
        moved = params[:-1] + [{"w": params[-1]["w"], "b": bias}]
        return loss_fn(moved, x_test, y_test)
    h = ft.hessian(loss_in_subspace)(fnp.zeros(2, fnp.float32))
    print("Hessian of the test loss w.r.t. the biases of classes 0 and 1:")
    print(np.array2string(np.asarray(h), precision=4))

    print("the jaxpr of one training step (first 12 lines):")
    text = str(ft.make_jaxpr(train_step)(params, opt_state, x_train[:batch], y_train[:batch]))
    print("\n".join(text.splitlines()[:12] + ["    ..."]))


if __name__ == "__main__":
    main()
