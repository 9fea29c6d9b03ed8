"""Sorting: lax.sort (one or several operands, num_keys), sort_key_val, top_k, the gather and
scatter that carry tangents through the permutation, and the numpy API (sort, argsort,
lexsort, searchsorted, unique): against numpy, through make_jaxpr/eval_jaxpr with typecheck,
derivatives, vmap against a loop, and error messages. Numerical tests take the ``backend``
fixture (tests/conftest.py): the same assertions hold eagerly and under ``jit`` on every back
end."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import lax
from functrax.core import ConcretizationTypeError, eval_jaxpr, typecheck_jaxpr
from functrax.lax.sorting import scatter_add_along_axis_p, take_along_axis_p
from functrax.test_util import check_grads


def _assert_same(actual, expected, rtol=1e-7, check_dtype=True):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if check_dtype:
        assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol, equal_nan=True)


def _traced_matches(backend, f, *args):
    """f eagerly == f through make_jaxpr + eval_jaxpr (typechecked); returns f's result on the
    back end under test (the eager one for ``eager``)."""
    eager = f(*args)
    closed = ft.make_jaxpr(f)(*args)
    typecheck_jaxpr(closed)
    outs = eval_jaxpr(closed.jaxpr, closed.consts, *args)
    flat = list(eager) if isinstance(eager, (tuple, list)) else [eager]
    assert len(flat) == len(outs)
    for e, o in zip(flat, outs):
        _assert_same(o, e)
    return backend(f)(*args) if backend.is_jit else eager


@st.composite
def array_and_axis(draw, dtypes=("float64", "int32", "float32", "bool"), max_dims=3,
                   with_nan=False):
    ndim = draw(st.integers(1, max_dims))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31 - 1)))
    if dtype == np.bool_:
        x = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        x = rng.integers(-3, 4, size=shape).astype(dtype)  # many ties
    else:
        x = np.round(rng.standard_normal(shape), 1).astype(dtype)
        if with_nan:
            x[rng.random(shape) < 0.2] = np.nan
    axis = draw(st.integers(-ndim, ndim - 1))
    return x, axis


# ---------------------------------------------------------------------------------------------
# lax.sort, sort_key_val, top_k

@given(data=array_and_axis(with_nan=True))
def test_lax_sort_matches_numpy(backend, data):
    x, axis = data
    _assert_same(_traced_matches(backend, lambda x: lax.sort(x, dimension=axis), x),
                 np.sort(x, axis=axis, kind="stable"))


@given(data=array_and_axis(with_nan=True), seed=st.integers(0, 100))
def test_lax_sort_multiple_operands(backend, data, seed):
    keys, axis = data
    vals = np.random.default_rng(seed).standard_normal(keys.shape)
    perm = np.argsort(keys, axis=axis, kind="stable")
    k, v = _traced_matches(backend, lambda a, b: lax.sort((a, b), dimension=axis), keys, vals)
    _assert_same(k, np.take_along_axis(keys, perm, axis))
    _assert_same(v, np.take_along_axis(vals, perm, axis))
    k2, v2 = backend(lambda k, v: lax.sort_key_val(k, v, dimension=axis))(keys, vals)
    _assert_same(v2, v)
    # two keys: lexicographic, the first key first
    second = np.random.default_rng(seed + 1).integers(0, 3, keys.shape)
    outs = _traced_matches(backend, lambda a, b, c: lax.sort((a, b, c), dimension=axis, num_keys=2),
                           keys, second, vals)
    perm2 = np.lexsort((second, keys), axis=axis)
    for o, ref in zip(outs, (keys, second, vals)):
        _assert_same(o, np.take_along_axis(ref, perm2, axis))


def test_sort_is_stable_and_puts_nan_last(backend):
    keys = np.array([2.0, np.nan, 1.0, 2.0, 1.0, np.nan])
    vals = np.arange(6)
    k, v = backend(lax.sort_key_val)(keys, vals)
    _assert_same(k, np.array([1.0, 1.0, 2.0, 2.0, np.nan, np.nan]))
    _assert_same(v, np.array([2, 4, 0, 3, 1, 5]))


@given(data=array_and_axis(dtypes=("float64", "int32"), with_nan=True),
       k_frac=st.floats(0, 1))
def test_top_k_matches_numpy(backend, data, k_frac):
    x, _ = data
    n = x.shape[-1]
    k = int(round(k_frac * n))
    vals, idx = _traced_matches(backend, lambda x: lax.top_k(x, k), x)
    assert idx.dtype == np.int32
    # Descending, NaN first (numpy's largest), ties with the lower index first.
    order = np.flip(np.argsort(np.flip(x, -1), axis=-1, kind="stable"), -1)
    ref_idx = (n - 1 - order)[..., :k]
    _assert_same(idx, ref_idx.astype(np.int32))
    _assert_same(vals, np.take_along_axis(x, ref_idx, -1))


def test_top_k_ties(backend):
    vals, idx = backend(lambda x: lax.top_k(x, 4))(np.array([1.0, 5.0, 3.0, 5.0, 3.0]))
    _assert_same(vals, np.array([5.0, 5.0, 3.0, 3.0]))
    _assert_same(idx, np.array([1, 3, 2, 4], np.int32))


# ---------------------------------------------------------------------------------------------
# Derivatives

def _rand(shape, seed=0):
    # distinct values: finite differences must not cross a tie
    rng = np.random.default_rng(seed)
    return rng.permutation(np.prod(shape)).reshape(shape) * 0.5 + rng.random(shape) * 0.1


@pytest.mark.parametrize("f", [
    lambda x: lax.sort(x, dimension=0),
    lambda x: lax.sort(x, dimension=-1),
    lambda x: lax.sort_key_val(x, fnp.sin(x), dimension=1)[1],
    lambda x: lax.sort((x, x * x), dimension=0)[1] * lax.sort(x, dimension=0),
    lambda x: lax.top_k(x, 2)[0],
    lambda x: fnp.sort(x, axis=None),
    lambda x: fnp.sort(x, axis=0, descending=True),
    lambda x: take_along_axis_p.bind(x, np.array([[2, 0, 0, 1], [1, 1, 2, 0], [0, 2, 1, 1]]),
                                     axis=0),
    lambda x: scatter_add_along_axis_p.bind(np.array([[0, 0, 3], [2, 1, 2], [1, 1, 1]]),
                                            x[:, :3], axis=1, size=4),
], ids=lambda f: f.__code__.co_firstlineno)
def test_grads(backend, f):
    x = _rand((3, 4))
    f = backend.jit(f)
    check_grads(f, (x,), order=2, modes=("fwd", "rev"))
    # The transformed programs of the jitted f (pjit equations) typecheck too.
    typecheck_jaxpr(ft.make_jaxpr(ft.grad(lambda x: fnp.sum(fnp.sin(f(x)))))(x))
    typecheck_jaxpr(ft.make_jaxpr(lambda x: ft.jvp(f, (x,), (x,))[1])(x))


def test_sort_gradient_follows_the_permutation(backend):
    x = np.array([3.0, 1.0, 2.0])
    w = np.array([10.0, 20.0, 30.0])
    g = backend(ft.grad(lambda x: fnp.sum(w * lax.sort(x))))(x)
    _assert_same(g, np.array([30.0, 10.0, 20.0]))
    # values sorted by integer keys: the gradient flows to the values only
    keys = np.array([2, 0, 1])
    g = backend(ft.grad(lambda v: fnp.sum(w * lax.sort_key_val(keys, v)[1])))(x)
    _assert_same(g, np.array([30.0, 10.0, 20.0]))
    g = backend(ft.grad(lambda x: fnp.sum(w[:2] * lax.top_k(x, 2)[0])))(x)
    _assert_same(g, np.array([10.0, 0.0, 20.0]))


def test_scatter_add_accumulates_repeats(backend):
    idx = np.array([[0, 0, 2]])
    scatter = lambda size: backend(  # noqa: E731
        lambda i, u: scatter_add_along_axis_p.bind(i, u, axis=1, size=size))
    out = scatter(4)(idx, np.array([[1.0, 2.0, 3.0]]))
    _assert_same(out, np.array([[3.0, 0.0, 3.0, 0.0]]))
    out = scatter(3)(idx, np.array([[1, 2, 3]], np.int32))
    _assert_same(out, np.array([[3, 0, 3]], np.int32))


# ---------------------------------------------------------------------------------------------
# vmap against a loop

@pytest.mark.parametrize("f", [
    lambda x: lax.sort(x, dimension=0),
    lambda x: lax.sort_key_val(x, x * 2.0, dimension=-1),
    lambda x: lax.top_k(x, 2),
    lambda x: fnp.argsort(x, axis=0),
    lambda x: fnp.sort(x, axis=None),
    lambda x: fnp.searchsorted(fnp.sort(x[0]), x[1]),
    lambda x: ft.grad(lambda y: fnp.sum(lax.sort(y, dimension=1) * fnp.sin(y)))(x),
    lambda x: ft.grad(lambda y: fnp.sum(lax.top_k(y, 3)[0]))(x),
], ids=lambda f: f.__code__.co_firstlineno)
@pytest.mark.parametrize("in_axis", [0, 1, 2])
def test_vmap_matches_loop(backend, f, in_axis):
    x = _rand((3, 4, 5), seed=in_axis)
    out = backend(ft.vmap(f, in_axes=in_axis))(x)
    moved = np.moveaxis(x, in_axis, 0)
    per = [f(xi) for xi in moved]
    outs = out if isinstance(out, tuple) else (out,)
    pers = [p if isinstance(p, tuple) else (p,) for p in per]
    for i, o in enumerate(outs):
        _assert_same(o, np.stack([np.asarray(p[i]) for p in pers]))
    typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f, in_axes=in_axis))(x))


def test_vmap_with_one_operand_batched(backend):
    keys = np.array([3.0, 1.0, 2.0])
    vals = _rand((4, 3))
    out_k, out_v = backend(ft.vmap(lambda v: lax.sort_key_val(keys, v), in_axes=0))(vals)
    perm = np.argsort(keys)
    _assert_same(out_k, np.broadcast_to(np.sort(keys), (4, 3)))
    _assert_same(out_v, vals[:, perm])
    out_k, out_v = backend(ft.vmap(lambda k: lax.sort_key_val(k, keys), in_axes=1))(vals.T)
    _assert_same(out_v, np.stack([keys[np.argsort(v)] for v in vals]))
    # batched indices, unbatched operand, and the other way round
    x = _rand((3, 4))
    idx = np.random.default_rng(0).integers(0, 3, (2, 3, 4))
    got = backend(ft.vmap(lambda i: take_along_axis_p.bind(x, i, axis=0)))(idx)
    _assert_same(got, np.stack([np.take_along_axis(x, i, 0) for i in idx]))
    got = backend(ft.vmap(lambda u: scatter_add_along_axis_p.bind(idx[0], u, axis=0, size=3),
                          in_axes=2))(np.stack([x, 2 * x], -1))
    ref = np.zeros((3, 4))
    np.add.at(ref, (idx[0], np.arange(4)[None, :].repeat(3, 0)), x)
    _assert_same(got, np.stack([ref, 2 * ref]))


# ---------------------------------------------------------------------------------------------
# numpy API

@given(data=array_and_axis(with_nan=True), descending=st.booleans())
def test_numpy_sort_argsort(backend, data, descending):
    x, axis = data
    order = np.argsort(x, axis=axis, kind="stable")
    if descending:
        flipped = np.flip(x, axis)
        order = x.shape[axis] - 1 - np.flip(np.argsort(flipped, axis=axis, kind="stable"), axis)
    f = lambda x: fnp.argsort(x, axis=axis, descending=descending)  # noqa: E731
    _assert_same(_traced_matches(backend, f, x), order.astype(np.int64))
    g = lambda x: fnp.sort(x, axis=axis, descending=descending)  # noqa: E731
    _assert_same(_traced_matches(backend, g, x),
                 np.take_along_axis(x, order, axis))
    _assert_same(backend(lambda x: fnp.sort(x, axis=None))(x), np.sort(x, axis=None))
    _assert_same(backend(lambda x: fnp.argsort(x, axis=None))(x),
                 np.argsort(x, axis=None, kind="stable"))


@given(data=array_and_axis(dtypes=("int32",)), seed=st.integers(0, 99))
def test_numpy_lexsort(backend, data, seed):
    x, axis = data
    other = np.random.default_rng(seed).integers(0, 2, x.shape)
    _assert_same(_traced_matches(backend, lambda a, b: fnp.lexsort((a, b), axis=axis), x, other),
                 np.lexsort((x, other), axis=axis))
    stacked = np.stack([x, other.astype(np.int32)])
    _assert_same(backend(lambda s: fnp.lexsort(s, axis=axis))(stacked),
                 np.lexsort(stacked, axis=axis))


@given(n=st.integers(0, 9), m=st.integers(0, 6), seed=st.integers(0, 999),
       side=st.sampled_from(["left", "right"]), method=st.sampled_from(["scan", "compare_all"]),
       dtype=st.sampled_from(["float64", "int64", "float32"]))
def test_numpy_searchsorted(backend, n, m, seed, side, method, dtype):
    rng = np.random.default_rng(seed)
    a = np.sort(rng.integers(-4, 5, n).astype(dtype))
    v = rng.integers(-5, 6, (m, 2)).astype(dtype) + (0.5 if dtype != "int64" else 0) * \
        rng.integers(0, 2, (m, 2))
    if dtype != "int64" and n:
        a[-1:] = np.nan
        v.flat[:1] = np.nan
    f = lambda a, v: fnp.searchsorted(a, v, side=side, method=method)  # noqa: E731
    _assert_same(_traced_matches(backend, f, a, v),
                 np.searchsorted(a, v, side=side).astype(np.int64))
    # sorter
    shuffled = rng.permutation(a)
    sorter = np.argsort(shuffled, kind="stable")
    _assert_same(backend(lambda a, v, s: fnp.searchsorted(a, v, side=side, sorter=s,
                                                          method=method))(shuffled, v, sorter),
                 np.searchsorted(shuffled, v, side=side, sorter=sorter).astype(np.int64))
    # a Python scalar query
    _assert_same(backend(lambda a: fnp.searchsorted(a, 1, side=side))(a),
                 np.int64(np.searchsorted(a, 1, side=side)))


# unique's output shape depends on the values: it needs concrete inputs, so this test stays
# eager (under jit it raises, as checked below).
def test_unique_concrete_and_under_transformations():
    x = np.array([3, 1, 3, 2, 1, 1])
    for kw in ({}, dict(return_index=True, return_inverse=True, return_counts=True)):
        got, ref = fnp.unique(x, **kw), np.unique(x, **kw)
        for g, r in zip(got if kw else (got,), ref if kw else (ref,)):
            _assert_same(g, r)
    _assert_same(fnp.unique(np.array([[1, 2], [1, 2], [0, 5]]), axis=0),
                 np.unique(np.array([[1, 2], [1, 2], [0, 5]]), axis=0))
    # Under grad the primal is concrete: allowed.
    ft.grad(lambda y: fnp.sum(y) + 0.0 * fnp.sum(fnp.unique(y)))(np.array([1.0, 1.0, 2.0]))
    with pytest.raises(ConcretizationTypeError,
                       match=r"test_sorting.py[\s\S]*functrax.numpy.unique.*outside jit"):
        ft.make_jaxpr(lambda y: fnp.unique(y))(x)
    with pytest.raises(ConcretizationTypeError, match="unique"):
        ft.vmap(fnp.unique)(np.ones((2, 3)))


# ---------------------------------------------------------------------------------------------
# Errors

def test_errors_name_the_operation_and_the_line():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"sort: dimension 2 is out of bounds.*rank 2"
                                         r"[\s\S]*test_sorting.py"):
        lax.sort(x, dimension=2)
    with pytest.raises(TypeError, match=r"sort: all operands must have the same shape.*"
                                        r"f64\[2,3\].*f64\[3\][\s\S]*test_sorting.py"):
        lax.sort((x, np.ones(3)))
    with pytest.raises(ValueError, match=r"sort: num_keys=3 must be between 1 and the number "
                                         r"of operands \(2\)"):
        ft.make_jaxpr(lambda a: lax.sort((a, a), num_keys=3))(x)
    with pytest.raises(ValueError, match=r"top_k: k=4 must be between 0 and the size of the "
                                         r"last axis of f64\[2,3\][\s\S]*test_sorting.py"):
        lax.top_k(x, 4)
    with pytest.raises(TypeError, match=r"top_k: the operand must have at least one dimension"):
        lax.top_k(np.float64(1.0), 1)
    with pytest.raises(np.exceptions.AxisError, match=r"argsort: axis 3 is out of bounds"
                                                      r"[\s\S]*test_sorting.py"):
        fnp.argsort(x, axis=3)
    with pytest.raises(ValueError, match=r"searchsorted: a must be 1-D, got shape \(2, 3\)"
                                         r"[\s\S]*test_sorting.py"):
        fnp.searchsorted(x, 1.0)
    with pytest.raises(ValueError, match=r"searchsorted: side must be 'left' or 'right'"):
        fnp.searchsorted(x[0], 1.0, side="middle")
    with pytest.raises(ValueError, match=r"lexsort: all keys need to be the same shape"):
        fnp.lexsort((np.ones(3), np.ones(4)))
    with pytest.raises(TypeError, match=r"take_along_axis: operand f64\[2,3\] and indices "
                                        r"i64\[3,3\] must agree"):
        ft.make_jaxpr(lambda a: take_along_axis_p.bind(a, np.zeros((3, 3), np.int64), axis=1))(x)
