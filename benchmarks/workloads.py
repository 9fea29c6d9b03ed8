"""The benchmark workloads W1-W7 (W8, the cold start, is in cold_start.py), each written once
per library: functrax, JAX, PyTorch, HIPS autograd (and numpy where that is the baseline).

Peers are imported lazily inside each ``prepare``, so a missing library only drops its
column.
"""
from __future__ import annotations

import numpy as np

from . import references as ref
from .harness import Workload

RNG = np.random.default_rng(0)


def _glorot(shape, rng, dtype):
    scale = np.sqrt(2.0 / (shape[0] + shape[-1]))
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _f64(tree):
    if isinstance(tree, (list, tuple)):
        return [_f64(t) for t in tree]
    return np.asarray(tree, np.float64)


def _torch_tree(tree, requires_grad=False):
    import torch
    if isinstance(tree, (list, tuple)):
        return [_torch_tree(t, requires_grad) for t in tree]
    return torch.tensor(np.asarray(tree), requires_grad=requires_grad)


# The loss functions are the same formula in every library whose numpy namespace has the
# functions they use; each builder takes that namespace (and the library's log_softmax or
# logsumexp, whose spelling differs) so that W1/W1e, W2, W3/W3b and W6 state them once.

def _autograd_log_softmax(z):
    import autograd.numpy as anp
    z = z - anp.max(z, axis=1, keepdims=True)
    return z - anp.log(anp.sum(anp.exp(z), axis=1, keepdims=True))


def _mlp_relu_loss(xnp, log_softmax):
    """W1's loss: ReLU MLP, softmax cross-entropy averaged over the batch."""
    def loss_fn(p, x, y):
        h = x
        for w, b in p[:-1]:
            h = xnp.maximum(h @ w + b, 0.0)
        w, b = p[-1]
        return -xnp.sum(y * log_softmax(h @ w + b)) / x.shape[0]
    return loss_fn


def _mlp_tanh_loss(xnp, log_softmax):
    """W2's per-example loss: one tanh hidden layer, softmax cross-entropy."""
    def loss(p, xi, yi):
        (w1, b1), (w2, b2) = p
        h = xnp.tanh(xi @ w1 + b1)
        return -xnp.sum(yi * log_softmax(h @ w2 + b2))
    return loss


def _convnet_loss(xnp, lax, log_softmax):
    """W6's loss: conv32-pool-conv64-pool-dense10 (NHWC), softmax cross-entropy."""
    dn = ("NHWC", "HWIO", "NHWC")

    def pool(h):
        return lax.reduce_window(h, -xnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def loss_fn(p, x, y):
        (k1, c1), (k2, c2), (wd, bd) = p
        h = pool(xnp.maximum(lax.conv_general_dilated(x, k1, (1, 1), "SAME",
                                                      dimension_numbers=dn) + c1, 0.0))
        h = pool(xnp.maximum(lax.conv_general_dilated(h, k2, (1, 1), "SAME",
                                                      dimension_numbers=dn) + c2, 0.0))
        logits = h.reshape(h.shape[0], -1) @ wd + bd
        return -xnp.sum(y * log_softmax(logits)) / x.shape[0]
    return loss_fn


def _jit_sgd_step(lib, loss_fn, lr):
    """One jitted SGD step, for the libraries (functrax, JAX) that share JAX's API."""
    @lib.jit
    def step(p, x, y):
        loss, g = lib.value_and_grad(loss_fn)(p, x, y)
        return loss, lib.tree_util.tree_map(lambda a, b: a - lr * b, p, g)
    return step


def _w3_function(xnp, a, logsumexp):
    """W3's f(x) = sum(tanh(A x)^2) + logsumexp(x)."""
    def f(x):
        return xnp.sum(xnp.tanh(a @ x) ** 2) + logsumexp(x)
    return f


# ---------------------------------------------------------------------------------------------
# W1: MLP 784-512-512-10 ReLU, batch 128, float32, softmax cross-entropy, one SGD step (jit)

def w1():
    rng = np.random.default_rng(1)
    sizes = [784, 512, 512, 10]
    params = [[_glorot((m, n), rng, np.float32), np.zeros(n, np.float32)]
              for m, n in zip(sizes[:-1], sizes[1:])]
    x = rng.standard_normal((128, 784)).astype(np.float32)
    labels = rng.integers(0, 10, 128)
    y = np.eye(10, dtype=np.float32)[labels]
    lr = 0.01

    def reference():
        loss, new = ref.mlp_relu_sgd_step(_f64(params), _f64(x), _f64(y), lr)
        return [loss, new]

    def functrax_impl():
        import functrax as ft
        import functrax.numpy as fnp
        step = _jit_sgd_step(ft, _mlp_relu_loss(fnp, ft.nn.log_softmax), lr)
        return lambda: step(params, x, y)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        p = jax.tree_util.tree_map(jnp.asarray, params)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        step = _jit_sgd_step(jax, _mlp_relu_loss(jnp, jax.nn.log_softmax), lr)
        return lambda: step(p, xj, yj)

    def torch_impl():
        import torch
        tp = _torch_tree(params)
        tx, ty = torch.tensor(x), torch.tensor(y)

        def step():
            ps = [[t.detach().requires_grad_() for t in layer] for layer in tp]
            h = tx
            for w, b in ps[:-1]:
                h = torch.relu(h @ w + b)
            w, b = ps[-1]
            loss = -(ty * torch.log_softmax(h @ w + b, -1)).sum() / tx.shape[0]
            loss.backward()
            with torch.no_grad():
                return loss, [[t - lr * t.grad for t in layer] for layer in ps]
        return step

    def autograd_impl():
        import autograd
        import autograd.numpy as anp
        vg = autograd.value_and_grad(_mlp_relu_loss(anp, _autograd_log_softmax))

        def step():
            loss, g = vg(params, x, y)
            return loss, [[a - lr * b for a, b in zip(pl, gl)] for pl, gl in zip(params, g)]
        return step

    return Workload("W1 MLP SGD step (jit)", "784-512-512-10 ReLU, batch 128, f32", reference,
                    {"functrax": functrax_impl, "jax": jax_impl, "torch": torch_impl,
                     "autograd": autograd_impl}, rtol=2e-3, atol=2e-4)


# ---------------------------------------------------------------------------------------------
# W1e: eager grad of the same MLP loss (no jit): functrax vs HIPS autograd vs JAX eager

def w1_eager():
    rng = np.random.default_rng(1)
    sizes = [784, 512, 512, 10]
    params = [[_glorot((m, n), rng, np.float32), np.zeros(n, np.float32)]
              for m, n in zip(sizes[:-1], sizes[1:])]
    x = rng.standard_normal((128, 784)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 128)]

    def reference():
        _, new = ref.mlp_relu_sgd_step(_f64(params), _f64(x), _f64(y), 1.0)
        # new = p - 1.0 * g, so g = p - new
        return [[np.asarray(p, np.float64) - n for p, n in zip(pl, nl)]
                for pl, nl in zip(params, new)]

    def functrax_impl():
        import functrax as ft
        import functrax.numpy as fnp
        loss_fn = _mlp_relu_loss(fnp, ft.nn.log_softmax)
        g = ft.grad(lambda p: loss_fn(p, x, y))
        return lambda: g(params)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        p = jax.tree_util.tree_map(jnp.asarray, params)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        loss_fn = _mlp_relu_loss(jnp, jax.nn.log_softmax)
        g = jax.grad(lambda p: loss_fn(p, xj, yj))  # eager: every primitive dispatched one by one
        return lambda: g(p)

    def autograd_impl():
        import autograd
        import autograd.numpy as anp
        loss_fn = _mlp_relu_loss(anp, _autograd_log_softmax)
        g = autograd.grad(lambda p: loss_fn(p, x, y))
        return lambda: g(params)

    return Workload("W1e eager grad of the MLP loss", "no jit: dispatch + AD overhead",
                    reference, {"functrax": functrax_impl, "jax": jax_impl,
                                "autograd": autograd_impl}, rtol=2e-3, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# W2: per-example gradients, MLP 64-128-10 tanh, batch 256, float32

def w2():
    rng = np.random.default_rng(2)
    params = [[_glorot((64, 128), rng, np.float32), np.zeros(128, np.float32)],
              [_glorot((128, 10), rng, np.float32), np.zeros(10, np.float32)]]
    x = rng.standard_normal((256, 64)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 256)]

    def reference():
        return ref.mlp_tanh_per_example_grads(_f64(params), _f64(x), _f64(y))

    def functrax_impl():
        import functrax as ft
        import functrax.numpy as fnp
        loss = _mlp_tanh_loss(fnp, ft.nn.log_softmax)
        f = ft.jit(ft.vmap(ft.grad(loss), in_axes=(None, 0, 0)))
        return lambda: f(params, x, y)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        p = jax.tree_util.tree_map(jnp.asarray, params)
        loss = _mlp_tanh_loss(jnp, jax.nn.log_softmax)
        f = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        return lambda: f(p, xj, yj)

    def torch_impl():
        import torch
        from torch.func import grad, vmap
        tp = _torch_tree(params)
        tx, ty = torch.tensor(x), torch.tensor(y)
        loss = _mlp_tanh_loss(torch, lambda z: torch.log_softmax(z, -1))
        f = vmap(grad(loss), in_dims=(None, 0, 0))
        return lambda: f(tp, tx, ty)

    def loop_impl():
        # The baseline vmap replaces: a Python loop of (jitted) per-example gradients.
        import functrax as ft
        import functrax.numpy as fnp
        g = ft.jit(ft.grad(_mlp_tanh_loss(fnp, ft.nn.log_softmax)))

        def step():
            per = [g(params, x[i], y[i]) for i in range(x.shape[0])]
            return ft.tree_util.tree_map(lambda *gs: np.stack(gs), *per)
        return step

    return Workload("W2 per-example grads", "vmap(grad) MLP 64-128-10 tanh, batch 256, f32",
                    reference, {"functrax": functrax_impl, "jax": jax_impl,
                                "torch": torch_impl, "python-loop": loop_impl},
                    rtol=2e-3, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# W3 / W3b: Hessian and Hessian-vector product, float64

def _w3_data():
    rng = np.random.default_rng(3)
    return rng.standard_normal((300, 200)) / np.sqrt(200), rng.standard_normal(200), \
        rng.standard_normal(200)


def w3():
    a, x, _ = _w3_data()

    def functrax_impl():
        import functrax as ft
        import functrax.numpy as fnp
        f = _w3_function(fnp, a, ft.nn.logsumexp)
        h = ft.jit(ft.hessian(f))
        return lambda: h(x)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        f = _w3_function(jnp, jnp.asarray(a), jax.nn.logsumexp)
        h = jax.jit(jax.hessian(f))
        xj = jnp.asarray(x)
        return lambda: h(xj)

    def torch_impl():
        import torch
        from torch.func import hessian
        tx = torch.tensor(x)
        h = hessian(_w3_function(torch, torch.tensor(a), lambda v: torch.logsumexp(v, 0)))
        return lambda: h(tx)

    def autograd_impl():
        import autograd
        import autograd.numpy as anp
        from autograd.scipy.special import logsumexp

        def f(x):
            return anp.sum(anp.tanh(anp.dot(a, x)) ** 2) + logsumexp(x)
        h = autograd.hessian(f)
        return lambda: h(x)

    return Workload("W3 hessian (jit)", "f(x)=sum(tanh(Ax)^2)+logsumexp(x), A 300x200 f64",
                    lambda: ref.hessian_tanh_lse(a, x),
                    {"functrax": functrax_impl, "jax": jax_impl, "torch": torch_impl,
                     "autograd": autograd_impl}, rtol=1e-8, atol=1e-10)


def w3b():
    a, x, v = _w3_data()

    def functrax_impl():
        import functrax as ft
        import functrax.numpy as fnp
        f = _w3_function(fnp, a, ft.nn.logsumexp)
        hvp = ft.jit(lambda x, v: ft.jvp(ft.grad(f), (x,), (v,))[1])
        return lambda: hvp(x, v)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        f = _w3_function(jnp, jnp.asarray(a), jax.nn.logsumexp)
        hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1])
        xj, vj = jnp.asarray(x), jnp.asarray(v)
        return lambda: hvp(xj, vj)

    def torch_impl():
        import torch
        from torch.func import grad, jvp
        tx, tv = torch.tensor(x), torch.tensor(v)
        f = _w3_function(torch, torch.tensor(a), lambda v: torch.logsumexp(v, 0))
        return lambda: jvp(grad(f), (tx,), (tv,))[1]

    return Workload("W3b HVP (jit)", "jvp of grad of the W3 function", 
                    lambda: ref.hessian_tanh_lse(a, x) @ v,
                    {"functrax": functrax_impl, "jax": jax_impl, "torch": torch_impl},
                    rtol=1e-8, atol=1e-10, inner=10)


# ---------------------------------------------------------------------------------------------
# W4: jit(value_and_grad) of a long elementwise chain over 1e7 float32

def w4(n=10_000_000):
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)

    def functrax_impl():
        import functrax as ft
        import functrax.numpy as fnp
        f = ft.jit(ft.value_and_grad(
            lambda x: fnp.sum(fnp.sin(x) * fnp.exp(-x * x) + fnp.tanh(x))))
        return lambda: f(x)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        f = jax.jit(jax.value_and_grad(
            lambda x: jnp.sum(jnp.sin(x) * jnp.exp(-x * x) + jnp.tanh(x))))
        xj = jnp.asarray(x)
        return lambda: f(xj)

    def torch_impl():
        import torch
        tx = torch.tensor(x)

        def step():
            t = tx.detach().requires_grad_()
            val = (torch.sin(t) * torch.exp(-t * t) + torch.tanh(t)).sum()
            val.backward()
            return val, t.grad
        return step

    def numpy_impl():
        def step():
            e = np.exp(-x * x)
            s, th = np.sin(x), np.tanh(x)
            value = np.sum(s * e + th, dtype=np.float64)
            grad = np.cos(x) * e - 2 * x * s * e + (1 - th * th)
            return value, grad
        return step

    return Workload("W4 elementwise value_and_grad (jit)", "sin*exp(-x^2)+tanh, 1e7 f32",
                    lambda: ref.sin_exp_tanh_value_and_grad(x),
                    {"functrax": functrax_impl, "jax": jax_impl, "torch": torch_impl,
                     "numpy": numpy_impl}, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# W5: dispatch latency

def w5_jit():
    def functrax_impl():
        import functrax as ft
        f = ft.jit(lambda x: x + 1.0)
        x = np.float64(1.0)
        return lambda: f(x)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        f = jax.jit(lambda x: x + 1.0)
        x = jnp.asarray(1.0)
        return lambda: f(x)

    return Workload("W5 jit call latency", "jit(lambda x: x + 1.0) on a scalar",
                    lambda: np.float64(2.0), {"functrax": functrax_impl, "jax": jax_impl},
                    inner=2000)


def w5_eager():
    a = np.random.default_rng(5).standard_normal((8, 8))
    b = np.random.default_rng(6).standard_normal((8, 8))

    def functrax_impl():
        import functrax.numpy as fnp
        return lambda: fnp.add(a, b)

    def jax_impl():
        import jax.numpy as jnp
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        return lambda: jnp.add(ja, jb)

    def torch_impl():
        import torch
        ta, tb = torch.tensor(a), torch.tensor(b)
        return lambda: torch.add(ta, tb)

    def numpy_impl():
        return lambda: np.add(a, b)

    return Workload("W5 eager add 8x8", "fnp.add on two 8x8 float64 arrays",
                    lambda: a + b, {"functrax": functrax_impl, "jax": jax_impl,
                                    "torch": torch_impl, "numpy": numpy_impl}, inner=5000)


def w5_eager_sin():
    x = np.random.default_rng(7).standard_normal(1000)

    def functrax_impl():
        import functrax.numpy as fnp
        return lambda: fnp.sin(x)

    def numpy_impl():
        return lambda: np.sin(x)

    return Workload("W5 eager sin 1000", "fnp.sin on 1000 float64", lambda: np.sin(x),
                    {"functrax": functrax_impl, "numpy": numpy_impl}, inner=2000)


# ---------------------------------------------------------------------------------------------
# W6: ConvNet training step

def w6():
    rng = np.random.default_rng(6)
    params = [[_glorot((3, 3, 1, 32), rng, np.float32), np.zeros(32, np.float32)],
              [_glorot((3, 3, 32, 64), rng, np.float32), np.zeros(64, np.float32)],
              [_glorot((7 * 7 * 64, 10), rng, np.float32), np.zeros(10, np.float32)]]
    x = rng.standard_normal((64, 28, 28, 1)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
    lr = 0.01

    def reference():
        loss, new = ref.convnet_sgd_step(_f64(params), _f64(x), _f64(y), lr)
        return [loss, new]

    def functrax_impl():
        import functrax as ft
        import functrax.numpy as fnp
        from functrax import lax
        step = _jit_sgd_step(ft, _convnet_loss(fnp, lax, ft.nn.log_softmax), lr)
        return lambda: step(params, x, y)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        from jax import lax
        p = jax.tree_util.tree_map(jnp.asarray, params)
        step = _jit_sgd_step(jax, _convnet_loss(jnp, lax, jax.nn.log_softmax), lr)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        return lambda: step(p, xj, yj)

    def torch_impl():
        import torch
        import torch.nn.functional as F
        # torch wants NCHW / OIHW; transpose once outside the timed step.
        tp = [[torch.tensor(params[0][0].transpose(3, 2, 0, 1).copy()),
               torch.tensor(params[0][1])],
              [torch.tensor(params[1][0].transpose(3, 2, 0, 1).copy()),
               torch.tensor(params[1][1])],
              [torch.tensor(params[2][0]), torch.tensor(params[2][1])]]
        tx = torch.tensor(x.transpose(0, 3, 1, 2).copy())
        ty = torch.tensor(y)

        def step():
            ps = [[t.detach().requires_grad_() for t in layer] for layer in tp]
            (k1, c1), (k2, c2), (wd, bd) = ps
            h = F.max_pool2d(torch.relu(F.conv2d(tx, k1, c1, padding=1)), 2)
            h = F.max_pool2d(torch.relu(F.conv2d(h, k2, c2, padding=1)), 2)
            h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # NHWC flattening order
            loss = -(ty * torch.log_softmax(h @ wd + bd, -1)).sum() / tx.shape[0]
            loss.backward()
            with torch.no_grad():
                new = [[t - lr * t.grad for t in layer] for layer in ps]
                new[0][0] = new[0][0].permute(2, 3, 1, 0)
                new[1][0] = new[1][0].permute(2, 3, 1, 0)
                return loss, new
        return step

    return Workload("W6 ConvNet SGD step (jit)", "conv32-pool-conv64-pool-dense10, batch 64, f32",
                    reference, {"functrax": functrax_impl, "jax": jax_impl,
                                "torch": torch_impl}, rtol=5e-3, atol=5e-4)


# ---------------------------------------------------------------------------------------------
# W7: tanh RNN with scan, jit(grad(loss))

def w7():
    rng = np.random.default_rng(7)
    hidden, inp, steps, batch = 128, 32, 100, 16
    params = [(rng.standard_normal((inp, hidden)) / np.sqrt(inp)).astype(np.float32),
              (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden) * 0.5).astype(np.float32),
              np.zeros(hidden, np.float32),
              (rng.standard_normal(hidden) / np.sqrt(hidden)).astype(np.float32)]
    xs = rng.standard_normal((steps, batch, inp)).astype(np.float32)
    ys = rng.standard_normal((steps, batch)).astype(np.float32)

    def reference():
        return ref.rnn_grads(_f64(params), _f64(xs), _f64(ys))

    def functrax_impl():
        import functrax as ft
        import functrax.numpy as fnp
        from functrax import lax

        def loss(p, xs, ys):
            wx, wh, b, v = p

            def cell(h, x):
                h = fnp.tanh(x @ wx + h @ wh + b)
                return h, h @ v
            _, preds = lax.scan(cell, fnp.zeros((xs.shape[1], wh.shape[0]), xs.dtype), xs)
            return fnp.mean((preds - ys) ** 2)
        g = ft.jit(ft.grad(loss))
        return lambda: g(params, xs, ys)

    def jax_impl():
        import jax
        import jax.numpy as jnp
        from jax import lax
        p = [jnp.asarray(t) for t in params]

        def loss(p, xs, ys):
            wx, wh, b, v = p

            def cell(h, x):
                h = jnp.tanh(x @ wx + h @ wh + b)
                return h, h @ v
            _, preds = lax.scan(cell, jnp.zeros((xs.shape[1], wh.shape[0]), xs.dtype), xs)
            return jnp.mean((preds - ys) ** 2)
        g = jax.jit(jax.grad(loss))
        xj, yj = jnp.asarray(xs), jnp.asarray(ys)
        return lambda: g(p, xj, yj)

    def torch_impl():
        import torch
        tp = [torch.tensor(t) for t in params]
        tx, ty = torch.tensor(xs), torch.tensor(ys)

        def step():
            wx, wh, b, v = [t.detach().requires_grad_() for t in tp]
            h = torch.zeros(batch, hidden)
            preds = []
            for t in range(steps):
                h = torch.tanh(tx[t] @ wx + h @ wh + b)
                preds.append(h @ v)
            loss = ((torch.stack(preds) - ty) ** 2).mean()
            loss.backward()
            return [wx.grad, wh.grad, b.grad, v.grad]
        return step

    return Workload("W7 RNN grad with scan (jit)", "tanh RNN h128 in32 T100 batch16 f32",
                    reference, {"functrax": functrax_impl, "jax": jax_impl,
                                "torch": torch_impl}, rtol=3e-3, atol=3e-5)


ALL = {"W1": [w1, w1_eager], "W2": [w2], "W3": [w3, w3b], "W4": [w4], "W5": [w5_jit, w5_eager,
                                                                    w5_eager_sin],
       "W6": [w6], "W7": [w7]}
# One part of a group on its own (``--only W3b``).
SINGLE = {"W1e": w1_eager, "W3b": w3b, "W5e": w5_eager, "W5s": w5_eager_sin}
