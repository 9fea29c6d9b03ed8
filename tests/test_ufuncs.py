"""Tests for functrax.numpy's ufuncs (functrax/numpy/ufuncs.py): values and dtypes against
numpy over generated shapes, dtypes and values, eagerly, through jaxprs and under ``jit`` on every
back end (the ``backend`` fixture of conftest.py); derivatives; batching; numpy's special semantics
(floor division signs, rounding, clip, nan_to_num, ...)."""

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import functrax as ft
import functrax.numpy as fnp
import functrax.numpy.ufuncs as ufuncs
from functrax.core import eval_jaxpr, typecheck_jaxpr
from functrax.test_util import check_grads

THIS_FILE = "test_ufuncs.py"

F32, F64, I32, I64, BOOL = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32),
                            np.dtype(np.int64), np.dtype(np.bool_))
FLOATS = (F32, F64)
NUMERIC = (F32, F64, I32, I64)
ALL = (F32, F64, I32, I64, BOOL)


def _away(lo, hi):
    return lambda u: np.where(u >= 0, u + 0.25, u - 0.25).astype(u.dtype)


# name -> (domain (lo, hi), dtypes to test, differentiable, optional transform of samples).
# Float functions turn integers and booleans into float64 (numpy agrees for int32/int64).
UNARY = {
    "exp": ((-3, 3), ALL, True), "exp2": ((-3, 3), ALL, True), "expm1": ((-3, 3), ALL, True),
    "log": ((0.2, 6), NUMERIC, True), "log2": ((0.2, 6), NUMERIC, True),
    "log10": ((0.2, 6), NUMERIC, True), "log1p": ((-0.8, 5), ALL, True),
    "sqrt": ((0.2, 6), ALL, True), "cbrt": ((-5, 5), NUMERIC, True, _away(-5, 5)),
    "sin": ((-4, 4), ALL, True), "cos": ((-4, 4), ALL, True), "tan": ((-1.2, 1.2), ALL, True),
    "arcsin": ((-0.9, 0.9), FLOATS, True), "arccos": ((-0.9, 0.9), FLOATS, True),
    "arctan": ((-4, 4), NUMERIC, True), "sinh": ((-3, 3), NUMERIC, True),
    "cosh": ((-3, 3), NUMERIC, True), "tanh": ((-3, 3), ALL, True),
    "arcsinh": ((-4, 4), NUMERIC, True), "arccosh": ((1.2, 6), NUMERIC, True),
    "arctanh": ((-0.8, 0.8), FLOATS, True), "deg2rad": ((-200, 200), NUMERIC, True),
    "rad2deg": ((-4, 4), NUMERIC, True), "degrees": ((-4, 4), NUMERIC, True),
    "radians": ((-200, 200), NUMERIC, True), "sinc": ((-3, 3), FLOATS, True),
    "reciprocal": ((-4, 4), FLOATS, True, _away(-4, 4)),
    "negative": ((-5, 5), NUMERIC, True), "positive": ((-5, 5), NUMERIC, True),
    "abs": ((-5, 5), ALL, True, _away(-5, 5)), "absolute": ((-5, 5), ALL, True, _away(-5, 5)),
    "sign": ((-5, 5), NUMERIC, True), "square": ((-4, 4), ALL, True),
    "floor": ((-5, 5), ALL, True), "ceil": ((-5, 5), ALL, True), "trunc": ((-5, 5), ALL, True),
    "fix": ((-5, 5), ALL, True), "rint": ((-5, 5), NUMERIC, True),
    "round": ((-5, 5), NUMERIC, True), "around": ((-5, 5), NUMERIC, True),
    "isnan": ((-5, 5), ALL, False), "isinf": ((-5, 5), ALL, False),
    "isfinite": ((-5, 5), ALL, False), "signbit": ((-5, 5), ALL, False),
    "logical_not": ((-2, 2), ALL, False), "invert": ((-5, 5), (I32, I64, BOOL), False),
    "bitwise_not": ((-5, 5), (I32, I64, BOOL), False),
    "nan_to_num": ((-5, 5), ALL, True), "angle": ((-5, 5), FLOATS, True),
    "real": ((-5, 5), ALL, True), "imag": ((-5, 5), ALL, False),
    "conj": ((-5, 5), NUMERIC, True), "conjugate": ((-5, 5), NUMERIC, True),
}
# Functions whose integer results numpy and functrax both keep integral, and whose boolean
# inputs numpy treats as JAX does (others: functrax makes float64 where numpy picks float16).
FLOAT_FUNCS = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "cbrt", "sin",
               "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "arcsinh",
               "arccosh", "arctanh", "deg2rad", "rad2deg", "degrees", "radians", "sinc",
               "reciprocal", "rint"}

SHAPES = st.sampled_from([(), (1,), (5,), (2, 3), (2, 1, 3)])


def _elements(dtype, lo, hi):
    if dtype == BOOL:
        return st.booleans()
    if dtype.kind in "iu":
        return st.integers(math.ceil(lo), math.floor(hi))
    lo, hi = float(np.asarray(lo, dtype)), float(np.asarray(hi, dtype))
    return st.floats(lo, hi, width=dtype.itemsize * 8)


def _reference(name, x):
    ref = getattr(np, name)
    if name in FLOAT_FUNCS and x.dtype == BOOL:
        return ref(x.astype(np.float64))
    return ref(x)


def _tol(dtype):
    return dict(rtol=5e-6, atol=5e-6) if dtype == F32 else dict(rtol=1e-11, atol=1e-12)


def _via_jaxpr(f, *args):
    closed = ft.make_jaxpr(f)(*args)
    typecheck_jaxpr(closed)
    return eval_jaxpr(closed.jaxpr, closed.consts, *args)[0]


def _traced(backend, f, *args):
    """f's first result computed on tracers: through make_jaxpr and eval_jaxpr eagerly, under
    jit on a jit back end (f's operators then act on jit's tracers)."""
    if backend.is_jit:
        return backend(f)(*args)
    return _via_jaxpr(f, *args)


def _check_same(out, expected, dtype):
    out, expected = np.asarray(out), np.asarray(expected)
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(out, expected, equal_nan=True, **_tol(dtype))
    else:
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", list(UNARY))
@settings(max_examples=10)
@given(shape=SHAPES, data=st.data())
def test_unary_matches_numpy(backend, name, shape, data):
    domain, dts = UNARY[name][:2]
    dtype = data.draw(st.sampled_from(dts))
    if dtype.kind in "iu" and math.ceil(domain[0]) > math.floor(domain[1]):
        return
    x = data.draw(hnp.arrays(dtype, shape, elements=_elements(dtype, *domain)))
    if len(UNARY[name]) > 3 and dtype.kind == "f":
        x = UNARY[name][3](x)
    if dtype.kind in "iu" and name in ("cbrt", "reciprocal", "abs", "absolute"):
        x = np.where(x == 0, 1, x).astype(dtype)
    f = getattr(fnp, name)
    expected = _reference(name, x)
    out = backend.once(f)(x)
    _check_same(out, expected, dtype)
    if name not in ("positive", "real", "conj", "conjugate") or dtype != BOOL:
        assert isinstance(out, ft.Array)
    if not backend.is_jit:  # under jit the program is staged already
        _check_same(_via_jaxpr(f, x), expected, dtype)


@pytest.mark.parametrize("name", [n for n, v in UNARY.items() if v[2]])
def test_unary_grads(backend, name):
    (lo, hi), _, _ = UNARY[name][:3]
    x = np.random.default_rng(0).uniform(lo, hi, (3,))
    if len(UNARY[name]) > 3:
        x = UNARY[name][3](x)
    if name in ("floor", "ceil", "trunc", "fix", "rint", "round", "around"):
        x = np.floor(x) + 0.3  # away from the jumps
    f = backend.jit(getattr(fnp, name))
    check_grads(f, (x,), order=2, modes=("fwd", "rev"))
    typecheck_jaxpr(ft.make_jaxpr(ft.grad(lambda v: f(v).sum()))(x))


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_vmap_matches_loop(backend, name):
    (lo, hi), dts = UNARY[name][:2]
    x = np.random.default_rng(1).uniform(lo, hi, (3, 4))
    if len(UNARY[name]) > 3:
        x = UNARY[name][3](x)
    if F64 not in dts:
        x = x.astype(dts[0])
    f = getattr(fnp, name)
    for axis in (0, 1):
        out = backend(ft.vmap(f, in_axes=axis))(x)
        expected = np.stack([f(np.take(x, i, axis=axis)) for i in range(x.shape[axis])])
        _check_same(out, expected, F64)
    # Under jit: the batching rule of the pjit call.
    typecheck_jaxpr(ft.make_jaxpr(ft.vmap(backend.jit(f), in_axes=1))(x))


# ---------------------------------------------------------------------------------------------
# Binary functions

NEAR_POS = (0.5, 4)
# name -> (x domain, y domain, dtype pairs, differentiable)
FLOAT_PAIRS = ((F32, F32), (F64, F64), (F32, F64), (I32, F32), (I64, F64), (F32, float),
               (F64, int), (I32, float))
INT_PAIRS = ((I32, I32), (I64, I64), (I32, I64), (I32, int))
ARITH_PAIRS = FLOAT_PAIRS + INT_PAIRS
LOGIC_PAIRS = ((BOOL, BOOL), (I32, I32), (F64, F64), (BOOL, I64), (F32, int))
BINARY = {
    "add": ((-5, 5), (-5, 5), ARITH_PAIRS + ((BOOL, BOOL),), True),
    "subtract": ((-5, 5), (-5, 5), ARITH_PAIRS, True),
    "multiply": ((-5, 5), (-5, 5), ARITH_PAIRS + ((BOOL, BOOL),), True),
    "divide": ((-5, 5), NEAR_POS, ARITH_PAIRS, True),
    "true_divide": ((-5, 5), (-4, -0.5), ARITH_PAIRS, True),
    "floor_divide": ((-9, 9), NEAR_POS, ARITH_PAIRS, False),
    "remainder": ((-9, 9), (-4, -0.5), ARITH_PAIRS, False),
    "mod": ((-9, 9), NEAR_POS, ARITH_PAIRS, False),
    "fmod": ((-9, 9), (-4, -0.5), ARITH_PAIRS, False),
    "power": ((0.5, 3), (-2, 2), FLOAT_PAIRS, True),
    "float_power": ((0.5, 3), (-2, 2), ARITH_PAIRS, True),
    "arctan2": ((-3, 3), (-3, 3), FLOAT_PAIRS + ((I32, I32),), True),
    "hypot": ((-3, 3), (-3, 3), FLOAT_PAIRS + ((I32, I32),), True),
    "logaddexp": ((-3, 3), (-3, 3), FLOAT_PAIRS, True),
    "logaddexp2": ((-3, 3), (-3, 3), FLOAT_PAIRS, True),
    "maximum": ((-5, 5), (-5, 5), ARITH_PAIRS, True),
    "minimum": ((-5, 5), (-5, 5), ARITH_PAIRS, True),
    "fmax": ((-5, 5), (-5, 5), ARITH_PAIRS, True),
    "fmin": ((-5, 5), (-5, 5), ARITH_PAIRS, True),
    "copysign": ((-5, 5), (-5, 5), FLOAT_PAIRS, True),
    "heaviside": ((-2, 2), (-1, 1), FLOAT_PAIRS, True),
    "nextafter": ((-5, 5), (-5, 5), FLOAT_PAIRS, False),
    "equal": ((-2, 2), (-2, 2), ARITH_PAIRS + ((BOOL, BOOL),), False),
    "not_equal": ((-2, 2), (-2, 2), ARITH_PAIRS, False),
    "less": ((-2, 2), (-2, 2), ARITH_PAIRS, False),
    "less_equal": ((-2, 2), (-2, 2), ARITH_PAIRS, False),
    "greater": ((-2, 2), (-2, 2), ARITH_PAIRS, False),
    "greater_equal": ((-2, 2), (-2, 2), ARITH_PAIRS, False),
    "logical_and": ((-2, 2), (-2, 2), LOGIC_PAIRS, False),
    "logical_or": ((-2, 2), (-2, 2), LOGIC_PAIRS, False),
    "logical_xor": ((-2, 2), (-2, 2), LOGIC_PAIRS, False),
    "bitwise_and": ((-50, 50), (-50, 50), INT_PAIRS + ((BOOL, BOOL),), False),
    "bitwise_or": ((-50, 50), (-50, 50), INT_PAIRS + ((BOOL, BOOL),), False),
    "bitwise_xor": ((-50, 50), (-50, 50), INT_PAIRS + ((BOOL, BOOL),), False),
    "left_shift": ((-50, 50), (0, 20), INT_PAIRS, False),
    "right_shift": ((-5000, 5000), (0, 20), INT_PAIRS, False),
}

BROADCAST_PAIRS = st.sampled_from([((), ()), ((4,), (4,)), ((2, 3), (3,)), ((3,), (2, 3)),
                                   ((2, 1), (1, 3)), ((), (2, 3)), ((2, 3), ()),
                                   ((2, 1, 2), (3, 1))])


def _draw_operand(data, kind, shape, domain):
    if kind is float:
        return data.draw(st.floats(*domain))
    if kind is int:
        return data.draw(st.integers(math.ceil(domain[0]), math.floor(domain[1])))
    return data.draw(hnp.arrays(kind, shape, elements=_elements(kind, *domain)))


@pytest.mark.parametrize("name", list(BINARY))
@settings(max_examples=15)
@given(shapes=BROADCAST_PAIRS, data=st.data())
def test_binary_matches_numpy(backend, name, shapes, data):
    xd, yd, pairs = BINARY[name][:3]
    kx, ky = data.draw(st.sampled_from(pairs))
    if data.draw(st.booleans()):
        (kx, ky), (xd, yd), shapes = (ky, kx), (yd, xd), shapes[::-1]
        if name in ("divide", "true_divide", "floor_divide", "remainder", "mod", "fmod",
                    "power", "float_power", "left_shift", "right_shift"):
            (kx, ky), (xd, yd), shapes = (ky, kx), (yd, xd), shapes[::-1]
    x = _draw_operand(data, kx, shapes[0], xd)
    y = _draw_operand(data, ky, shapes[1], yd)
    if name in ("floor_divide", "remainder", "mod", "fmod"):
        y = np.where(np.asarray(y) == 0, 3, y).astype(np.asarray(y).dtype) \
            if np.ndim(y) else (y or 3)
    f = getattr(fnp, name)
    expected = getattr(np, name)(x, y)
    # Python scalars are jit arguments too (weak-typed inputs).
    out = backend.once(f)(x, y)
    dtype = np.asarray(expected).dtype
    _check_same(out, expected, F32 if F32 in (kx, ky) else F64)
    if not backend.is_jit:  # under jit the program is staged already
        _check_same(_via_jaxpr(lambda a: f(a, y), x) if not np.ndim(x) and
                    not isinstance(x, np.ndarray) else _via_jaxpr(f, x, y), expected,
                    F32 if F32 in (kx, ky) else F64)
    assert np.asarray(out).dtype == dtype


@pytest.mark.parametrize("name", [n for n, v in BINARY.items() if v[3]] + [
    "floor_divide", "remainder", "fmod"])
@pytest.mark.parametrize("shapes", [((3,), (3,)), ((2, 3), (3,))])
def test_binary_grads(backend, name, shapes):
    xd, yd = BINARY[name][:2]
    rng = np.random.default_rng(2)
    x, y = rng.uniform(*xd, shapes[0]), rng.uniform(*yd, shapes[1])
    if name in ("floor_divide", "remainder", "fmod"):
        # Keep x / y away from integers, where these jump.
        y = rng.uniform(1.2, 1.3, shapes[1])
        x = (np.floor(rng.uniform(-5, 5, shapes[0])) + 0.5) * 1.25
    f = getattr(fnp, name)
    jf = backend.jit(f)
    check_grads(jf, (x, y), order=2, modes=("fwd", "rev"))
    gx, gy = backend(ft.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(x, y)
    assert gx.shape == x.shape and gy.shape == y.shape
    typecheck_jaxpr(ft.make_jaxpr(ft.grad(lambda a, b: jf(a, b).sum(), argnums=(0, 1)))(x, y))


@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("in_axes,xs,ys", [
    ((0, 0), (4, 3), (4, 3)), ((0, None), (4, 3), (3,)), ((None, 0), (2, 3), (4, 3)),
    ((1, 0), (3, 4), (4, 3)), ((0, 1), (4, 2, 3), (2, 4, 1))])
def test_binary_vmap_matches_loop(backend, name, in_axes, xs, ys):
    xd, yd, pairs = BINARY[name][:3]
    kx, ky = pairs[0]
    rng = np.random.default_rng(3)
    x, y = rng.uniform(*xd, xs), rng.uniform(*yd, ys)
    if kx.kind in "iub":
        x, y = np.round(x).astype(kx), np.round(y).astype(ky)
    if name in ("floor_divide", "remainder", "mod", "fmod"):
        y = np.where(y == 0, 3, y).astype(y.dtype)
    f = getattr(fnp, name)
    out = backend(ft.vmap(f, in_axes=in_axes))(x, y)
    size = xs[in_axes[0]] if in_axes[0] is not None else ys[in_axes[1]]
    pick = lambda a, ax, i: a if ax is None else np.take(a, i, axis=ax)  # noqa: E731
    expected = np.stack([f(pick(x, in_axes[0], i), pick(y, in_axes[1], i))
                         for i in range(size)])
    _check_same(out, expected, F64)


# ---------------------------------------------------------------------------------------------
# Dtype promotion and the eager fast path


def test_promotion_follows_numpy(backend):
    f32 = np.ones(3, np.float32)
    i32 = np.ones(3, np.int32)
    i8 = np.ones(3, np.int8)
    cases = [(fnp.multiply, f32, 2.0), (fnp.add, i32, f32), (fnp.add, i32, 2.5),
             (fnp.add, i32, 2), (fnp.divide, i32, i32), (fnp.divide, i32, 2),
             (fnp.divide, f32, i8), (fnp.add, f32, i8), (fnp.maximum, i32, 0.5),
             (fnp.power, f32, 2), (fnp.power, f32, np.int64(2)), (fnp.power, i32, 2),
             (fnp.arctan2, f32, 1.0), (fnp.hypot, i32, f32), (fnp.floor_divide, f32, 2),
             (fnp.remainder, i32, 3), (fnp.float_power, f32, f32), (fnp.logaddexp, f32, 0.0),
             (fnp.maximum, i32, 0.5), (fnp.copysign, f32, -1.0), (fnp.sin, i32, None),
             (fnp.sin, f32, None), (fnp.round, f32, None), (fnp.rint, i32, None),
             (fnp.floor, i32, None), (fnp.sqrt, np.int64(4), None), (fnp.exp, 1, None),
             (fnp.abs, np.array([True]), None), (fnp.square, np.array([True]), None)]
    for f, a, b in cases:
        args = (a,) if b is None else (a, b)
        expected = getattr(np, f.__name__)(*args)
        got = backend(f)(*args)
        assert np.asarray(got).dtype == np.asarray(expected).dtype, (f.__name__, args)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        if not backend.is_jit:  # under jit the program is staged already
            staged = _via_jaxpr(lambda *v: f(*v), *args)
            assert np.asarray(staged).dtype == np.asarray(expected).dtype, (f.__name__, args)
        # The scalar operand closed over (a constant of the program) gives the same type.
        if b is not None:
            closed = backend(lambda v: f(v, b))(a)
            assert np.asarray(closed).dtype == np.asarray(expected).dtype, (f.__name__, args)


def test_fast_path_is_a_single_equation():
    x, y = np.ones((8, 8)), np.ones((8, 8), np.float32)
    i = np.ones((8, 8), np.int32)
    for f, args in ((fnp.add, (x, y)), (fnp.add, (i, y)), (fnp.multiply, (y, 2.0)),
                    (fnp.subtract, (x, i)), (fnp.maximum, (x, y)), (fnp.less, (x, i)),
                    (fnp.sin, (x,)), (fnp.exp, (y,)), (fnp.true_divide, (x, y)),
                    (fnp.bitwise_xor, (i, i))):
        jaxpr = ft.make_jaxpr(f)(*args)
        assert len(jaxpr.eqns) == 1, (f.__name__, jaxpr)
    # Integer input to a float function: one conversion, then the function.
    assert [e.primitive.name for e in ft.make_jaxpr(fnp.sin)(i).eqns] == \
        ["convert_element_type", "sin"]


def test_lists_and_scalars_are_accepted(backend):
    # Lists are pytrees of scalars as jit arguments: closed over, they are the constants the
    # function sees.
    np.testing.assert_array_equal(backend(lambda: fnp.add([1, 2], [3, 4]))(), [4, 6])
    np.testing.assert_allclose(backend(lambda: fnp.sin([0.0, 1.0]))(), np.sin([0.0, 1.0]))
    three = backend(fnp.add)(1, 2)
    assert three == 3 and three.dtype == np.int64
    assert backend(fnp.multiply)(2.0, 3) == 6.0
    out = backend(lambda x: fnp.add(x, [1.0, 2.0]))(np.ones(2, np.float32))
    expected = np.add(np.ones(2, np.float32), [1.0, 2.0])
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)
    if not backend.is_jit:  # under jit the program is staged already
        out = ft.make_jaxpr(lambda x: fnp.add(x, [1.0, 2.0]))(np.ones(2, np.float32))
        typecheck_jaxpr(out)


# ---------------------------------------------------------------------------------------------
# numpy's semantics, function by function


def test_floor_divide_and_remainder_sign_rules(backend):
    a = np.array([-7, 7, -7, 7, 0, 6, -6])
    b = np.array([2, 2, -2, -2, 3, -3, 3])
    floor_divide, remainder = backend(fnp.floor_divide), backend(fnp.remainder)
    mod, fmod, divmod_ = backend(fnp.mod), backend(fnp.fmod), backend(fnp.divmod)
    for dt in (np.int32, np.int64, np.float32, np.float64):
        x, y = a.astype(dt), b.astype(dt)
        np.testing.assert_array_equal(floor_divide(x, y), np.floor_divide(x, y))
        np.testing.assert_array_equal(remainder(x, y), np.remainder(x, y))
        np.testing.assert_array_equal(mod(x, y), np.mod(x, y))
        np.testing.assert_array_equal(fmod(x, y), np.fmod(x, y))
        q, r = divmod_(x, y)
        np.testing.assert_array_equal(q, np.floor_divide(x, y))
        np.testing.assert_array_equal(r, np.remainder(x, y))
    x = np.array([5.5, -5.5, 1e-300, -0.0, 3.0, np.inf, 2.0])
    y = np.array([-2.0, 2.0, -1.0, 3.0, -3.0, 2.0, np.inf])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(floor_divide(x, y), np.floor_divide(x, y))
        np.testing.assert_array_equal(remainder(x, y), np.remainder(x, y))
        np.testing.assert_array_equal(np.signbit(remainder(x, y)),
                                      np.signbit(np.remainder(x, y)))
        np.testing.assert_array_equal(
            backend(lambda v: fnp.floor_divide(v, 0.0))(np.array([1.0, -1.0, 0.0])),
            np.floor_divide(np.array([1.0, -1.0, 0.0]), 0.0))
    # Unsigned integers and uint wrap-around.
    u = np.array([7, 200, 0], np.uint8)
    np.testing.assert_array_equal(floor_divide(u, np.uint8(3)), u // np.uint8(3))
    np.testing.assert_array_equal(remainder(u, np.uint8(3)), u % np.uint8(3))
    # Gradients: d/dx (x % y) = 1 and d/dy = -floor(x / y).
    gx, gy = backend(ft.grad(lambda a, b: fnp.remainder(a, b), argnums=(0, 1)))(-7.5, 2.0)
    assert (gx, gy) == (1.0, 4.0)
    assert backend(ft.grad(lambda a: fnp.floor_divide(a, 2.0)))(3.3) == 0.0


def test_divide_of_integers_is_float64(backend):
    out = backend(fnp.divide)(np.array([1, 2, 3], np.int32), np.array([2, 2, 2], np.int32))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.5, 1.0, 1.5])
    assert backend(fnp.true_divide)(7, 2) == 3.5


def test_round_with_decimals(backend):
    x = np.array([1.25, 2.675, -0.5, 1.5, 2.5, 123.456, -987.65])
    for d in (-2, -1, 0, 1, 2, 3):
        np.testing.assert_array_equal(backend(lambda v: fnp.round(v, d))(x), np.round(x, d))
        np.testing.assert_array_equal(backend(lambda v: fnp.around(v, d))(x.astype(np.float32)),
                                      np.around(x.astype(np.float32), d))
        if not backend.is_jit:  # under jit the program is staged already
            np.testing.assert_array_equal(_via_jaxpr(lambda v: fnp.round(v, d), x),
                                          np.round(x, d))
    i = np.array([25, 35, -25, 149, 151], np.int64)
    for d in (-2, -1, 0, 2):
        out = backend(lambda v: fnp.round(v, d))(i)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, np.round(i, d))
    z = np.array([1.25 + 2.675j])
    np.testing.assert_array_equal(backend(lambda v: fnp.round(v, 1))(z), np.round(z, 1))
    np.testing.assert_array_equal(backend(fnp.rint)(x), np.rint(x))
    assert backend(ft.grad(lambda v: fnp.round(v, 2)))(1.2345) == 0.0


def test_clip_forms(backend):
    x = np.arange(-3.0, 4.0)
    clip = lambda *args, **kw: backend(lambda v: fnp.clip(v, *args, **kw))(x)  # noqa: E731
    np.testing.assert_array_equal(clip(-1, 2), np.clip(x, -1, 2))
    np.testing.assert_array_equal(clip(None, 2), np.clip(x, None, 2))
    np.testing.assert_array_equal(clip(-1), np.maximum(x, -1))
    np.testing.assert_array_equal(clip(min=-1, max=2), np.clip(x, -1, 2))
    np.testing.assert_array_equal(clip(max=0), np.minimum(x, 0))
    np.testing.assert_array_equal(backend(fnp.clip)(x, np.array([0.0] * 7), 1.5),
                                  np.clip(x, 0, 1.5))
    np.testing.assert_array_equal(clip(-1, 2), _traced(backend, lambda v: v.clip(-1, 2), x))
    np.testing.assert_array_equal(_traced(backend, lambda v: v.clip(max=1.0), x),
                                  np.minimum(x, 1))
    assert backend(lambda v: fnp.clip(v, 1, 3))(np.arange(5)).dtype == np.int64
    assert backend(lambda v: fnp.clip(v, 0, 0.5))(np.ones(2, np.float32)).dtype == np.float32
    g = backend(ft.grad(lambda v: fnp.clip(v, -1.0, 1.0).sum()))(
        np.array([-2.0, -1.0, 0.5, 3.0]))
    np.testing.assert_array_equal(g, [0, 0.5, 1, 0])  # JAX's split at ties


def test_clip_rejects_min_given_twice():
    with pytest.raises(TypeError, match="clip"):
        fnp.clip(np.arange(-3.0, 4.0), 0, min=1)


def test_nan_to_num(backend):
    nan_to_num = backend(fnp.nan_to_num)
    for dt in (np.float32, np.float64):
        x = np.array([np.nan, np.inf, -np.inf, 1.5, -0.0], dt)
        np.testing.assert_array_equal(nan_to_num(x), np.nan_to_num(x))
        np.testing.assert_array_equal(
            backend(lambda v: fnp.nan_to_num(v, nan=-1.0, posinf=9.0, neginf=-9.0))(x),
            np.nan_to_num(x, nan=-1.0, posinf=9.0, neginf=-9.0))
        assert nan_to_num(x).dtype == dt
        if not backend.is_jit:  # under jit the program is staged already
            np.testing.assert_array_equal(_via_jaxpr(fnp.nan_to_num, x), np.nan_to_num(x))
    z = np.array([complex(np.nan, np.inf), complex(1, -np.inf)])
    np.testing.assert_array_equal(nan_to_num(z), np.nan_to_num(z))
    i = np.arange(3)
    np.testing.assert_array_equal(nan_to_num(i), i)
    g = backend(ft.grad(lambda v: fnp.nan_to_num(v).sum()))(np.array([1.0, np.inf, np.nan]))
    np.testing.assert_array_equal(g, [1, 0, 0])


def test_power_forms(backend):
    i = np.array([0, 1, 2, 3, 7], np.int64)
    e = np.array([3, 0, 10, 5, 2], np.int64)
    power = backend(fnp.power)
    out = power(i, e)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.power(i, e))
    if not backend.is_jit:  # under jit the program is staged already
        np.testing.assert_array_equal(_via_jaxpr(fnp.power, i, e), np.power(i, e))
    np.testing.assert_array_equal(backend(ft.vmap(fnp.power))(i, e), np.power(i, e))
    u = np.array([3, 5], np.uint32)
    np.testing.assert_array_equal(power(u, np.array([21, 3], np.uint32)),
                                  np.power(u, np.array([21, 3], np.uint32)))  # wraps
    assert power(2, 10) == 1024
    np.testing.assert_array_equal(backend(lambda v: fnp.power(v, 3))(i), i ** 3)
    np.testing.assert_allclose(power(2.0, np.array([0.5, -1.0])), [2 ** 0.5, 0.5])
    x = np.array([0.5, 1.5, 2.0])
    check_grads(backend.jit(lambda v: fnp.power(v, 3)), (x,), order=2)
    check_grads(backend.jit(lambda v: fnp.power(v, -2)), (x,), order=2)
    np.testing.assert_allclose(backend(ft.grad(lambda v: fnp.power(v, 2.5)))(2.0),
                               2.5 * 2 ** 1.5)
    assert backend(fnp.float_power)(np.float32(2), np.float32(3)).dtype == np.float64
    # Operators on traced values route here too.
    np.testing.assert_array_equal(_traced(backend, lambda v: v ** 2, i), i ** 2)


def test_integer_power_rejects_negative_exponents():
    # The array form checks the exponent's values, so it is eager only (as in numpy).
    i = np.array([0, 1, 2, 3, 7], np.int64)
    with pytest.raises(ValueError, match="negative"):
        fnp.power(i, -1)
    with pytest.raises(ValueError, match="negative"):
        fnp.power(i, np.array([1, 2, -1, 0, 0]))


def test_sinc_at_zero_and_derivatives(backend):
    x = np.array([0.0, 0.5, -1.5, 1e-9])
    np.testing.assert_allclose(backend(fnp.sinc)(x), np.sinc(x), rtol=1e-14)
    assert backend(ft.grad(fnp.sinc))(0.0) == 0.0
    np.testing.assert_allclose(backend(ft.grad(ft.grad(fnp.sinc)))(0.0), -np.pi ** 2 / 3,
                               rtol=1e-12)
    np.testing.assert_allclose(backend(ft.grad(ft.grad(ft.grad(ft.grad(fnp.sinc)))))(0.0),
                               np.pi ** 4 / 5, rtol=1e-12)
    check_grads(backend.jit(fnp.sinc), (np.array([0.3, -0.7]),), order=2)


@np.errstate(invalid="ignore")  # the test's own sums of +inf and -inf
def test_logaddexp_edges(backend):
    x = np.array([-np.inf, np.inf, 0.0, 800.0, -np.inf, 3.0])
    y = np.array([-np.inf, np.inf, 0.0, 800.0, 2.0, np.nan])
    for f in ("logaddexp", "logaddexp2"):
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(backend(getattr(fnp, f))(x, y), getattr(np, f)(x, y))
    g = backend(ft.grad(lambda a, b: fnp.logaddexp(a, b).sum(), argnums=(0, 1)))(x[:5], y[:5])
    np.testing.assert_allclose(g[0], [0.5, 0.5, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(g[1], [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(backend(ft.grad(fnp.logaddexp))(1.0, 2.0), 1 / (1 + np.e))


def test_hypot_copysign_heaviside_signbit(backend):
    big = np.array([1e300, 3e-300, 0.0, np.inf, np.nan, -4.0])
    other = np.array([1e300, 4e-300, 0.0, np.nan, np.inf, 3.0])
    np.testing.assert_allclose(backend(fnp.hypot)(big, other), np.hypot(big, other),
                               rtol=1e-15)
    v = np.array([-0.0, 0.0, -1.0, 2.0, -np.inf, np.inf])
    signbit = backend(fnp.signbit)
    np.testing.assert_array_equal(signbit(v), np.signbit(v))
    np.testing.assert_array_equal(backend(lambda w: fnp.copysign(3.0, w))(v),
                                  np.copysign(3.0, v))
    np.testing.assert_array_equal(np.signbit(backend(lambda w: fnp.copysign(0.0, w))(v)),
                                  np.signbit(v))
    np.testing.assert_array_equal(signbit(np.array([-3, 0, 2])), [True, False, False])
    h = np.array([-1.0, 0.0, 2.0, np.nan])
    np.testing.assert_array_equal(backend(lambda w: fnp.heaviside(w, 0.5))(h),
                                  np.heaviside(h, 0.5))
    g = backend(ft.grad(lambda a, b: fnp.copysign(a, b), argnums=(0, 1)))(-2.0, 5.0)
    assert g == (-1.0, 0.0)


def test_fmax_fmin_ignore_nan(backend):
    x = np.array([np.nan, 1.0, np.nan, 3.0, -0.0])
    y = np.array([2.0, np.nan, np.nan, 1.0, 0.0])
    np.testing.assert_array_equal(backend(fnp.fmax)(x, y), np.fmax(x, y))
    np.testing.assert_array_equal(backend(fnp.fmin)(x, y), np.fmin(x, y))
    g = backend(ft.grad(lambda a: fnp.fmax(a, y).sum()))(x)
    np.testing.assert_array_equal(g, [0, 1, 0, 1, 0.5])  # NaN in both: no gradient


def test_classification_and_logic_on_integers(backend):
    i = np.array([-2, 0, 3], np.int32)
    np.testing.assert_array_equal(backend(fnp.isnan)(i), np.isnan(i))
    np.testing.assert_array_equal(backend(fnp.isfinite)(i), np.isfinite(i))
    np.testing.assert_array_equal(backend(fnp.isinf)(i), np.isinf(i))
    np.testing.assert_array_equal(backend(fnp.logical_and)(i, 1), np.logical_and(i, 1))
    np.testing.assert_array_equal(backend(fnp.logical_not)(i), np.logical_not(i))
    z = np.array([1 + 1j, complex(np.inf, 0), complex(0, np.nan)])
    for f in ("isnan", "isinf", "isfinite", "real", "imag", "conj", "angle", "abs", "sign"):
        np.testing.assert_array_equal(backend(getattr(fnp, f))(z), getattr(np, f)(z),
                                      err_msg=f)
    np.testing.assert_allclose(backend(lambda v: fnp.angle(v, deg=True))(z[:1]),
                               np.angle(z[:1], deg=True))


def test_bits_and_shifts(backend):
    s = np.array([-8, 8, -1, 2 ** 30], np.int32)
    u = s.astype(np.uint32)
    for x in (s, u):
        np.testing.assert_array_equal(backend(lambda v: fnp.right_shift(v, 3))(x),
                                      np.right_shift(x, 3))
        np.testing.assert_array_equal(backend(fnp.left_shift)(x, 3), np.left_shift(x, 3))
        np.testing.assert_array_equal(backend(fnp.bitwise_count)(x), np.bitwise_count(x))
        np.testing.assert_array_equal(_traced(backend, lambda v: v >> 2, x), x >> 2)
        np.testing.assert_array_equal(_traced(backend, lambda v: (v << 1) ^ ~v, x),
                                      (x << 1) ^ ~x)
    assert backend(fnp.bitwise_count)(s).dtype == np.uint8


def test_tracer_operators_route_to_ufuncs(backend):
    x = np.array([-7.5, 3.25, 8.0])
    y = np.array([2.0, -1.5, 3.0])
    ops = [lambda a, b: a // b, lambda a, b: a % b, lambda a, b: a ** 2,
           lambda a, b: abs(a), lambda a, b: -a + (+b), lambda a, b: a / b,
           lambda a, b: a.round(1), lambda a, b: a.conj() * b.conjugate()]
    for op in ops:
        np.testing.assert_allclose(_traced(backend, op, x, y), op(x, y))


def test_complex_functions(backend):
    z = np.array([1 + 2j, -3 - 0.5j, 0.25j])
    for f in ("exp", "log", "sin", "cos", "tanh", "sqrt", "square", "negative", "reciprocal",
              "expm1", "log1p", "conj", "real", "imag", "abs", "angle"):
        np.testing.assert_allclose(backend(getattr(fnp, f))(z), getattr(np, f)(z), rtol=1e-12,
                                   err_msg=f)
    np.testing.assert_allclose(backend(fnp.multiply)(z, z), z * z)
    np.testing.assert_allclose(backend(lambda v: fnp.power(v, 2.0))(z), z ** 2.0)
    np.testing.assert_allclose(backend(fnp.float_power)(z, 2), np.float_power(z, 2))


# ---------------------------------------------------------------------------------------------
# Errors


def test_error_messages_name_op_and_user_line():
    cases = [
        (lambda: fnp.add(np.ones(3), np.ones(4)), "add"),
        (lambda: fnp.arctan2(np.ones(3), np.ones((2, 4))), "atan2"),
        (lambda: fnp.bitwise_and(np.ones(2), np.ones(2)), "and"),
        (lambda: fnp.left_shift(np.ones(2), 1), "shift_left"),
        (lambda: fnp.subtract(np.ones(2, bool), np.ones(2, bool)), "sub"),
        (lambda: fnp.floor_divide(np.ones(2, complex), 2.0), "floor_divide"),
        (lambda: fnp.cbrt(np.ones(2, complex)), "cbrt"),
    ]
    for thunk, name in cases:
        with pytest.raises(TypeError, match=name) as info:
            thunk()
        assert THIS_FILE in str(info.value) or name == "floor_divide", str(info.value)
    with pytest.raises(TypeError) as info:
        ft.make_jaxpr(lambda a, b: fnp.multiply(a, b))(np.ones(3), np.ones(4))
    assert "mul" in str(info.value) and "(3,)" in str(info.value) and \
        THIS_FILE in str(info.value)


def test_module_contract():
    assert "np" not in ufuncs.__all__ and "lax" not in ufuncs.__all__
    for name in ufuncs.__all__:
        assert hasattr(fnp, name), name
        assert callable(getattr(ufuncs, name)), name
    assert fnp.abs is ufuncs.absolute and fnp.round is ufuncs.round
    assert doctest.testmod(ufuncs).failed == 0
