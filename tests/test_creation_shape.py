"""functrax.numpy creation and shape functions against numpy: eager, through make_jaxpr +
eval_jaxpr, with derivatives and vmap where they are differentiable. Numerical tests take the
``backend`` fixture (tests/conftest.py): the same assertions hold eagerly and under ``jit`` on
every back end."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax.core import eval_jaxpr
from functrax.test_util import check_grads

rng = np.random.default_rng(2)
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


def _both(backend, f, *args):
    """f on the back end under test (eagerly for ``eager``) and through its jaxpr
    (typechecked)."""
    got = backend(f)(*args)
    closed = ft.make_jaxpr(f)(*args)
    ft.typecheck_jaxpr(closed)
    traced = eval_jaxpr(closed.jaxpr, closed.consts, *args)
    return got, traced


def _check(backend, f, np_f, *args):
    got, traced = _both(backend, f, *args)
    expect = np_f(*args)
    if isinstance(expect, (list, tuple)):
        assert len(got) == len(traced) == len(expect)
        for e, t, x in zip(got, traced, expect):
            np.testing.assert_allclose(np.asarray(e), x)
            np.testing.assert_allclose(np.asarray(t), x)
            assert np.asarray(e).dtype == np.asarray(x).dtype
    else:
        np.testing.assert_allclose(np.asarray(got), expect)
        np.testing.assert_allclose(np.asarray(traced[0]), expect)
        assert np.asarray(got).shape == expect.shape
        assert np.asarray(got).dtype == expect.dtype, (np.asarray(got).dtype, expect.dtype)


def test_creation_matches_numpy(backend):
    _check(backend, lambda: fnp.zeros((2, 3)), lambda: np.zeros((2, 3)))
    _check(backend, lambda: fnp.ones(3, dtype=np.int32), lambda: np.ones(3, np.int32))
    _check(backend, lambda: fnp.full((2, 2), 7), lambda: np.full((2, 2), 7))
    _check(backend, lambda: fnp.full((2, 3), np.arange(3.0)),
           lambda: np.full((2, 3), np.arange(3.0)))
    _check(backend, lambda: fnp.empty((0, 2)), lambda: np.zeros((0, 2)))
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    _check(backend, lambda x: fnp.zeros_like(x), np.zeros_like, x)
    _check(backend, lambda x: fnp.ones_like(x, dtype=int), lambda x: np.ones_like(x, dtype=int), x)
    _check(backend, lambda x: fnp.full_like(x, 2.5), lambda x: np.full_like(x, 2.5), x)
    _check(backend, lambda x: fnp.empty_like(x, shape=(4,)), lambda x: np.zeros(4, np.float32), x)
    for args in [(5,), (1, 7, 2), (0.5, 3.0, 0.5), (5, 1, -1)]:
        _check(backend, lambda: fnp.arange(*args), lambda: np.arange(*args))
    _check(backend, lambda: fnp.arange(4, dtype=np.float32), lambda: np.arange(4, dtype=np.float32))
    _check(backend, lambda: fnp.eye(3, 4, k=1), lambda: np.eye(3, 4, k=1))
    _check(backend, lambda: fnp.eye(3, k=-2, dtype=int), lambda: np.eye(3, k=-2, dtype=int))
    _check(backend, lambda: fnp.identity(2), lambda: np.identity(2))
    _check(backend, lambda: fnp.tri(3, 4, -1), lambda: np.tri(3, 4, -1))
    _check(backend, lambda: fnp.array([[1, 2], [3, 4]], dtype=np.float32),
           lambda: np.array([[1, 2], [3, 4]], dtype=np.float32))
    _check(backend, lambda: fnp.asarray([1.0, 2.0]), lambda: np.asarray([1.0, 2.0]))
    _check(backend, lambda: fnp.array(3.0, ndmin=2), lambda: np.array(3.0, ndmin=2))


@given(st.integers(0, 6), st.booleans(), st.sampled_from([None, np.float32, np.int64]))
def test_linspace_logspace_geomspace(backend, num, endpoint, dtype):
    _check(backend, lambda: fnp.linspace(-1.5, 4, num, endpoint=endpoint, dtype=dtype),
           lambda: np.linspace(-1.5, 4, num, endpoint=endpoint, dtype=dtype))
    out, step = backend(lambda: fnp.linspace(0, 1, num, endpoint=endpoint, retstep=True))()
    _, nstep = np.linspace(0, 1, num, endpoint=endpoint, retstep=True)
    np.testing.assert_allclose(step, nstep)
    np.testing.assert_allclose(
        backend(lambda a, b: fnp.linspace(a, b, num, axis=1))(np.zeros(2), np.array([1.0, 3.0])),
        np.linspace(np.zeros(2), np.array([1.0, 3.0]), num, axis=1))
    np.testing.assert_allclose(
        backend(lambda: fnp.logspace(0, 2, num, endpoint=endpoint, base=2.0))(),
        np.logspace(0, 2, num, endpoint=endpoint, base=2.0))
    np.testing.assert_allclose(backend(lambda: fnp.geomspace(1, 1000, num, endpoint=endpoint))(),
                               np.geomspace(1, 1000, num, endpoint=endpoint))


def test_linspace_traced_ends_differentiate(backend):
    f = lambda a, b: fnp.linspace(a, b, 5)
    check_grads(backend.jit(f), (0.3, 2.0), order=2)
    out = backend(ft.vmap(f))(np.array([0.0, 1.0]), np.array([1.0, 3.0]))
    np.testing.assert_allclose(out, np.stack([np.linspace(0, 1, 5), np.linspace(1, 3, 5)]))


def test_meshgrid_and_index_helpers(backend):
    x, y, z = np.arange(3.0), np.arange(2.0), np.arange(4.0)
    for indexing in ("xy", "ij"):
        for sparse in (False, True):
            _check(backend, lambda *a: fnp.meshgrid(*a, indexing=indexing, sparse=sparse),
                   lambda *a: np.meshgrid(*a, indexing=indexing, sparse=sparse), x, y, z)
    with pytest.raises(ValueError, match=r"(?s)meshgrid.*test_creation_shape\.py"):
        fnp.meshgrid(x, indexing="yx")
    for got, want in zip(backend(lambda: fnp.tril_indices(4, -1, 5))(),
                         np.tril_indices(4, -1, 5)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(backend(lambda a: fnp.triu_indices_from(a, 1))(np.ones((3, 3))),
                         np.triu_indices_from(np.ones((3, 3)), 1)):
        np.testing.assert_array_equal(got, want)
    a = fnp.array([1.0, 2.0])
    # A new object eagerly; under jit copy is the identity (arrays are immutable), so only its
    # value is checked on the back end.
    b = fnp.copy(a)
    assert b is not a and np.array_equal(a, b)
    np.testing.assert_array_equal(backend(fnp.copy)(a), a)


def test_creation_under_jit_is_traced():
    closed = ft.make_jaxpr(lambda x: x + fnp.zeros(3) + fnp.eye(3)[1] + fnp.ones_like(x))(
        np.ones(3))
    text = str(closed)
    assert "broadcast_in_dim" in text and "iota" in text
    np.testing.assert_allclose(eval_jaxpr(closed.jaxpr, closed.consts, np.ones(3))[0],
                               [2, 3, 2])


# ---------------------------------------------------------------------------------------------
# Shape functions


@given(shapes, st.data())
def test_reshape_transpose_moveaxis_squeeze(backend, shape, data):
    x = rng.standard_normal(shape)
    nd = len(shape)
    perm = data.draw(st.permutations(range(nd)))
    _check(backend, lambda x: fnp.transpose(x, perm), lambda x: np.transpose(x, perm), x)
    _check(backend, lambda x: fnp.reshape(x, (-1,)), lambda x: np.reshape(x, (-1,)), x)
    _check(backend, lambda x: fnp.reshape(x, (1, -1, 1)), lambda x: np.reshape(x, (1, -1, 1)), x)
    _check(backend, fnp.ravel, np.ravel, x)
    a, b = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    _check(backend, lambda x: fnp.swapaxes(x, a, b), lambda x: np.swapaxes(x, a, b), x)
    _check(backend, lambda x: fnp.moveaxis(x, a, b), lambda x: np.moveaxis(x, a, b), x)
    _check(backend, lambda x: fnp.moveaxis(x, [0, -1], [-1, 0]) if nd > 1 else x,
           lambda x: np.moveaxis(x, [0, -1], [-1, 0]) if nd > 1 else x, x)
    y = x.reshape((1,) + shape + (1,))
    _check(backend, fnp.squeeze, np.squeeze, y)
    _check(backend, lambda y: fnp.squeeze(y, -1), lambda y: np.squeeze(y, -1), y)
    _check(backend, lambda x: fnp.expand_dims(x, (0, -1)), lambda x: np.expand_dims(x, (0, -1)), x)
    _check(backend, lambda x: fnp.flip(x, a), lambda x: np.flip(x, a), x)
    _check(backend, fnp.flip, np.flip, x)
    f = lambda x: fnp.moveaxis(fnp.flip(fnp.transpose(x, perm), 0), 0, -1)
    check_grads(backend.jit(f), (x,), order=2)
    out = backend(ft.vmap(f))(np.stack([x, 2 * x]))
    np.testing.assert_allclose(out, np.stack([f(x), f(2 * x)]))


def test_shape_errors_name_function_and_line():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"(?s)reshape: cannot reshape array of size 6.*"
                                         r"test_creation_shape\.py"):
        ft.make_jaxpr(lambda x: fnp.reshape(x, (4, -1)))(x)
    with pytest.raises(np.exceptions.AxisError, match=r"(?s)swapaxes: axis 2.*"
                                                      r"test_creation_shape\.py"):
        fnp.swapaxes(x, 0, 2)
    with pytest.raises(ValueError, match="squeeze: cannot select an axis"):
        fnp.squeeze(x, 0)
    with pytest.raises(ValueError, match=r"(?s)concatenate: all the input array dimensions"):
        fnp.concatenate([x, np.ones((3, 3))], axis=1)
    with pytest.raises(ValueError, match="stack: all input arrays must have the same shape"):
        fnp.stack([x, np.ones(3)])
    with pytest.raises(ValueError, match="split: array split does not result in an equal"):
        fnp.split(np.arange(5), 2)
    with pytest.raises(ValueError, match="broadcast_to: cannot broadcast"):
        fnp.broadcast_to(x, (3, 3))
    with pytest.raises(ValueError, match="pad: mode 'median' is not supported"):
        fnp.pad(x, 1, mode="median")
    with pytest.raises(ValueError, match="transpose: axes"):
        fnp.transpose(x, (0,))


@given(shapes, st.data())
def test_stacking(backend, shape, data):
    n = data.draw(st.integers(1, 3))
    xs = [rng.standard_normal(shape) for _ in range(n)]
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    _check(backend, lambda *xs: fnp.stack(xs, axis), lambda *xs: np.stack(xs, axis), *xs)
    _check(backend, lambda *xs: fnp.concatenate(xs, axis % len(shape)),
           lambda *xs: np.concatenate(xs, axis % len(shape)), *xs)
    _check(backend, lambda *xs: fnp.concatenate(xs, None),
           lambda *xs: np.concatenate(xs, None), *xs)
    for f, g in [(fnp.hstack, np.hstack), (fnp.vstack, np.vstack), (fnp.dstack, np.dstack),
                 (fnp.column_stack, np.column_stack)]:
        if f is fnp.column_stack and len(shape) > 2:
            continue
        _check(backend, lambda *xs: f(xs), lambda *xs: g(xs), *xs)
    _check(backend, lambda a, b: fnp.append(a, b), np.append, xs[0], xs[-1])
    _check(backend, lambda a, b: fnp.append(a, b, 0), lambda a, b: np.append(a, b, 0),
           xs[0], xs[-1])
    # Mixed dtypes promote as numpy does.
    out = backend(lambda a, b: fnp.concatenate([a, b]))(np.ones(2, np.int32),
                                                        np.ones(2, np.float32))
    assert out.dtype == np.concatenate([np.ones(2, np.int32), np.ones(2, np.float32)]).dtype
    check_grads(backend.jit(lambda *xs: fnp.stack(xs, axis)), xs, order=2)
    out = backend(ft.vmap(lambda *xs: fnp.concatenate(xs, 0)))(*[np.stack([x, x + 1])
                                                                 for x in xs])
    np.testing.assert_allclose(out, np.stack([np.concatenate(xs, 0),
                                              np.concatenate([x + 1 for x in xs], 0)]))


@given(st.integers(1, 7), st.data())
def test_split_array_split(backend, n, data):
    x = rng.standard_normal((n, 3))
    sections = data.draw(st.integers(1, 4))
    _check(backend, lambda x: fnp.array_split(x, sections),
           lambda x: np.array_split(x, sections), x)
    if n % sections == 0:
        _check(backend, lambda x: fnp.split(x, sections), lambda x: np.split(x, sections), x)
    cuts = sorted(data.draw(st.lists(st.integers(-n, n), max_size=3)))
    _check(backend, lambda x: fnp.split(x, cuts), lambda x: np.split(x, cuts), x)
    _check(backend, lambda x: fnp.hsplit(x, 3), lambda x: np.hsplit(x, 3), x)
    check_grads(backend.jit(lambda x: fnp.array_split(x, sections)[0]), (x,), order=2)


@given(shapes, st.data())
def test_tile_repeat_roll_rot90(backend, shape, data):
    x = rng.standard_normal(shape)
    reps = tuple(data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=4)))
    _check(backend, lambda x: fnp.tile(x, reps), lambda x: np.tile(x, reps), x)
    r = data.draw(st.integers(0, 3))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    _check(backend, lambda x: fnp.repeat(x, r, axis), lambda x: np.repeat(x, r, axis), x)
    _check(backend, lambda x: fnp.repeat(x, r), lambda x: np.repeat(x, r), x)
    counts = np.array(data.draw(st.lists(st.integers(0, 2), min_size=shape[axis],
                                         max_size=shape[axis])))
    _check(backend, lambda x: fnp.repeat(x, counts, axis), lambda x: np.repeat(x, counts, axis), x)
    shift = data.draw(st.integers(-6, 6))
    _check(backend, lambda x: fnp.roll(x, shift), lambda x: np.roll(x, shift), x)
    _check(backend, lambda x: fnp.roll(x, shift, axis), lambda x: np.roll(x, shift, axis), x)
    # A traced shift goes through a gather.
    _check(backend, lambda x, s: fnp.roll(x, s, axis), lambda x, s: np.roll(x, int(s), axis), x,
           np.int64(shift))
    if len(shape) >= 2:
        k = data.draw(st.integers(-3, 5))
        _check(backend, lambda x: fnp.rot90(x, k), lambda x: np.rot90(x, k), x)
        _check(backend, lambda x: fnp.rot90(x, k, (1, 0)), lambda x: np.rot90(x, k, (1, 0)), x)
        _check(backend, fnp.fliplr, np.fliplr, x)
    _check(backend, fnp.flipud, np.flipud, x)
    f = lambda x: fnp.roll(fnp.tile(fnp.repeat(x, 2, axis), (2,)), 1, 0)
    check_grads(backend.jit(f), (x,), order=2)
    out = backend(ft.vmap(f))(np.stack([x, -x]))
    np.testing.assert_allclose(out, np.stack([f(x), f(-x)]))


@given(shapes, st.data(), st.sampled_from(["constant", "edge", "reflect", "wrap",
                                           "symmetric"]))
def test_pad_modes(backend, shape, data, mode):
    x = rng.standard_normal(shape)
    widths = [(data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))) for _ in shape]
    _check(backend, lambda x: fnp.pad(x, widths, mode=mode),
           lambda x: np.pad(x, widths, mode=mode), x)
    _check(backend, lambda x: fnp.pad(x, 2, mode=mode), lambda x: np.pad(x, 2, mode=mode), x)
    if mode == "constant":
        cv = ((1.0, 2.0),) * len(shape)
        _check(backend, lambda x: fnp.pad(x, widths, constant_values=cv),
               lambda x: np.pad(x, widths, constant_values=cv), x)
        _check(backend, lambda x: fnp.pad(x, widths, constant_values=-3),
               lambda x: np.pad(x, widths, constant_values=-3), x)
    f = lambda x: fnp.pad(x, widths, mode=mode)
    check_grads(backend.jit(f), (x,), order=2)
    out = backend(ft.vmap(f))(np.stack([x, x * 2]))
    np.testing.assert_allclose(out, np.stack([np.pad(x, widths, mode=mode),
                                              np.pad(2 * x, widths, mode=mode)]))


def test_broadcasting_and_atleast(backend):
    x, y = rng.standard_normal((3, 1)), rng.standard_normal(4)
    _check(backend, lambda x: fnp.broadcast_to(x, (2, 3, 4)),
           lambda x: np.broadcast_to(x, (2, 3, 4)), x)
    _check(backend, lambda x, y: fnp.broadcast_arrays(x, y), np.broadcast_arrays, x, y)
    assert fnp.broadcast_shapes((3, 1), (4,)) == (3, 4)
    for f, g in [(fnp.atleast_1d, np.atleast_1d), (fnp.atleast_2d, np.atleast_2d),
                 (fnp.atleast_3d, np.atleast_3d)]:
        for a in [np.float64(2.0), np.arange(3.0), np.ones((2, 2)), np.ones((1, 2, 3, 1))]:
            _check(backend, f, g, a)
    check_grads(backend.jit(lambda x: fnp.broadcast_to(x, (2, 3, 4))), (x,), order=2)
