"""Feature visualization: optimize an input "image" with Adam (and weight decay) so that a
small trained classifier's score for one digit class is as high as possible.

    python examples/feature_visualization.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402
from functrax import nn, optim  # noqa: E402

from _common import load_digits_csv, progress, steps  # noqa: E402


def main():
    images, labels = load_digits_csv()
    x = images.reshape(-1, 64)
    # A linear softmax classifier is enough to have something to visualize.
    w = np.zeros((64, 10), np.float32)
    loss = lambda w: -fnp.mean(fnp.sum(nn.one_hot(labels, 10) *  # noqa: E731
                                       nn.log_softmax(x @ w), axis=-1))
    g = ft.jit(ft.grad(loss))
    for _ in range(steps(100, 2)):
        w = w - 0.5 * g(w)

    target = 3
    score = lambda img: (img.reshape(64) @ w)[target]  # noqa: E731
    img = np.full((8, 8), 0.5, np.float32)
    opt = optim.adamw(0.05, weight_decay=1e-2)  # decay keeps the image from blowing up
    state = opt.init(img)
    neg_score_grad = ft.jit(ft.grad(lambda im: -score(im)))
    for _ in progress(range(steps(200)), f"maximizing class {target}"):
        updates, state = opt.update(neg_score_grad(img), state, img)
        img = fnp.clip(optim.apply_updates(img, updates), 0.0, 1.0)
    print(f"score for class {target}: {float(score(img)):.3f}")
    for row in np.asarray(img):
        print("".join(" .:-=+*#%@"[int(v * 9.99)] for v in row))


if __name__ == "__main__":
    main()
