"""Reductions and cumulative operations: lax primitives and the numpy API, against numpy, through
make_jaxpr/eval_jaxpr with typecheck, derivatives (check_grads, order 2), vmap against a loop,
and error messages. Numerical tests take the ``backend`` fixture (tests/conftest.py): the same
assertions hold eagerly and under ``jit`` on every back end."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import lax
from functrax.core import eval_jaxpr, typecheck_jaxpr
from functrax.test_util import check_grads


# ---------------------------------------------------------------------------------------------
# helpers

def _traced_matches(backend, f, *args, rtol=1e-7, atol=1e-10):
    """f eagerly == f through make_jaxpr + eval_jaxpr, and the jaxpr typechecks; returns f's
    result on the back end under test (the eager one for ``eager``)."""
    eager = f(*args)
    closed = ft.make_jaxpr(f)(*args)
    typecheck_jaxpr(closed)
    outs = eval_jaxpr(closed.jaxpr, closed.consts, *args)
    flat_eager = eager if isinstance(eager, (tuple, list)) else [eager]
    for e, o in zip(flat_eager, outs):
        e, o = np.asarray(e), np.asarray(o)
        assert e.shape == o.shape and e.dtype == o.dtype
        np.testing.assert_allclose(o, e, rtol=rtol, atol=atol, equal_nan=True)
    return backend(f)(*args) if backend.is_jit else eager


def _assert_same(actual, expected, rtol=1e-7, atol=1e-10, check_dtype=True):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if check_dtype:
        assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


def _typecheck_transforms(f, x):
    """make_jaxpr of grad, jvp and vmap of a scalar-valued-after-sum f typecheck."""
    g = lambda x: fnp.sum(f(x))  # noqa: E731
    typecheck_jaxpr(ft.make_jaxpr(ft.grad(g))(x))
    typecheck_jaxpr(ft.make_jaxpr(lambda x: ft.jvp(f, (x,), (x,))[1])(x))
    typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f))(np.stack([x, x + 1.0])))


@st.composite
def array_and_axis(draw, min_dims=1, max_dims=3, dtypes=("float64",), allow_none=True,
                   allow_tuple=True, min_side=1):
    ndim = draw(st.integers(min_dims, max_dims))
    shape = tuple(draw(st.lists(st.integers(min_side, 4), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        x = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        x = rng.integers(0 if dtype.kind == "u" else -5, 6, size=shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    choices = [st.integers(-ndim, ndim - 1)]
    if allow_none:
        choices.append(st.none())
    if allow_tuple and ndim:
        choices.append(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim).map(
            lambda axes: tuple(a - ndim if i % 2 else a for i, a in enumerate(axes))))
    axis = draw(st.one_of(*choices))
    return x, axis


ALL_DTYPES = ("float64", "float32", "int32", "int64", "uint8", "bool")
NUM_DTYPES = ("float64", "float32", "int32", "int64", "uint8")


# ---------------------------------------------------------------------------------------------
# numpy API against numpy: values, shapes and dtypes

@pytest.mark.parametrize("name", ["sum", "prod", "max", "min", "all", "any", "count_nonzero"])
@given(data=array_and_axis(dtypes=ALL_DTYPES), keepdims=st.booleans())
def test_numpy_reductions_match_numpy(backend, name, data, keepdims):
    x, axis = data
    if name == "prod" and x.dtype.kind in "iu":
        x = np.clip(x, -2, 2).astype(x.dtype)  # stay clear of integer overflow
    f = lambda x: getattr(fnp, name)(x, axis=axis, keepdims=keepdims)  # noqa: E731
    expected = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    if name == "count_nonzero":
        expected = np.asarray(expected, dtype=np.int64)
    rtol = 1e-5 if x.dtype == np.float32 else 1e-7
    _assert_same(_traced_matches(backend, f, x, rtol=rtol), expected, rtol=rtol)


@pytest.mark.parametrize("name", ["mean", "var", "std"])
@given(data=array_and_axis(dtypes=NUM_DTYPES), keepdims=st.booleans(), ddof=st.integers(0, 1))
def test_numpy_moments_match_numpy(backend, name, data, keepdims, ddof):
    x, axis = data
    kw = dict(axis=axis, keepdims=keepdims)
    if name != "mean":
        kw["ddof"] = ddof
    expected = getattr(np, name)(x, **kw)
    with np.errstate(divide="ignore", invalid="ignore"):
        got = _traced_matches(backend, lambda x: getattr(fnp, name)(x, **kw), x, rtol=1e-5)
    rtol = 1e-4 if x.dtype == np.float32 else 1e-7
    _assert_same(got, expected, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
@given(data=array_and_axis(dtypes=ALL_DTYPES, allow_tuple=False), keepdims=st.booleans())
def test_numpy_argmax_argmin_match_numpy(backend, name, data, keepdims):
    x, axis = data
    f = lambda x: getattr(fnp, name)(x, axis=axis, keepdims=keepdims)  # noqa: E731
    _assert_same(_traced_matches(backend, f, x),
                 getattr(np, name)(x, axis=axis, keepdims=keepdims))


def test_argmax_argmin_nan_first_wins(backend):
    x = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 0.0, 2.0, -1.0]])
    for name in ("argmax", "argmin"):
        _assert_same(backend(lambda x: getattr(fnp, name)(x, axis=1))(x),
                     getattr(np, name)(x, axis=1))
        _assert_same(backend(lambda x: getattr(lax, name)(x, 1, np.int32))(x),
                     getattr(np, name)(x, axis=1).astype(np.int32))
    assert int(backend(fnp.argmax)(x)) == 1
    # ties: the first one
    assert int(backend(fnp.argmax)(np.array([1.0, 3.0, 3.0]))) == 1
    assert int(backend(fnp.argmin)(np.array([2.0, 0.0, 0.0]))) == 1


def test_nan_aware_argmax(backend):
    x = np.array([[1.0, np.nan, 3.0], [np.nan, 0.0, -2.0]])
    _assert_same(backend(lambda x: fnp.nanargmax(x, axis=1))(x), np.nanargmax(x, axis=1))
    _assert_same(backend(lambda x: fnp.nanargmin(x, axis=0))(x), np.nanargmin(x, axis=0))
    # The all-NaN check needs concrete values: an eager-only error.
    with pytest.raises(ValueError, match="All-NaN"):
        fnp.nanargmax(np.array([np.nan, np.nan]))


@given(data=array_and_axis(dtypes=ALL_DTYPES, allow_tuple=False))
def test_numpy_ptp_cumsum_cumprod(backend, data):
    x, axis = data
    if x.dtype.kind in "iu":
        x = np.clip(x, 0, 2).astype(x.dtype)
    if x.dtype != np.bool_:
        _assert_same(_traced_matches(backend, lambda x: fnp.ptp(x, axis=axis), x),
                     np.ptp(x, axis=axis))
    for name in ("cumsum", "cumprod"):
        f = lambda x: getattr(fnp, name)(x, axis=axis)  # noqa: E731
        rtol = 1e-5 if x.dtype == np.float32 else 1e-7
        _assert_same(_traced_matches(backend, f, x, rtol=rtol), getattr(np, name)(x, axis=axis),
                     rtol=rtol)


def test_numpy_dtype_rules(backend):
    i32 = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = i32 > 2
    run = lambda f, *args: backend(f)(*args)  # noqa: E731
    assert run(fnp.sum, i32).dtype == np.int64
    assert run(lambda b: fnp.sum(b, axis=0), b).dtype == np.int64
    assert run(fnp.sum, np.arange(3, dtype=np.uint8)).dtype == np.uint64
    assert run(fnp.sum, np.ones(3, np.float32)).dtype == np.float32
    assert run(lambda x: fnp.sum(x, dtype=np.float32), i32).dtype == np.float32
    assert run(fnp.prod, b).dtype == np.int64
    assert run(fnp.mean, i32).dtype == np.float64
    assert run(fnp.mean, np.ones(3, np.float32)).dtype == np.float32
    assert run(fnp.var, b).dtype == np.float64
    assert run(fnp.median, i32).dtype == np.float64
    assert run(fnp.argmax, i32).dtype == np.int64
    assert run(fnp.cumsum, b).dtype == np.int64
    assert run(fnp.all, i32).dtype == np.bool_
    assert run(lambda x, w: fnp.average(x, weights=w), i32,
               np.ones((2, 3), np.float32)).dtype == np.float64
    # A Python scalar reduces to itself.
    assert float(run(fnp.sum, 2.5)) == 2.5


def test_where_and_initial(backend):
    x = np.arange(12.0).reshape(3, 4) - 5.0
    w = (x % 3) != 0
    for name in ("sum", "prod", "mean"):
        for axis in (None, 0, 1):
            f = lambda x: getattr(fnp, name)(x, axis=axis, where=w)  # noqa: E731
            _assert_same(_traced_matches(backend, f, x), getattr(np, name)(x, axis=axis, where=w))
    run = lambda f: backend(f)(x)  # noqa: E731
    _assert_same(run(lambda x: fnp.var(x, axis=1, where=w)), np.var(x, axis=1, where=w))
    _assert_same(run(lambda x: fnp.std(x, axis=0, where=w, ddof=1)),
                 np.std(x, axis=0, where=w, ddof=1))
    _assert_same(run(lambda x: fnp.max(x, axis=0, where=w, initial=-100.0)),
                 np.max(x, axis=0, where=w, initial=-100.0))
    _assert_same(run(lambda x: fnp.min(x, axis=1, where=w, initial=100.0)),
                 np.min(x, axis=1, where=w, initial=100.0))
    _assert_same(run(lambda x: fnp.all(x > -5, axis=1, where=w)),
                 np.all(x > -5, axis=1, where=w))
    _assert_same(run(lambda x: fnp.any(x > 5, axis=0, where=w)), np.any(x > 5, axis=0, where=w))
    _assert_same(run(lambda x: fnp.sum(x, axis=0, initial=10.0)),
                 np.sum(x, axis=0, initial=10.0))
    _assert_same(run(lambda x: fnp.max(x, initial=100.0)), np.max(x, initial=100.0))
    # a broadcasting mask
    _assert_same(run(lambda x: fnp.sum(x, axis=1, where=np.array([True, False, True, True]))),
                 np.sum(x, axis=1, where=np.array([True, False, True, True])))
    # where under grad
    g = run(ft.grad(lambda x: fnp.mean(x, where=w)))
    _assert_same(g, w / w.sum())


@given(data=array_and_axis(dtypes=("float64", "int64"), allow_tuple=True),
       q=st.lists(st.floats(0, 1), min_size=1, max_size=3),
       method=st.sampled_from(["linear", "lower", "higher", "nearest", "midpoint"]),
       keepdims=st.booleans())
def test_quantile_matches_numpy(backend, data, q, method, keepdims):
    x, axis = data
    q = np.array(q)
    f = lambda x: fnp.quantile(x, q, axis=axis, method=method, keepdims=keepdims)  # noqa
    _assert_same(_traced_matches(backend, f, x), np.quantile(x, q, axis=axis, method=method,
                                                   keepdims=keepdims))
    _assert_same(backend(lambda x: fnp.percentile(x, q[0] * 100, axis=axis, method=method))(x),
                 np.percentile(x, q[0] * 100, axis=axis, method=method))
    _assert_same(backend(lambda x: fnp.median(x, axis=axis, keepdims=keepdims))(x),
                 np.median(x, axis=axis, keepdims=keepdims))


def test_quantile_with_traced_q_and_nan(backend):
    x = np.array([[3.0, 1.0, 4.0, 1.5], [2.0, np.nan, 7.0, 1.0]])
    q = np.array([0.25, 0.9])
    f = ft.make_jaxpr(lambda x, q: fnp.quantile(x, q, axis=1))(x, q)
    typecheck_jaxpr(f)
    _assert_same(eval_jaxpr(f.jaxpr, f.consts, x, q)[0], np.quantile(x, q, axis=1))
    _assert_same(backend(lambda x, q: fnp.quantile(x, q, axis=1))(x, q),
                 np.quantile(x, q, axis=1))
    _assert_same(backend(lambda x: fnp.median(x, axis=1))(x), np.median(x, axis=1))
    _assert_same(backend(lambda x: fnp.nanmedian(x, axis=1))(x), np.nanmedian(x, axis=1))
    _assert_same(backend(lambda x, q: fnp.nanquantile(x, q, axis=1))(x, q),
                 np.nanquantile(x, q, axis=1))
    _assert_same(backend(lambda x: fnp.nanpercentile(x, 30, axis=0))(x),
                 np.nanpercentile(x, 30, axis=0))
    with np.errstate(all="ignore"):
        _assert_same(backend(lambda x: fnp.nanmedian(x, axis=0))(np.full((2, 2), np.nan)),
                     np.array([np.nan] * 2))
    # q outside [0, 1] is checked on concrete values: an eager-only error.
    with pytest.raises(ValueError, match=r"quantile.*\[0, 1\][\s\S]*test_reductions.py"):
        fnp.quantile(x, 1.5)


def test_nan_reductions(backend):
    x = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan], [2.0, -1.0, 0.5]])
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        for name in ("nanmax", "nanmin", "nanmean", "nanvar", "nanstd"):
            for axis in (None, 0, 1):
                _assert_same(backend(lambda x: getattr(fnp, name)(x, axis=axis))(x),
                             getattr(np, name)(x, axis=axis))
    for name in ("nansum", "nanprod", "nancumsum", "nancumprod"):
        for axis in (None, 0, 1):
            _assert_same(_traced_matches(backend, lambda x: getattr(fnp, name)(x, axis=axis), x),
                         getattr(np, name)(x, axis=axis))
    _assert_same(backend(lambda x: fnp.nanstd(x, ddof=1))(x[2]), np.nanstd(x[2], ddof=1))
    # integer inputs have no NaNs
    i = np.arange(6).reshape(2, 3)
    _assert_same(backend(lambda i: fnp.nanmax(i, axis=0))(i), np.nanmax(i, axis=0))
    _assert_same(backend(lambda i: fnp.nanmean(i, axis=1))(i), np.nanmean(i, axis=1))


def test_average_and_cumulative_sum(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4))
    w = rng.random((3, 4))
    _assert_same(backend(lambda x, w: fnp.average(x, weights=w))(x, w), np.average(x, weights=w))
    _assert_same(backend(lambda x, w: fnp.average(x, axis=1, weights=w))(x, w[0]),
                 np.average(x, axis=1, weights=w[0]))
    avg, sw = backend(lambda x, w: fnp.average(x, axis=0, weights=w, returned=True,
                                               keepdims=True))(x, w)
    e_avg, e_sw = np.average(x, axis=0, weights=w, returned=True, keepdims=True)
    _assert_same(avg, e_avg)
    _assert_same(sw, e_sw)
    _assert_same(backend(lambda x: fnp.average(x, axis=(0, 1)))(x), np.average(x, axis=(0, 1)))
    with pytest.raises(ValueError, match="average.*length of weights"):
        fnp.average(x, axis=1, weights=np.ones(3))
    if hasattr(np, "cumulative_sum"):
        _assert_same(backend(lambda x: fnp.cumulative_sum(x, axis=1, include_initial=True))(x),
                     np.cumulative_sum(x, axis=1, include_initial=True))
        _assert_same(backend(lambda x: fnp.cumulative_prod(x, include_initial=True))(x[0]),
                     np.cumulative_prod(x[0], include_initial=True))


def test_empty_reductions(backend):
    e = np.zeros((0, 3))
    run = lambda f, a=e: backend(f)(a)  # noqa: E731
    _assert_same(run(lambda e: fnp.sum(e, axis=0)), np.sum(e, axis=0))
    _assert_same(run(lambda e: fnp.prod(e, axis=0)), np.prod(e, axis=0))
    _assert_same(run(lambda e: fnp.max(e, axis=0, initial=-1.0)),
                 np.max(e, axis=0, initial=-1.0))
    _assert_same(run(lambda e: fnp.max(e, axis=1)), np.max(e, axis=1))
    _assert_same(run(lambda e: fnp.all(e, axis=0)), np.all(e, axis=0))
    _assert_same(run(fnp.any), np.any(e))
    _assert_same(run(lambda e: lax.reduce_max(e, (0,))), np.full(3, -np.inf))
    _assert_same(run(lambda e: lax.reduce_min(e, (0,)), np.zeros((0,), np.int32)),
                 np.int32(np.iinfo(np.int32).max))
    with pytest.raises(ValueError, match=r"max: zero-size array[\s\S]*test_reductions.py"):
        fnp.max(e, axis=0)


def test_logical_not_in_a_small_fused_program(backend):
    # Regression: the CPU back end's whole-small-program path wrote `not` through a dict that
    # also built the binary and/or forms, indexing a second operand `not` does not have.
    x = np.array([1.0, np.nan, 3.0])
    f = lambda x: (fnp.sum(fnp.where(~(x != x), x, 0.0))  # noqa: E731
                   / fnp.sum(~(x != x)).astype(np.float64))
    _assert_same(backend(f)(x), np.float64(2.0))
    i = np.array([1, 2, 4], np.int32)
    _assert_same(backend(lambda i: fnp.sum(~i) / fnp.sum(i))(i), np.sum(~i) / np.sum(i))
    _assert_same(backend(fnp.nanmean)(x), np.nanmean(x))


# ---------------------------------------------------------------------------------------------
# lax primitives

@given(data=array_and_axis(dtypes=ALL_DTYPES, allow_none=True))
def test_lax_reductions_match_numpy(backend, data):
    x, axis = data
    axes = None if axis is None else axis
    np_axis = axis
    if x.dtype.kind in "iub":
        xi = x.astype(np.int64) if x.dtype == np.bool_ else x
        _assert_same(backend(lambda x: lax.reduce_and(x, axes))(x),
                     np.bitwise_and.reduce(xi, axis=np_axis).astype(x.dtype)
                     if x.dtype != np.bool_ else np.all(x, axis=np_axis))
        _assert_same(backend(lambda x: lax.reduce_or(x, axes))(x),
                     np.bitwise_or.reduce(xi, axis=np_axis).astype(x.dtype)
                     if x.dtype != np.bool_ else np.any(x, axis=np_axis))
        _assert_same(_traced_matches(backend, lambda x: lax.reduce_xor(x, axes), x),
                     np.bitwise_xor.reduce(xi, axis=np_axis).astype(x.dtype)
                     if x.dtype != np.bool_ else np.logical_xor.reduce(x, axis=np_axis))
    if x.dtype != np.bool_:
        _assert_same(_traced_matches(backend, lambda x: lax.reduce_sum(x, axes), x),
                     np.sum(x, axis=np_axis, dtype=x.dtype), rtol=1e-5)
        _assert_same(_traced_matches(backend, lambda x: lax.reduce_prod(x, axes), x),
                     np.prod(x, axis=np_axis, dtype=x.dtype), rtol=1e-5)
    _assert_same(_traced_matches(backend, lambda x: lax.reduce_max(x, axes), x),
                 np.max(x, axis=np_axis))
    _assert_same(backend(lambda x: lax.reduce_min(x, axes))(x), np.min(x, axis=np_axis))


CUMULATIVE = {
    "cumsum": lambda x, axis: np.cumsum(x, axis=axis, dtype=x.dtype),
    "cumprod": lambda x, axis: np.cumprod(x, axis=axis, dtype=x.dtype),
    "cummax": lambda x, axis: np.maximum.accumulate(x, axis=axis),
    "cummin": lambda x, axis: np.minimum.accumulate(x, axis=axis),
    "cumlogsumexp": lambda x, axis: np.logaddexp.accumulate(x, axis=axis),
}


@pytest.mark.parametrize("name", sorted(CUMULATIVE))
@given(data=array_and_axis(dtypes=("float64", "float32", "int32"), allow_none=False,
                           allow_tuple=False, min_side=0), reverse=st.booleans())
def test_lax_cumulative_match_numpy(backend, name, data, reverse):
    x, axis = data
    if name == "cumlogsumexp" and x.dtype.kind != "f":
        x = x.astype(np.float64)
    ref = CUMULATIVE[name]
    expected = np.flip(ref(np.flip(x, axis), axis), axis) if reverse else ref(x, axis)
    f = lambda x: getattr(lax, name)(x, axis=axis, reverse=reverse)  # noqa: E731
    rtol = 1e-5 if x.dtype == np.float32 else 1e-7
    _assert_same(_traced_matches(backend, f, x, rtol=rtol), expected, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# Derivatives

def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("f", [
    lambda x: fnp.sum(x, axis=1),
    lambda x: fnp.mean(x, axis=(0, 2), keepdims=True),
    lambda x: fnp.var(x, axis=0),
    lambda x: fnp.std(x, axis=2, ddof=1),
    lambda x: fnp.max(x, axis=1),
    lambda x: fnp.min(x, axis=(0, 1)),
    lambda x: fnp.prod(x, axis=2),
    lambda x: fnp.ptp(x, axis=0),
    lambda x: fnp.cumsum(x, axis=1),
    lambda x: fnp.cumprod(x, axis=2),
    lambda x: fnp.median(x, axis=1),
    lambda x: fnp.quantile(x, np.array([0.3, 0.8]), axis=2),
    lambda x: fnp.average(x, axis=1, weights=np.array([1.0, 2.0, 3.0])),
    lambda x: fnp.nanmean(x, axis=0),
    lambda x: lax.cumsum(x, axis=0, reverse=True),
    lambda x: lax.cumprod(x, axis=1, reverse=True),
    lambda x: lax.cummax(x, axis=2),
    lambda x: lax.cummin(x, axis=1, reverse=True),
    lambda x: lax.cumlogsumexp(x, axis=2),
    lambda x: lax.cumlogsumexp(x, axis=0, reverse=True),
], ids=lambda f: f.__code__.co_firstlineno)
def test_grads(backend, f):
    x = _rand((2, 3, 4))
    check_grads(backend.jit(f), (x,), order=2, modes=("fwd", "rev"))
    # The transformed programs of the jitted f (pjit equations) typecheck too.
    _typecheck_transforms(backend.jit(f), x)


def test_grad_of_quantile_wrt_q(backend):
    x = np.array([4.0, 1.0, 3.0, 2.0, 7.0])
    check_grads(backend.jit(lambda q: fnp.quantile(x, q)), (np.array([0.3, 0.55]),), order=2)
    # d/dq of linear interpolation is the gap between the neighbouring order statistics
    g = backend(ft.grad(lambda q: fnp.quantile(x, q)))(0.3)  # position 1.2: between 2 and 3
    assert np.isclose(float(g), (3.0 - 2.0) * 4)


def test_max_min_ties_split_the_gradient(backend):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    _assert_same(backend(ft.grad(lambda x: fnp.max(x)))(x[0]), np.array([0.0, 0.5, 0.5]))
    _assert_same(backend(ft.grad(lambda x: fnp.sum(fnp.max(x, axis=1))))(x),
                 np.array([[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]))
    _assert_same(backend(ft.grad(lambda x: fnp.min(x)))(x), np.array([[1.0, 0, 0], [0, 0, 0]]))
    _, t = backend(lambda x, t: ft.jvp(lambda x: fnp.max(x, axis=1), (x,), (t,)))(
        x, np.array([[0.0, 1.0, 3.0], [3.0, 0.0, 0.0]]))
    _assert_same(t, np.array([2.0, 1.0]))


def test_prod_gradient_with_zeros(backend):
    g = backend(ft.grad(lambda x: fnp.prod(x)))
    _assert_same(g(np.array([0.0, 2.0, 3.0])), np.array([6.0, 0.0, 0.0]))
    _assert_same(g(np.array([0.0, 0.0, 3.0])), np.array([0.0, 0.0, 0.0]))
    # Second derivative with two zeros: d2/dx0dx1 prod = x2.
    h = backend(ft.hessian(lambda x: fnp.prod(x)))(np.array([0.0, 0.0, 3.0]))
    _assert_same(h, np.array([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    x = np.array([[0.0, 2.0, -1.0], [0.0, 0.0, 1.5]])
    check_grads(backend.jit(lambda x: fnp.prod(x, axis=1)), (x,), order=2)
    check_grads(backend.jit(lambda x: lax.cumprod(x, axis=1)), (x,), order=2)
    check_grads(backend.jit(lambda x: lax.cumprod(x, axis=1, reverse=True)), (x,), order=2)
    _assert_same(backend(ft.grad(lambda x: fnp.sum(fnp.cumprod(x))))(np.array([2.0, 0.0, 3.0])),
                 np.array([1.0, 2.0 + 6.0, 0.0]))


def test_cummax_gradient_goes_to_running_maximum(backend):
    x = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    jac = backend(ft.jacfwd(lambda x: lax.cummax(x)))(x)
    expected = np.zeros((5, 5))
    for i, src in enumerate([0, 1, 1, 3, 3]):
        expected[i, src] = 1.0
    _assert_same(jac, expected)
    _assert_same(backend(ft.jacrev(lambda x: lax.cummax(x)))(x), expected)
    jac_rev = backend(ft.jacfwd(lambda x: lax.cummin(x, reverse=True)))(x)
    expected = np.zeros((5, 5))
    for i, src in enumerate([0, 2, 2, 4, 4]):
        expected[i, src] = 1.0
    _assert_same(jac_rev, expected)


def test_cumlogsumexp_is_stable(backend):
    x = np.array([-1000.0, 0.0, 1000.0, 999.0])
    y = backend(lambda x: lax.cumlogsumexp(x))(x)
    _assert_same(y, np.logaddexp.accumulate(x))
    g = backend(ft.grad(lambda x: fnp.sum(lax.cumlogsumexp(x))))(x)
    assert np.all(np.isfinite(g))
    check_grads(backend.jit(lambda x: lax.cumlogsumexp(x)),
                (np.array([-30.0, 0.5, 20.0, 19.0]),), order=2)


def test_grad_of_cumsum_is_reverse_cumsum(backend):
    x = _rand((4,))
    w = _rand((4,), 1)
    _assert_same(backend(ft.grad(lambda x: fnp.sum(w * lax.cumsum(x))))(x),
                 np.cumsum(w[::-1])[::-1])
    closed = ft.make_jaxpr(ft.grad(lambda x: fnp.sum(w * lax.cumsum(x))))(x)
    assert any(e.primitive.name == "cumsum" and e.params["reverse"] for e in closed.eqns)


# ---------------------------------------------------------------------------------------------
# vmap against a loop

def _vmap_matches(backend, f, x, in_axis):
    out = backend(ft.vmap(f, in_axes=in_axis))(x)
    moved = np.moveaxis(x, in_axis, 0)
    expected = np.stack([np.asarray(f(xi)) for xi in moved])
    _assert_same(out, expected, rtol=1e-6)
    typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f, in_axes=in_axis))(x))


@pytest.mark.parametrize("f", [
    lambda x: fnp.sum(x, axis=0),
    lambda x: fnp.prod(x, axis=1, keepdims=True),
    lambda x: fnp.max(x, axis=-1),
    lambda x: fnp.var(x),
    lambda x: fnp.argmax(x, axis=0),
    lambda x: fnp.argmin(x),
    lambda x: fnp.all(x > 0, axis=1),
    lambda x: lax.reduce_xor(x > 0, (0,)),
    lambda x: fnp.median(x, axis=1),
    lambda x: fnp.quantile(x, np.array([0.2, 0.7]), axis=0),
    lambda x: fnp.cumsum(x, axis=1),
    lambda x: lax.cumprod(x, axis=0, reverse=True),
    lambda x: lax.cummax(x, axis=1),
    lambda x: lax.cumlogsumexp(x, axis=0),
    lambda x: ft.grad(lambda y: fnp.sum(lax.cumprod(y, axis=1)))(x),
    lambda x: ft.grad(lambda y: fnp.max(y))(x),
], ids=lambda f: f.__code__.co_firstlineno)
@pytest.mark.parametrize("in_axis", [0, 1, 2])
def test_vmap_matches_loop(backend, f, in_axis):
    x = _rand((3, 4, 5), seed=in_axis)
    _vmap_matches(backend, f, x, in_axis)


def test_vmap_with_unbatched_where_and_batched_weights(backend):
    x = _rand((4, 3))
    w = np.abs(_rand((5, 3), 2))
    out = backend(ft.vmap(lambda w: fnp.average(x, axis=1, weights=w), in_axes=0))(w)
    _assert_same(out, np.stack([np.average(x, axis=1, weights=wi) for wi in w]))
    mask = _rand((5, 4, 3), 3) > 0
    out = backend(ft.vmap(lambda m: fnp.sum(x, axis=0, where=m)))(mask)
    _assert_same(out, np.stack([np.sum(x, axis=0, where=m) for m in mask]))


# ---------------------------------------------------------------------------------------------
# Errors name the function, the axis or shapes, and the user's line

def test_bad_axis_errors():
    x = np.ones((2, 3))
    for name in ("sum", "mean", "var", "max", "argmax", "cumsum", "median", "all"):
        with pytest.raises(np.exceptions.AxisError,
                           match=rf"{name}: axis 2 is out of bounds.*dimension 2"
                                 rf"[\s\S]*test_reductions.py"):
            getattr(fnp, name)(x, axis=2)
    with pytest.raises(ValueError, match=r"sum: duplicate value in 'axis'[\s\S]*test_reduct"):
        fnp.sum(x, axis=(0, -2))
    with pytest.raises(TypeError, match=r"argmax: axis must be None or an int"):
        fnp.argmax(x, axis=(0, 1))
    with pytest.raises(ValueError, match=r"reduce_sum: axis 5 is out of bounds.*rank 2[\s\S]*"
                                         r"test_reductions.py"):
        lax.reduce_sum(x, (5,))
    with pytest.raises(ValueError, match=r"cumsum: axis -3 is out of bounds[\s\S]*"
                                         r"test_reductions.py"):
        lax.cumsum(x, axis=-3)
    with pytest.raises(ValueError, match=r"cumsum: axis -3 is out of bounds"):
        ft.make_jaxpr(lambda x: lax.cumsum(x, axis=-3))(x)


def test_dtype_and_empty_errors():
    with pytest.raises(TypeError, match=r"reduce_and: requires boolean or integer.*float64"
                                        r"[\s\S]*test_reductions.py"):
        lax.reduce_and(np.ones(3), (0,))
    with pytest.raises(TypeError, match=r"reduce_or: requires boolean or integer"):
        ft.make_jaxpr(lambda x: lax.reduce_or(x, (0,)))(np.ones(3))
    with pytest.raises(TypeError, match=r"cumlogsumexp: requires a real floating-point"):
        lax.cumlogsumexp(np.arange(3), 0)
    with pytest.raises(ValueError, match=r"argmax: cannot take the argmax over the empty axis"
                                         r"[\s\S]*test_reductions.py"):
        lax.argmax(np.zeros((2, 0)), 1, np.int32)
    with pytest.raises(ValueError, match=r"argmax: attempt to get argmax of an empty"):
        fnp.argmax(np.zeros((0,)))
    with pytest.raises(ValueError, match=r"max: reduction operation 'maximum' does not have an "
                                         r"identity[\s\S]*test_reductions.py"):
        fnp.max(np.ones(3), where=np.array([True, False, True]))
    with pytest.raises(TypeError, match=r"sum: out= is not supported"):
        fnp.sum(np.ones(3), out=np.zeros(()))
    with pytest.raises(ValueError, match=r"quantile: method 'weibull' is not supported"):
        fnp.quantile(np.ones(3), 0.5, method="weibull")
