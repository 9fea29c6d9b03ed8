"""A character-level RNN language model on a small text shipped with functrax, with the
recurrence written as ``lax.scan`` and the whole training step under ``jit``; then samples a
few characters.

    python examples/rnn_language_model.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functrax as ft  # noqa: E402
import functrax.numpy as fnp  # noqa: E402
from functrax import lax, nn, optim, random  # noqa: E402
from functrax.datasets import load_text  # noqa: E402

from _common import progress, steps  # noqa: E402

HIDDEN = 96


def init(key, vocab):
    k1, k2, k3 = random.split(key, 3)
    glorot = nn.initializers.glorot_normal()
    return {"wx": glorot(k1, (vocab, HIDDEN), fnp.float32),
            "wh": nn.initializers.orthogonal()(k2, (HIDDEN, HIDDEN), fnp.float32),
            "b": fnp.zeros(HIDDEN, fnp.float32),
            "wy": glorot(k3, (HIDDEN, vocab), fnp.float32),
            "by": fnp.zeros(vocab, fnp.float32)}


def loss_fn(params, inputs, targets, vocab):
    """inputs, targets: (time, batch) int arrays of character ids."""
    def cell(h, x_t):
        h = fnp.tanh(nn.one_hot(x_t, vocab, dtype=fnp.float32) @ params["wx"] + h @ params["wh"] + params["b"])
        return h, h @ params["wy"] + params["by"]
    h0 = fnp.zeros((inputs.shape[1], HIDDEN), fnp.float32)
    _, logits = lax.scan(cell, h0, inputs)
    return -fnp.mean(fnp.sum(nn.one_hot(targets, vocab) * nn.log_softmax(logits), axis=-1))


def main():
    text = load_text()
    chars = sorted(set(text))
    vocab = len(chars)
    ids = np.array([chars.index(c) for c in text])
    print(f"corpus: {len(text)} characters, vocabulary of {vocab}")
    params = init(random.key(4), vocab)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(3e-3))
    state = opt.init(params)

    @ft.jit
    def step(params, state, inputs, targets):
        loss, g = ft.value_and_grad(loss_fn)(params, inputs, targets, vocab)
        updates, state = opt.update(g, state, params)
        return optim.apply_updates(params, updates), state, loss

    seq, batch = 32, 16
    rng = np.random.default_rng(0)
    bar = progress(range(steps(300)), "training")
    for i in bar:
        starts = rng.integers(0, len(ids) - seq - 1, batch)
        window = np.stack([ids[s:s + seq + 1] for s in starts], axis=1)  # (seq+1, batch)
        params, state, loss = step(params, state, window[:-1], window[1:])
        if i % 20 == 0:
            bar.note = f"loss {float(loss):.3f} nats/char"

    # Sample: feed the last character, draw the next from the softmax.
    key = random.key(5)
    h = fnp.zeros(HIDDEN, fnp.float32)
    c = chars.index("T") if "T" in chars else 0
    out = [chars[c]]
    for _ in range(80 if not os.environ.get("FUNCTRAX_EXAMPLE_SMOKE") else 5):
        h = fnp.tanh(params["wx"][c] + h @ params["wh"] + params["b"])
        key, sub = random.split(key)
        c = int(random.categorical(sub, h @ params["wy"] + params["by"]))
        out.append(chars[c])
    print("sample:", "".join(out).replace("\n", " "))


if __name__ == "__main__":
    main()
