"""The same programs on every back end: eager (the numpy reference), jit with the numpy
interpreter back end, and jit with the numba CPU back end. A corpus drawn from every area —
elementwise, reductions, structural and indexing, linear algebra, convolution and pooling,
gradients, Hessians, vmap, per-example gradients and control flow — must give the eager
result on each back end, and every traced program must typecheck."""
import numpy as np
import pytest

import functrax as ft
import functrax.numpy as fnp
from functrax import lax, nn

rng = np.random.default_rng(0)
X = rng.standard_normal((6, 5))
V = rng.standard_normal(5)
W = rng.standard_normal((5, 3))
IMG = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
KER = (rng.standard_normal((3, 3, 3, 4)) * 0.3).astype(np.float32)
SPD = X.T @ X + 5 * np.eye(5)
IDX = np.array([4, 0, 2, 2])
XS = rng.standard_normal((7, 5))


def mlp_loss(p, x, y):
    h = fnp.tanh(x @ p["w1"] + p["b1"])
    return -fnp.sum(nn.one_hot(y, 3) * nn.log_softmax(h @ p["w2"]))


PARAMS = {"w1": rng.standard_normal((5, 4)), "b1": np.zeros(4), "w2": rng.standard_normal((4, 3))}
YS = np.array([0, 2, 1, 1, 0, 2])


def rnn(h0, xs):
    def cell(h, x):
        h = fnp.tanh(h @ W[:3, :3] + x[:3])
        return h, fnp.sum(h)
    return lax.scan(cell, h0, xs)


CORPUS = {
    "elementwise chain": (lambda x: fnp.sin(x) * fnp.exp(-x * x) + fnp.tanh(x) ** 2 - 1.0, (X,)),
    "broadcasting and where": (lambda x, v: fnp.where(x > v, x - v, fnp.maximum(x, 0.5) * v),
                               (X, V)),
    "integer and boolean ops": (lambda x: (x.astype(np.int32) % 3 + (x > 0)).sum(axis=0), (X,)),
    "reductions": (lambda x: (fnp.mean(x, 0), fnp.std(x, 1), fnp.max(x), fnp.argmax(x, 1),
                              fnp.prod(x[:2], 0), fnp.cumsum(x, 1)), (X,)),
    "softmax and logsumexp": (lambda x: (nn.softmax(x, axis=-1), nn.logsumexp(x, axis=0)), (X,)),
    "structural": (lambda x: fnp.concatenate([x[::2].T, fnp.flip(x, 0)[:5].T], 1).reshape(-1),
                   (X,)),
    "indexing and scatter": (lambda x, i: (x[i], x[1:4, ::-2], fnp.asarray(x).at[i].add(1.0), fnp.take(
        x, i, axis=1)), (X, IDX)),
    "sort and top_k": (lambda x: (fnp.sort(x, 1), lax.top_k(x, 2)[0]), (X,)),
    "matmul and einsum": (lambda x, w: (x @ w, fnp.einsum("ij,jk->ik", x, w),
                                        fnp.tensordot(x, x, axes=([0], [0]))), (X, W)),
    "linalg": (lambda a: (fnp.linalg.cholesky(a), fnp.linalg.solve(a, a[:, :2]),
                          fnp.linalg.slogdet(a)[1], fnp.linalg.eigh(a)[0]), (SPD,)),
    "conv and pooling": (lambda x, k: lax.reduce_window(
        nn.relu(lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))),
        -np.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), (IMG, KER)),
    "grad": (ft.grad(lambda x: fnp.sum(fnp.tanh(x @ W) ** 2)), (X,)),
    "grad of conv net": (ft.grad(lambda k, x: fnp.sum(lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)), (KER, IMG)),
    "hessian": (ft.hessian(lambda v: fnp.sum(fnp.tanh(X @ v) ** 2) + nn.logsumexp(v)), (V,)),
    "hvp": (lambda v, t: ft.jvp(ft.grad(lambda u: fnp.sum(fnp.sin(X @ u))), (v,), (t,))[1],
            (V, V[::-1].copy())),
    "vmap": (ft.vmap(lambda row, v: fnp.dot(row, v) * row, in_axes=(0, None)), (X, V)),
    "per-example grads": (ft.vmap(ft.grad(mlp_loss), in_axes=(None, 0, 0)), (PARAMS, X, YS)),
    "scan": (lambda h0, xs: rnn(h0, xs), (np.zeros(3), XS)),
    "grad of scan": (ft.grad(lambda h0, xs: fnp.sum(rnn(h0, xs)[1] ** 2), argnums=(0, 1)),
                     (np.ones(3) * 0.1, XS)),
    "cond and while": (lambda x: lax.while_loop(
        lambda c: c[1] < 5, lambda c: (lax.cond(c[1] % 2 == 0, lambda y: y * 0.9,
                                                lambda y: y + 1.0, c[0]), c[1] + 1),
        (x, 0))[0], (V,)),
    "fori_loop grad": (ft.grad(lambda x: lax.fori_loop(0, 4, lambda i, c: fnp.sin(c) + x, x)
                               .sum()), (V,)),
    "custom_vjp": (ft.grad(lambda x: fnp.sum(nn.softplus(x) * nn.relu(x))), (V,)),
}


def _flat(tree):
    return [np.asarray(x, np.float64) for x in ft.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_backend_matches_eager(name, backend):
    f, args = CORPUS[name]
    expected = f(*args)
    got = ft.jit(f, backend=backend)(*args)
    exp_leaves, got_leaves = _flat(expected), _flat(got)
    assert len(exp_leaves) == len(got_leaves)
    for e, g in zip(exp_leaves, got_leaves):
        # jit may sum gradient accumulators in another order: equal up to rounding.
        np.testing.assert_allclose(g, e, rtol=2e-5 if g.dtype == np.float32 else 1e-9,
                                   atol=1e-6)
    ft.typecheck_jaxpr(ft.make_jaxpr(f)(*args))
