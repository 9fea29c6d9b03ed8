"""Float64 numpy references for the benchmark workloads, written by hand (forward and
backward passes), independent of every library under test."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits, y_onehot):
    """The batch-mean softmax cross-entropy and its gradient with respect to the logits."""
    lsm = log_softmax(logits)
    n = logits.shape[0]
    return -(y_onehot * lsm).sum() / n, (np.exp(lsm) - y_onehot) / n


def sgd_update(params, grads, lr):
    return [[p - lr * g for p, g in zip(layer, glayer)] for layer, glayer in zip(params, grads)]


# --- W1: MLP with ReLU, softmax cross-entropy, one SGD step ------------------------------------

def mlp_relu_sgd_step(params, x, y_onehot, lr):
    (w1, b1), (w2, b2), (w3, b3) = params
    h1p = x @ w1 + b1
    h1 = np.maximum(h1p, 0)
    h2p = h1 @ w2 + b2
    h2 = np.maximum(h2p, 0)
    loss, d_logits = softmax_cross_entropy(h2 @ w3 + b3, y_onehot)
    g_w3, g_b3 = h2.T @ d_logits, d_logits.sum(0)
    d_h2 = (d_logits @ w3.T) * (h2p > 0)
    g_w2, g_b2 = h1.T @ d_h2, d_h2.sum(0)
    d_h1 = (d_h2 @ w2.T) * (h1p > 0)
    g_w1, g_b1 = x.T @ d_h1, d_h1.sum(0)
    grads = ((g_w1, g_b1), (g_w2, g_b2), (g_w3, g_b3))
    return loss, sgd_update(params, grads, lr)


# --- W2: per-example gradients of a tanh MLP ---------------------------------------------------

def mlp_tanh_per_example_grads(params, x, y_onehot):
    (w1, b1), (w2, b2) = params
    h = np.tanh(x @ w1 + b1)  # (B, 128)
    logits = h @ w2 + b2
    d_logits = np.exp(log_softmax(logits)) - y_onehot  # per-example loss: no 1/n
    g_w2 = np.einsum("bi,bj->bij", h, d_logits)
    g_b2 = d_logits
    d_h = (d_logits @ w2.T) * (1 - h * h)
    g_w1 = np.einsum("bi,bj->bij", x, d_h)
    g_b1 = d_h
    return [[g_w1, g_b1], [g_w2, g_b2]]


# --- W3: Hessian and HVP of sum(tanh(A x)^2) + logsumexp(x) ------------------------------------

def hessian_tanh_lse(a, x):
    t = np.tanh(a @ x)
    d2 = (2 - 6 * t * t) * (1 - t * t)
    p = np.exp(x - x.max())
    p /= p.sum()
    return (a.T * d2) @ a + np.diag(p) - np.outer(p, p)


# --- W4: value and gradient of an elementwise chain ---------------------------------------------

def sin_exp_tanh_value_and_grad(x):
    x = x.astype(np.float64)
    e = np.exp(-x * x)
    value = np.sum(np.sin(x) * e + np.tanh(x))
    grad = np.cos(x) * e - 2 * x * np.sin(x) * e + 1 - np.tanh(x) ** 2
    return [value, grad]


# --- W6: ConvNet conv32-pool-conv64-pool-dense10, NHWC, SGD step ---------------------------------

def _conv_same(x, w):
    """x (N,H,W,C), w (3,3,C,O), stride 1, SAME padding."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = sliding_window_view(xp, (3, 3), axis=(1, 2))  # (N,H,W,C,3,3)
    return np.einsum("nhwcij,ijco->nhwo", patches, w, optimize=True)


def _conv_same_grads(x, w, d_out):
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = sliding_window_view(xp, (3, 3), axis=(1, 2))
    g_w = np.einsum("nhwcij,nhwo->ijco", patches, d_out, optimize=True)
    dp = np.pad(d_out, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dpatches = sliding_window_view(dp, (3, 3), axis=(1, 2))  # (N,H,W,O,3,3)
    g_x = np.einsum("nhwoij,ijco->nhwc", dpatches, w[::-1, ::-1], optimize=True)
    return g_x, g_w


def _pool(x):
    n, h, w, c = x.shape
    r = x.reshape(n, h // 2, 2, w // 2, 2, c)
    out = r.max(axis=(2, 4))
    # Gradient to the first maximal element of each window (ties are measure-zero here).
    mask = (r == out[:, :, None, :, None, :])
    first = np.cumsum(np.cumsum(mask, axis=2), axis=4) == 1
    return out, mask & first


def _unpool(d, mask):
    n, h2, w2, c = d.shape
    return (mask * d[:, :, None, :, None, :]).reshape(n, h2 * 2, w2 * 2, c)


def convnet_sgd_step(params, x, y_onehot, lr):
    (k1, c1), (k2, c2), (wd, bd) = params
    z1 = _conv_same(x, k1) + c1
    a1 = np.maximum(z1, 0)
    p1, m1 = _pool(a1)
    z2 = _conv_same(p1, k2) + c2
    a2 = np.maximum(z2, 0)
    p2, m2 = _pool(a2)
    flat = p2.reshape(p2.shape[0], -1)
    loss, d_logits = softmax_cross_entropy(flat @ wd + bd, y_onehot)
    g_wd, g_bd = flat.T @ d_logits, d_logits.sum(0)
    d_p2 = (d_logits @ wd.T).reshape(p2.shape)
    d_z2 = _unpool(d_p2, m2) * (z2 > 0)
    d_p1, g_k2 = _conv_same_grads(p1, k2, d_z2)
    g_c2 = d_z2.sum((0, 1, 2))
    d_z1 = _unpool(d_p1, m1) * (z1 > 0)
    _, g_k1 = _conv_same_grads(x, k1, d_z1)
    g_c1 = d_z1.sum((0, 1, 2))
    grads = ((g_k1, g_c1), (g_k2, g_c2), (g_wd, g_bd))
    return loss, sgd_update(params, grads, lr)


# --- W7: tanh RNN, gradient of the loss by backpropagation through time --------------------------

def rnn_grads(params, xs, targets):
    """h_t = tanh(x_t Wx + h_{t-1} Wh + b); loss = mean over t, batch of (h_t . v - y_t)^2."""
    wx, wh, b, v = params
    steps, batch, _ = xs.shape
    hidden = wh.shape[0]
    hs = np.zeros((steps + 1, batch, hidden))
    for t in range(steps):
        hs[t + 1] = np.tanh(xs[t] @ wx + hs[t] @ wh + b)
    preds = hs[1:] @ v  # (T, B)
    err = preds - targets
    scale = 2.0 / (steps * batch)
    g_v = np.einsum("tbh,tb->h", hs[1:], err) * scale
    g_wx, g_wh, g_b = np.zeros_like(wx), np.zeros_like(wh), np.zeros_like(b)
    dh_next = np.zeros((batch, hidden))
    for t in reversed(range(steps)):
        dh = dh_next + scale * err[t][:, None] * v[None, :]
        dz = dh * (1 - hs[t + 1] ** 2)
        g_wx += xs[t].T @ dz
        g_wh += hs[t].T @ dz
        g_b += dz.sum(0)
        dh_next = dz @ wh.T
    return [g_wx, g_wh, g_b, g_v]
