"""lax structural and slicing primitives: slice, pad, broadcast_in_dim, reshape, transpose,
squeeze, rev, concatenate, dynamic_slice, dynamic_update_slice, against numpy, with
derivatives (check_grads order 2), vmap against a loop, and jaxpr round trips. Numerical tests
take the ``backend`` fixture (tests/conftest.py): the same assertions hold eagerly and under
``jit`` on every back end."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
from functrax import lax
from functrax.core import eval_jaxpr
from functrax.test_util import check_grads

rng = np.random.default_rng(0)


def _roundtrip(backend, f, *args):
    """f's result on the back end under test; the eager result is checked against eval_jaxpr
    of make_jaxpr(f) after typechecking."""
    eager = f(*args)
    closed = ft.make_jaxpr(f)(*args)
    ft.typecheck_jaxpr(closed)
    out = eval_jaxpr(closed.jaxpr, closed.consts, *args)[0]
    np.testing.assert_allclose(np.asarray(out), np.asarray(eager))
    return backend(f)(*args) if backend.is_jit else eager


def _typecheck_transforms(f, x):
    ft.typecheck_jaxpr(ft.make_jaxpr(lambda x: ft.jvp(f, (x,), (x,))[1])(x))
    ft.typecheck_jaxpr(ft.make_jaxpr(lambda x: ft.vjp(f, x)[1](f(x))[0])(x))
    ft.typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f))(np.stack([x, x])))


def _vmap_vs_loop(backend, f, *args, in_axes=0):
    """vmap of f on the back end under test against a loop of f run eagerly."""
    out = backend(ft.vmap(f, in_axes=in_axes))(*args)
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    n = next(a.shape[ax] for a, ax in zip(args, axes) if ax is not None)
    loop = np.stack([np.asarray(f(*[a if ax is None else np.take(a, i, ax)
                                    for a, ax in zip(args, axes)])) for i in range(n)])
    np.testing.assert_allclose(np.asarray(out), loop)


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@given(shapes, st.data())
def test_slice_matches_numpy(backend, shape, data):
    x = rng.standard_normal(shape)
    start = [data.draw(st.integers(0, d - 1)) for d in shape]
    limit = [data.draw(st.integers(s, d)) for s, d in zip(start, shape)]
    strides = [data.draw(st.integers(1, 3)) for _ in shape]
    f = lambda x: lax.slice(x, start, limit, strides)
    expect = x[tuple(slice(s, l, st) for s, l, st in zip(start, limit, strides))]
    np.testing.assert_allclose(_roundtrip(backend, f, x), expect)
    check_grads(backend.jit(f), (x,), order=2)
    _vmap_vs_loop(backend, f, np.stack([x, 2 * x]))


def test_slice_transpose_and_typecheck(backend):
    x = rng.standard_normal((5, 4))
    f = lambda x: lax.slice(x, (1, 0), (5, 3), (2, 2))
    # The transformed programs of the jitted f (pjit equations) typecheck too.
    _typecheck_transforms(backend.jit(f), x)
    g = backend(ft.grad(lambda x: f(x).sum()))(x)
    expect = np.zeros_like(x)
    expect[1:5:2, 0:3:2] = 1
    np.testing.assert_allclose(g, expect)


def test_slice_out_of_bounds_error_names_op_and_line():
    with pytest.raises(ValueError, match=r"(?s)slice.*test_structural\.py"):
        ft.make_jaxpr(lambda x: lax.slice(x, (0,), (7,)))(np.ones(3))


@given(shapes, st.data())
def test_pad_matches_numpy_and_grads(backend, shape, data):
    x = rng.standard_normal(shape)
    cfg = [(data.draw(st.integers(-1, 2)), data.draw(st.integers(-1, 2)),
            data.draw(st.integers(0, 2))) for _ in shape]
    # Keep every dim non-empty after negative padding.
    cfg = [(lo, hi, i) if d + max(d - 1, 0) * i + lo + hi > 0 else (0, 0, i)
           for d, (lo, hi, i) in zip(shape, cfg)]
    f = lambda x, v: lax.pad(x, v, cfg)
    out = _roundtrip(backend, f, x, 0.5)
    # Reference: interior/edge padding built by hand.
    grown = [max(lo, 0) + d + max(d - 1, 0) * i + max(hi, 0) for d, (lo, hi, i) in
             zip(shape, cfg)]
    ref = np.full(grown, 0.5)
    ref[tuple(slice(max(lo, 0), max(lo, 0) + (d - 1) * (i + 1) + 1, i + 1)
              for d, (lo, _, i) in zip(shape, cfg))] = x
    ref = ref[tuple(slice(max(-lo, 0), g - max(-hi, 0)) for g, (lo, hi, _) in
                    zip(grown, cfg))]
    np.testing.assert_allclose(out, ref)
    check_grads(backend.jit(f), (x, 0.5), order=2)
    _vmap_vs_loop(backend, f, np.stack([x, -x]), np.array([1.0, 2.0]))
    _vmap_vs_loop(backend, f, np.stack([x, -x]), 3.0, in_axes=(0, None))


def test_broadcast_reshape_transpose_squeeze_rules(backend):
    x = rng.standard_normal((3, 1))
    for f in [lambda x: lax.broadcast_in_dim(x, (2, 3, 4), (1, 2)),
              lambda x: lax.reshape(x, (1, 3)),
              lambda x: lax.reshape(x, (3,), dimensions=(1, 0)),
              lambda x: lax.transpose(x, (1, 0)),
              lambda x: lax.squeeze(x, (-1,)),
              lambda x: lax.expand_dims(x, (0, 3)),
              lambda x: lax.rev(x, (0,))]:
        _roundtrip(backend, f, x)
        check_grads(backend.jit(f), (x,), order=2)
        _typecheck_transforms(backend.jit(f), x)
        _vmap_vs_loop(backend, f, np.stack([x, 3 * x]))
        _vmap_vs_loop(backend, f, np.stack([x, 3 * x], axis=1), in_axes=1)


def test_squeeze_and_expand_dims_errors():
    with pytest.raises(ValueError, match=r"(?s)squeeze.*test_structural\.py"):
        ft.make_jaxpr(lambda x: lax.squeeze(x, (0,)))(np.ones((2, 1)))
    with pytest.raises(ValueError, match="squeeze: axis 5 is out of bounds"):
        lax.squeeze(np.ones((2, 1)), (5,))
    with pytest.raises(ValueError, match="expand_dims"):
        lax.expand_dims(np.ones(2), (4,))


@given(shapes, st.data())
def test_rev_matches_numpy(backend, shape, data):
    x = rng.standard_normal(shape)
    dims = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1)))))
    f = lambda x: lax.rev(x, dims)
    np.testing.assert_allclose(_roundtrip(backend, f, x), np.flip(x, dims))
    check_grads(backend.jit(f), (x,), order=2)
    _vmap_vs_loop(backend, f, np.stack([x, x + 1]))


@given(shapes, st.data())
def test_concatenate_matches_numpy(backend, shape, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    xs = []
    for s in sizes:
        sh = list(shape)
        sh[axis] = s
        xs.append(rng.standard_normal(sh))
    f = lambda *xs: lax.concatenate(xs, axis)
    np.testing.assert_allclose(_roundtrip(backend, f, *xs), np.concatenate(xs, axis))
    check_grads(backend.jit(f), xs, order=2)
    batched = [np.stack([x, x * 2]) for x in xs]
    _vmap_vs_loop(backend, f, *batched)
    # Some operands unbatched.
    _vmap_vs_loop(backend, f, *batched[:1], *xs[1:], in_axes=(0,) + (None,) * (len(xs) - 1))


def test_concatenate_errors():
    with pytest.raises(TypeError, match=r"(?s)concatenate.*test_structural\.py"):
        ft.make_jaxpr(lambda a, b: lax.concatenate([a, b], 0))(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(TypeError, match="same dtype"):
        lax.concatenate([np.ones(2), np.ones(2, np.float32)], 0)


@given(shapes, st.data())
def test_dynamic_slice_clamps_like_xla(backend, shape, data):
    x = rng.standard_normal(shape)
    sizes = [data.draw(st.integers(0, d)) for d in shape]
    starts = [data.draw(st.integers(-3, d + 3)) for d in shape]
    f = lambda x, *s: lax.dynamic_slice(x, s, sizes)
    clamped = [min(max(s, 0), d - z) for s, d, z in zip(starts, shape, sizes)]
    expect = x[tuple(slice(c, c + z) for c, z in zip(clamped, sizes))]
    idx = [np.int64(s) for s in starts]
    np.testing.assert_allclose(_roundtrip(backend, f, x, *idx), expect)
    check_grads(backend.jit(lambda x: f(x, *idx)), (x,), order=2)
    # Batched operand, batched start indices, and both.
    xs = np.stack([x, x + 1, x - 2])
    bidx = [np.array([s, s - 1, s + 2], np.int64) for s in starts]
    _vmap_vs_loop(backend, f, xs, *idx, in_axes=(0,) + (None,) * len(idx))
    _vmap_vs_loop(backend, f, x, *bidx, in_axes=(None,) + (0,) * len(idx))
    _vmap_vs_loop(backend, f, xs, *bidx)


@given(shapes, st.data())
def test_dynamic_update_slice(backend, shape, data):
    x = rng.standard_normal(shape)
    ushape = [data.draw(st.integers(0, d)) for d in shape]
    u = rng.standard_normal(ushape)
    starts = [np.int64(data.draw(st.integers(-2, d + 2))) for d in shape]
    f = lambda x, u, *s: lax.dynamic_update_slice(x, u, s)
    clamped = [min(max(int(s), 0), d - z) for s, d, z in zip(starts, shape, ushape)]
    expect = x.copy()
    expect[tuple(slice(c, c + z) for c, z in zip(clamped, ushape))] = u
    np.testing.assert_allclose(_roundtrip(backend, f, x, u, *starts), expect)
    check_grads(backend.jit(lambda x, u: f(x, u, *starts)), (x, u), order=2)
    xs, us = np.stack([x, x + 1]), np.stack([u, u * 3])
    bidx = [np.array([s, s + 1], np.int64) for s in starts]
    n = len(starts)
    _vmap_vs_loop(backend, f, xs, us, *starts, in_axes=(0, 0) + (None,) * n)
    _vmap_vs_loop(backend, f, x, us, *starts, in_axes=(None, 0) + (None,) * n)
    _vmap_vs_loop(backend, f, xs, u, *bidx, in_axes=(0, None) + (0,) * n)
    _vmap_vs_loop(backend, f, x, u, *bidx, in_axes=(None, None) + (0,) * n)


def test_dynamic_slice_transpose_is_update_into_zeros(backend):
    x = rng.standard_normal((5, 3))
    f = lambda x, i: lax.dynamic_slice(x, (i, np.int64(0)), (2, 3))
    g = backend(ft.grad(lambda x: f(x, np.int64(4)).sum()))(x)
    expect = np.zeros_like(x)
    expect[3:5] = 1
    np.testing.assert_allclose(g, expect)
    closed = ft.make_jaxpr(ft.grad(lambda x, i: f(x, i).sum()))(x, np.int64(1))
    ft.typecheck_jaxpr(closed)
    assert "dynamic_update_slice" in str(closed)


def test_in_dim_helpers(backend):
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(backend(lambda x: lax.index_in_dim(x, -1, 1, keepdims=False))(x),
                               x[:, -1])
    np.testing.assert_allclose(backend(lambda x, i: lax.dynamic_slice_in_dim(x, i, 2, 1))(
        x, np.int64(1)), x[:, 1:3])
    np.testing.assert_allclose(backend(lambda x, i: lax.dynamic_index_in_dim(x, i, 0, False))(
        x, np.int64(2)), x[2])
    out = backend(lambda x, u, i: lax.dynamic_update_slice_in_dim(x, u, i, 1))(
        x, np.zeros((3, 2)), np.int64(2))
    expect = x.copy()
    expect[:, 2:] = 0
    np.testing.assert_allclose(out, expect)
    out = backend(lambda x, u, i: lax.dynamic_update_index_in_dim(x, u, i, 0))(
        x, np.ones(4), np.int64(1))
    expect = x.copy()
    expect[1] = 1
    np.testing.assert_allclose(out, expect)
    with pytest.raises(IndexError, match="index_in_dim"):
        lax.index_in_dim(x, 5, 0)


def test_dynamic_slice_errors():
    with pytest.raises(TypeError, match=r"(?s)dynamic_slice.*test_structural\.py"):
        ft.make_jaxpr(lambda x: lax.dynamic_slice(x, (np.int64(0),), (2, 2)))(np.ones((3, 3)))
    with pytest.raises(TypeError, match="integer scalars"):
        lax.dynamic_slice(np.ones(3), (0.5,), (1,))


def test_grad_of_grad_through_structural_chain(backend):
    def f(x):
        y = lax.concatenate([lax.rev(x, (0,)), lax.slice(x, (1,), (3,))], 0)
        y = lax.pad(y, 0.0, [(1, 1, 1)])
        z = lax.dynamic_slice(y, (np.int64(2),), (5,))
        return (z ** 3).sum()
    x = rng.standard_normal(4)
    check_grads(backend.jit(f), (x,), order=2)
    h = backend(ft.hessian(f))(x)
    ft.typecheck_jaxpr(ft.make_jaxpr(ft.hessian(f))(x))
    assert h.shape == (4, 4)
