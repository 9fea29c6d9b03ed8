"""Tests for the elementwise primitives (functrax.lax.elementwise) and the special functions
(functrax.lax.special): values against numpy/scipy eagerly, through jaxprs and under ``jit`` on
every back end (the ``backend`` fixture of conftest.py), dtype rules, derivatives against finite
differences, batching against loops, and error messages."""

import doctest
import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import functrax as ft
import functrax.lax.elementwise
import functrax.lax.special
from functrax import lax
from functrax.core import eval_jaxpr, typecheck_jaxpr
from functrax.test_util import check_grads

THIS_FILE = "test_elementwise.py"


def _away_from_zero(x):
    t = np.trunc(x)
    return np.where(np.abs(x - t) >= 0.5, t + np.sign(x), t).astype(x.dtype)


def _avoid_zero(lo, hi):
    """Samples map u in [lo, hi] to u pushed away from 0 by 0.2 (keeps sign)."""
    return lambda u: np.where(u >= 0, u + 0.2, u - 0.2).astype(u.dtype)


# name -> (function, numpy/scipy reference, (lo, hi) of the sampled values, optional value
# transform, differentiable)
UNARY = {
    "neg": (lax.neg, np.negative, (-5, 5), None, True),
    "abs": (lax.abs, np.abs, (-5, 5), _avoid_zero(-5, 5), True),
    "sign": (lax.sign, np.sign, (-5, 5), None, False),
    "exp": (lax.exp, np.exp, (-3, 3), None, True),
    "exp2": (lax.exp2, np.exp2, (-3, 3), None, True),
    "log": (lax.log, np.log, (0.1, 5), None, True),
    "expm1": (lax.expm1, np.expm1, (-3, 3), None, True),
    "log1p": (lax.log1p, np.log1p, (-0.8, 4), None, True),
    "sin": (lax.sin, np.sin, (-4, 4), None, True),
    "cos": (lax.cos, np.cos, (-4, 4), None, True),
    "tan": (lax.tan, np.tan, (-1.2, 1.2), None, True),
    "asin": (lax.asin, np.arcsin, (-0.9, 0.9), None, True),
    "acos": (lax.acos, np.arccos, (-0.9, 0.9), None, True),
    "atan": (lax.atan, np.arctan, (-4, 4), None, True),
    "sinh": (lax.sinh, np.sinh, (-3, 3), None, True),
    "cosh": (lax.cosh, np.cosh, (-3, 3), None, True),
    "tanh": (lax.tanh, np.tanh, (-3, 3), None, True),
    "asinh": (lax.asinh, np.arcsinh, (-4, 4), None, True),
    "acosh": (lax.acosh, np.arccosh, (1.2, 5), None, True),
    "atanh": (lax.atanh, np.arctanh, (-0.8, 0.8), None, True),
    "sqrt": (lax.sqrt, np.sqrt, (0.2, 5), None, True),
    "rsqrt": (lax.rsqrt, lambda x: 1 / np.sqrt(x), (0.2, 5), None, True),
    "cbrt": (lax.cbrt, np.cbrt, (-4, 4), _avoid_zero(-4, 4), True),
    "logistic": (lax.logistic, scipy.special.expit, (-6, 6), None, True),
    "square": (lax.square, np.square, (-4, 4), None, True),
    "reciprocal": (lax.reciprocal, np.reciprocal, (-4, 4), _avoid_zero(-4, 4), True),
    "integer_pow3": (lambda x: lax.integer_pow(x, 3), lambda x: x ** 3, (-3, 3), None, True),
    "integer_pow_neg2": (lambda x: lax.integer_pow(x, -2), lambda x: x ** -2.0, (-3, 3),
                         _avoid_zero(-3, 3), True),
    "floor": (lax.floor, np.floor, (-5, 5), None, False),
    "ceil": (lax.ceil, np.ceil, (-5, 5), None, False),
    "round": (lax.round, _away_from_zero, (-5, 5), lambda u: np.round(u * 2) / 2, False),
    "round_even": (lambda x: lax.round(x, lax.RoundingMethod.TO_NEAREST_EVEN), np.rint,
                   (-5, 5), lambda u: np.round(u * 2) / 2, False),
    "is_finite": (lax.is_finite, np.isfinite, (-5, 5), None, False),
    "erf": (lax.erf, scipy.special.erf, (-2.5, 2.5), None, True),
    "erfc": (lax.erfc, scipy.special.erfc, (-2.5, 2.5), None, True),
    "erf_inv": (lax.erf_inv, scipy.special.erfinv, (-0.9, 0.9), None, True),
    "lgamma": (lax.lgamma, scipy.special.gammaln, (0.3, 6), None, True),
    "digamma": (lax.digamma, scipy.special.digamma, (0.3, 6), None, True),
    "polygamma1": (lambda x: lax.polygamma(1, x),
                   lambda x: scipy.special.polygamma(1, x).astype(x.dtype),
                   (0.5, 6), None, True),
}
DIFFERENTIABLE_UNARY = [k for k, v in UNARY.items() if v[4]]

SHAPES = st.sampled_from([(), (1,), (4,), (2, 3), (3, 1, 2)])


def _floats(dtype, lo, hi):
    """Elements in [lo, hi] representable in dtype (hypothesis wants exact bounds)."""
    lo, hi = float(np.asarray(lo, dtype)), float(np.asarray(hi, dtype))
    return st.floats(lo, hi, width=np.dtype(dtype).itemsize * 8)


def _sample(name, dtype, shape, data):
    lo, hi = UNARY[name][2]
    x = data.draw(hnp.arrays(dtype, shape, elements=_floats(dtype, lo, hi)))
    transform = UNARY[name][3]
    return transform(x).astype(dtype) if transform is not None else x


def _fixed_sample(name, shape, seed=0):
    lo, hi = UNARY[name][2]
    u = np.random.default_rng(seed).uniform(lo, hi, shape)
    transform = UNARY[name][3]
    return transform(u) if transform is not None else u


def _tol(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def _via_jaxpr(f, *args):
    closed = ft.make_jaxpr(f)(*args)
    typecheck_jaxpr(closed)
    return eval_jaxpr(closed.jaxpr, closed.consts, *args)[0]


# ---------------------------------------------------------------------------------------------
# Unary functions


@pytest.mark.parametrize("name", list(UNARY))
@settings(max_examples=8)
@given(dtype=st.sampled_from([np.float32, np.float64]), shape=SHAPES, data=st.data())
def test_unary_matches_reference(backend, name, dtype, shape, data):
    f, ref = UNARY[name][:2]
    x = _sample(name, dtype, shape, data)
    expected = np.asarray(ref(x))
    out = backend.once(f)(x)
    assert isinstance(out, ft.Array)
    assert out.shape == expected.shape == x.shape
    assert out.dtype == expected.dtype, (out.dtype, expected.dtype)
    np.testing.assert_allclose(out, expected, **_tol(dtype))
    if not backend.is_jit:  # under jit the program is staged already
        staged = _via_jaxpr(f, x)
        assert staged.dtype == out.dtype
        np.testing.assert_allclose(staged, out, **_tol(dtype))


@pytest.mark.parametrize("name", DIFFERENTIABLE_UNARY)
def test_unary_grads(backend, name):
    f = UNARY[name][0]
    x = _fixed_sample(name, (3,))
    check_grads(backend.jit(f), (x,), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_transformed_jaxprs_typecheck(backend, name):
    # Under jit, f is a pjit call: this checks the jaxprs its vmap, grad and jvp rules build,
    # and running them (eval_jaxpr runs the derived programs compiled for the back end).
    eager = UNARY[name][0]
    f = backend.jit(eager)
    x = _fixed_sample(name, (2, 3), seed=1)
    closed = ft.make_jaxpr(f)(x)
    typecheck_jaxpr(closed)
    vm = ft.make_jaxpr(ft.vmap(f))(x)
    typecheck_jaxpr(vm)
    np.testing.assert_allclose(ft.device_get(eval_jaxpr(vm.jaxpr, vm.consts, x)[0]), eager(x),
                               rtol=1e-12)
    if UNARY[name][4]:
        g = ft.make_jaxpr(ft.grad(lambda v: f(v).sum()))(x)
        typecheck_jaxpr(g)
        j = ft.make_jaxpr(lambda v, t: ft.jvp(f, (v,), (t,)))(x, np.ones_like(x))
        typecheck_jaxpr(j)
        primal, tangent = ft.device_get(eval_jaxpr(j.jaxpr, j.consts, x, np.ones_like(x)))
        np.testing.assert_allclose(primal, eager(x), rtol=1e-12)
        np.testing.assert_allclose(
            tangent, ft.device_get(eval_jaxpr(g.jaxpr, g.consts, x)[0]), rtol=1e-10)


@pytest.mark.parametrize("name", list(UNARY))
@pytest.mark.parametrize("axis", [0, 1])
def test_unary_vmap_matches_loop(backend, name, axis):
    f = UNARY[name][0]
    x = _fixed_sample(name, (3, 4), seed=2)
    out = backend(ft.vmap(f, in_axes=axis, out_axes=axis))(x)
    expected = np.stack([f(np.take(x, i, axis=axis)) for i in range(x.shape[axis])], axis)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_fourth_derivatives_closed_forms(backend):
    d4 = lambda f: backend(ft.grad(ft.grad(ft.grad(ft.grad(f)))))  # noqa: E731
    d4_sin, d4_exp, d4_tanh = d4(lax.sin), d4(lax.exp), d4(lax.tanh)
    for x in (-1.3, 0.2, 0.9):
        np.testing.assert_allclose(d4_sin(x), math.sin(x), rtol=1e-12)
        np.testing.assert_allclose(d4_exp(x), math.exp(x), rtol=1e-12)
        t = math.tanh(x)
        np.testing.assert_allclose(d4_tanh(x), 8 * t * (1 - t * t) * (2 - 3 * t * t),
                                   rtol=1e-10, atol=1e-12)
    # Forward over reverse agrees; here the jitted tanh itself is differentiated (derivatives
    # of the pjit call).
    x = 0.7
    third = ft.grad(ft.grad(ft.grad(backend.jit(lax.tanh))))
    _, fourth = ft.device_get(ft.jvp(third, (x,), (1.0,)))
    t = math.tanh(x)
    np.testing.assert_allclose(fourth, 8 * t * (1 - t * t) * (2 - 3 * t * t), rtol=1e-10)


def test_float32_derivatives_stay_float32(backend):
    x = np.float32(0.3)
    for f in (lax.sin, lax.exp2, lax.rsqrt, lax.cbrt, lax.erf, lax.erf_inv, lax.tanh):
        assert backend(ft.grad(f))(x).dtype == np.float32
        assert backend(ft.grad(ft.grad(f)))(x).dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Binary functions

# name -> (function, reference, x range, y range, differentiable)
BINARY = {
    "add": (lax.add, np.add, (-5, 5), (-5, 5), True),
    "sub": (lax.sub, np.subtract, (-5, 5), (-5, 5), True),
    "mul": (lax.mul, np.multiply, (-5, 5), (-5, 5), True),
    "div": (lax.div, np.true_divide, (-5, 5), (0.5, 3), True),
    "rem": (lax.rem, np.fmod, (3.1, 3.4), (1.45, 1.5), True),
    "max": (lax.max, np.maximum, (-5, 5), (-5, 5), True),
    "min": (lax.min, np.minimum, (-5, 5), (-5, 5), True),
    "pow": (lax.pow, np.power, (0.3, 3), (-2, 2), True),
    "atan2": (lax.atan2, np.arctan2, (-3, 3), (0.5, 3), True),
    "nextafter": (lax.nextafter, np.nextafter, (-3, 3), (-3, 3), False),
    "eq": (lax.eq, np.equal, (-2, 2), (-2, 2), False),
    "lt": (lax.lt, np.less, (-2, 2), (-2, 2), False),
    "ge": (lax.ge, np.greater_equal, (-2, 2), (-2, 2), False),
}

BROADCAST_PAIRS = st.sampled_from([((), ()), ((3,), (3,)), ((2, 3), (3,)), ((3,), (2, 3)),
                                   ((2, 1), (1, 3)), ((), (2, 3)), ((2, 3), ()),
                                   ((4, 1, 2), (3, 1))])


@pytest.mark.parametrize("name", list(BINARY))
@settings(max_examples=10)
@given(dtype=st.sampled_from([np.float32, np.float64]), shapes=BROADCAST_PAIRS,
       data=st.data())
def test_binary_matches_reference(backend, name, dtype, shapes, data):
    f, ref, xr, yr = BINARY[name][:4]
    x = data.draw(hnp.arrays(dtype, shapes[0], elements=_floats(dtype, *xr)))
    y = data.draw(hnp.arrays(dtype, shapes[1], elements=_floats(dtype, *yr)))
    expected = np.asarray(ref(x, y))
    out = backend.once(f)(x, y)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_allclose(out, expected, **_tol(dtype))
    if not backend.is_jit:  # under jit the program is staged already
        np.testing.assert_allclose(_via_jaxpr(f, x, y), expected, **_tol(dtype))


@pytest.mark.parametrize("name", [k for k, v in BINARY.items() if v[4]])
@pytest.mark.parametrize("shapes", [((3,), (3,)), ((2, 3), (3,)), ((), (2,))])
def test_binary_grads(backend, name, shapes):
    f, _, xr, yr = BINARY[name][:4]
    rng = np.random.default_rng(3)
    x = rng.uniform(*xr, shapes[0])
    y = rng.uniform(*yr, shapes[1])
    check_grads(backend.jit(f), (x, y), order=2, modes=("fwd", "rev"))
    jf = backend.jit(f)
    g = ft.make_jaxpr(ft.grad(lambda a, b: jf(a, b).sum(), argnums=(0, 1)))(x, y)
    typecheck_jaxpr(g)
    gx, gy = backend(ft.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(x, y)
    assert gx.shape == np.shape(x) and gy.shape == np.shape(y)


@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("in_axes,xs,ys", [
    ((0, 0), (4, 3), (4, 3)), ((0, None), (4, 3), (3,)), ((None, 0), (2, 3), (4, 3)),
    ((1, 0), (3, 4), (4, 3)), ((0, 1), (4, 2, 3), (2, 4, 1)), ((None, 1), (3,), (3, 4))])
def test_binary_vmap_matches_loop(backend, name, in_axes, xs, ys):
    f, _, xr, yr = BINARY[name][:4]
    rng = np.random.default_rng(4)
    x, y = rng.uniform(*xr, xs), rng.uniform(*yr, ys)
    out = backend(ft.vmap(f, in_axes=in_axes))(x, y)
    size = (xs[in_axes[0]] if in_axes[0] is not None else ys[in_axes[1]])
    pick = lambda a, ax, i: a if ax is None else np.take(a, i, axis=ax)  # noqa: E731
    expected = np.stack([f(pick(x, in_axes[0], i), pick(y, in_axes[1], i))
                         for i in range(size)])
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # Under jit: the batching rule of the pjit call.
    typecheck_jaxpr(ft.make_jaxpr(ft.vmap(backend.jit(f), in_axes=in_axes))(x, y))


def test_max_min_split_gradient_at_ties(backend):
    gx, gy = backend(ft.grad(lambda a, b: lax.max(a, b), argnums=(0, 1)))(2.0, 2.0)
    assert (gx, gy) == (0.5, 0.5)
    gx, gy = backend(ft.grad(lambda a, b: lax.min(a, b), argnums=(0, 1)))(1.0, 3.0)
    assert (gx, gy) == (1.0, 0.0)


@np.errstate(all="ignore")
def test_pow_derivatives_at_zero(backend):
    assert backend(ft.grad(lambda x: lax.pow(x, 0.0)))(0.0) == 0.0
    assert backend(ft.grad(lambda y: lax.pow(0.0, y)))(2.0) == 0.0
    assert backend(ft.grad(lambda x: lax.pow(x, 2.0)))(0.0) == 0.0


def test_abs_gradient_convention(backend):
    assert backend(ft.grad(lax.abs))(0.0) == 1.0
    assert backend(ft.grad(lax.abs))(-2.0) == -1.0


def test_weak_scalars_keep_array_dtype(backend):
    x = np.ones(3, np.float32)
    for f in (lax.add, lax.sub, lax.mul, lax.div, lax.max, lax.pow, lax.atan2, lax.rem):
        with_two = lambda v: f(v, 2.0)  # noqa: E731
        assert backend(with_two)(x).dtype == np.float32, f
        # The scalar as an argument of the jitted function (a weak-typed input) too.
        assert backend(f)(x, 2.0).dtype == np.float32, f
        if not backend.is_jit:  # under jit the program is staged already
            assert _via_jaxpr(with_two, x).dtype == np.float32, f
    i = np.ones(3, np.int32)
    assert backend(lambda v: lax.add(v, 2))(i).dtype == np.int32
    assert backend(lambda v: lax.div(v, 2))(i).dtype == np.int32
    assert backend(lambda v: lax.bitwise_and(v, 5))(i).dtype == np.int32
    assert backend(lax.bitwise_and)(i, 5).dtype == np.int32
    assert backend(lambda v: lax.add(v, 2.0))(i).dtype == np.float64
    assert backend(lambda v: lax.complex(v, 1.0))(x).dtype == np.complex64


# ---------------------------------------------------------------------------------------------
# Integers and bits

INT_DTYPES = st.sampled_from([np.int32, np.int64, np.uint32, np.uint8])


@given(dtype=st.sampled_from([np.int32, np.int64, np.int8]), shapes=BROADCAST_PAIRS,
       data=st.data())
def test_integer_div_rem_round_toward_zero(backend, dtype, shapes, data):
    x = data.draw(hnp.arrays(dtype, shapes[0], elements=st.integers(-50, 50)))
    y = data.draw(hnp.arrays(dtype, shapes[1], elements=st.integers(1, 9).map(
        lambda v: v if v % 2 else -v)))
    q = (np.trunc(x.astype(np.float64) / y)).astype(dtype)
    ways = [backend(lax.div)] + ([] if backend.is_jit else [
        lambda a, b: _via_jaxpr(lax.div, a, b)])  # under jit the program is staged already
    for f in ways:
        out = f(x, y)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, q)
    np.testing.assert_array_equal(backend(lax.rem)(x, y), np.fmod(x, y))
    np.testing.assert_array_equal(
        backend(lambda a, b: lax.add(lax.mul(lax.div(a, b), b), lax.rem(a, b)))(x, y),
        np.broadcast_to(x, q.shape))


@given(dtype=INT_DTYPES, shape=SHAPES, data=st.data())
def test_shifts_and_bit_ops_match_numpy(backend, dtype, shape, data):
    info = np.iinfo(dtype)
    bits = info.bits
    x = data.draw(hnp.arrays(dtype, shape, elements=st.integers(info.min, info.max)))
    y = data.draw(hnp.arrays(dtype, shape, elements=st.integers(0, bits + 3)))
    z = data.draw(hnp.arrays(dtype, shape, elements=st.integers(info.min, info.max)))
    udt = np.dtype(f"u{np.dtype(dtype).itemsize}")
    sdt = np.dtype(f"i{np.dtype(dtype).itemsize}")
    ux, uy = x.astype(udt), y.astype(udt)
    sx, sy = x.astype(sdt), y.astype(sdt)
    expected = {
        "shift_left": np.where(y < bits, np.left_shift(ux, np.minimum(uy, bits - 1)),
                               0).astype(dtype),
        "shift_right_logical": np.where(y < bits, np.right_shift(ux, np.minimum(
            uy, bits - 1)), 0).astype(dtype),
        "shift_right_arithmetic": np.right_shift(sx, np.minimum(sy, bits - 1)).astype(dtype),
        "bitwise_xor": np.bitwise_xor(x, z),
        "bitwise_and": np.bitwise_and(x, z),
        "bitwise_or": np.bitwise_or(x, z),
    }
    # Every operation in one program (one trace and lowering per example under jit).
    def all_ops(x, y, z):
        outs = {name: getattr(lax, name)(x, z if name.startswith("bitwise") else y)
                for name in expected}
        return outs, lax.population_count(x), lax.bitwise_not(x)

    outs, popcount, inverted = backend(all_ops)(x, y, z)
    for name, exp in expected.items():
        f = getattr(lax, name)
        b = z if name.startswith("bitwise") else y
        assert outs[name].dtype == dtype, name
        np.testing.assert_array_equal(outs[name], exp, err_msg=name)
        if not backend.is_jit:  # under jit the program is staged already
            np.testing.assert_array_equal(_via_jaxpr(f, x, b), exp, err_msg=name)
    pc = np.array([bin(int(v)).count("1") for v in ux.ravel()], dtype).reshape(shape)
    np.testing.assert_array_equal(popcount, pc)
    np.testing.assert_array_equal(inverted, np.invert(x))


def test_uint32_arithmetic_wraps_like_threefry_needs(backend):
    def rotl(v, r):
        return lax.bitwise_or(lax.shift_left(v, np.uint32(r)),
                              lax.shift_right_logical(v, np.uint32(32 - r)))

    def mix(a, b):
        for r in (13, 15, 26, 6):
            a = lax.add(a, b)
            b = lax.bitwise_xor(rotl(b, r), a)
        return lax.add(lax.mul(a, np.uint32(0x9E3779B9)), b)

    a = np.array([0xFFFFFFFF, 0x12345678, 0, 0x80000000], np.uint32)
    b = np.array([0xFFFFFFFF, 0x9ABCDEF0, 1, 0x80000000], np.uint32)

    def reference(a, b):
        a, b = [int(v) for v in a], [int(v) for v in b]
        m = 0xFFFFFFFF
        out = []
        for x, y in zip(a, b):
            for r in (13, 15, 26, 6):
                x = (x + y) & m
                y = (((y << r) | (y >> (32 - r))) & m) ^ x
            out.append((x * 0x9E3779B9 + y) & m)
        return np.array(out, np.uint32)

    expected = reference(a, b)
    out = backend(mix)(a, b)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, expected)
    if not backend.is_jit:  # under jit the program is staged already
        np.testing.assert_array_equal(_via_jaxpr(mix, a, b), expected)
    np.testing.assert_array_equal(backend(ft.vmap(mix))(a, b), expected)
    # Weak Python ints keep the uint32 type.
    plus_one = backend(lambda v: lax.add(v, 1))(a)
    assert plus_one.dtype == np.uint32
    np.testing.assert_array_equal(plus_one, (a.astype(np.int64) + 1) % 2 ** 32)
    # 0-d operands wrap too, without numpy's scalar overflow warnings.
    with np.errstate(over="raise"):
        assert int(backend(lax.mul)(np.uint32(0xFFFFFFFF), np.uint32(2))) == 0xFFFFFFFE
        assert int(backend(lax.add)(np.uint32(0xFFFFFFFF), np.uint32(1))) == 0


def test_shift_batching(backend):
    x = np.arange(12, dtype=np.uint32).reshape(3, 4) * 1000003
    s = np.array([1, 5, 31], np.uint32)
    out = backend(ft.vmap(lax.shift_right_logical, in_axes=(0, 0)))(x, s)
    np.testing.assert_array_equal(out, x >> s[:, None])
    out = backend(ft.vmap(lax.shift_left, in_axes=(1, None)))(x, np.uint32(3))
    np.testing.assert_array_equal(out, (x << np.uint32(3)).T)


def test_bool_logic(backend):
    a = np.array([True, False, True, False])
    b = np.array([True, True, False, False])
    np.testing.assert_array_equal(backend(lax.bitwise_and)(a, b), a & b)
    np.testing.assert_array_equal(backend(lax.bitwise_or)(a, b), a | b)
    np.testing.assert_array_equal(backend(lax.bitwise_xor)(a, b), a ^ b)
    np.testing.assert_array_equal(backend(lax.bitwise_not)(a), ~a)
    assert backend(lax.bitwise_xor)(a, b).dtype == np.bool_


# ---------------------------------------------------------------------------------------------
# clamp, select, rounding, complex numbers, special functions


def test_clamp_values_grads_and_vmap(backend):
    x = np.array([-2.0, -0.3, 0.4, 2.5])
    out = backend(lambda v: lax.clamp(-1.0, v, 1.0))(x)
    np.testing.assert_array_equal(out, np.clip(x, -1, 1))
    lo, hi = np.full(4, -1.0), np.full(4, 1.0)
    check_grads(backend.jit(lambda a, v, b: lax.clamp(a, v, b)), (lo, x, hi), order=2)
    glo, gx, ghi = backend(ft.grad(lambda a, v, b: lax.clamp(a, v, b).sum(),
                                   argnums=(0, 1, 2)))(lo, x, hi)
    np.testing.assert_array_equal(gx, [0, 1, 1, 0])
    np.testing.assert_array_equal(glo, [1, 0, 0, 0])
    np.testing.assert_array_equal(ghi, [0, 0, 0, 1])
    xs = np.random.default_rng(5).uniform(-2, 2, (3, 4))
    np.testing.assert_allclose(backend(ft.vmap(lambda v: lax.clamp(-1.0, v, 1.0)))(xs),
                               np.clip(xs, -1, 1))
    np.testing.assert_allclose(backend(ft.vmap(lax.clamp, in_axes=(0, 1, None)))(
        np.array([-1.0, 0.0, -0.5, 0.2]), xs, 0.5), np.clip(xs.T, [[-1], [0], [-0.5], [0.2]],
                                                           0.5))
    assert backend(lambda v: lax.clamp(0, v, 3))(np.arange(5, dtype=np.int32)).dtype == \
        np.int32


def test_select_helper(backend):
    p = np.array([True, False, True])
    np.testing.assert_array_equal(backend(lax.select)(p, np.ones(3), np.zeros(3)), [1, 0, 1])
    g = backend(ft.grad(lambda x: lax.select(p, x, 2 * x).sum()))(np.ones(3))
    np.testing.assert_array_equal(g, [1, 2, 1])


def test_select_keeps_the_sign_of_zero(backend):
    # Regression: the lowering turned select_n with scalar cases into p * (b - a) + a without
    # checking the sign of zero, so select(p, 0.0, -0.0) gave -0.0 everywhere (numpy's
    # copysign(0.0, x) and remainder's zeros go through such selects).
    p = np.array([True, False, True, False])
    for dt in (np.float32, np.float64):
        for a, b in ((0.0, -0.0), (-0.0, 0.0), (0.0, -1.0), (-0.0, 1.0), (-1.0, 0.0),
                     (2.0, -0.0), (0.5, 1.0)):
            on_true, on_false = np.full(4, a, dt), np.full(4, b, dt)
            out = backend(lambda q: lax.select(q, on_true, on_false))(p)
            expected = np.where(p, on_true, on_false)
            assert out.dtype == dt
            np.testing.assert_array_equal(out, expected, err_msg=f"{a}, {b}")
            np.testing.assert_array_equal(np.signbit(out), np.signbit(expected),
                                          err_msg=f"{a}, {b}")


def test_round_methods_on_ties(backend):
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999999999999994, -0.49999999999999994])
    np.testing.assert_array_equal(backend(lax.round)(x), [-3, -2, -1, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(
        backend(lambda v: lax.round(v, lax.RoundingMethod.TO_NEAREST_EVEN))(x), np.rint(x))
    np.testing.assert_array_equal(backend(lambda v: lax.round(v, 1))(x), np.rint(x))
    assert backend(lax.round)(np.float32(2.5)).dtype == np.float32


def test_round_method_parameter_and_errors():
    x = np.array([-2.5, 0.5])
    j = ft.make_jaxpr(lambda v: lax.round(v, lax.RoundingMethod.TO_NEAREST_EVEN))(x)
    assert "rounding_method=1" in str(j)
    with pytest.raises(ValueError, match="round"):
        lax.round(x, 7)


def test_complex_parts(backend):
    re = np.array([1.0, -2.0, 0.5])
    im = np.array([0.5, 3.0, -1.0])
    z = backend(lax.complex)(re, im)
    assert z.dtype == np.complex128
    np.testing.assert_array_equal(z, re + 1j * im)
    np.testing.assert_array_equal(backend(lax.real)(z), re)
    np.testing.assert_array_equal(backend(lax.imag)(z), im)
    np.testing.assert_array_equal(backend(lax.conj)(z), re - 1j * im)
    np.testing.assert_allclose(backend(lax.abs)(z), np.abs(re + 1j * im))
    assert backend(lax.abs)(z).dtype == np.float64
    assert backend(lambda a, b: lax.abs(lax.complex(a, b)))(
        np.float32(1), np.float32(2)).dtype == np.float32
    assert backend(lax.conj)(re).dtype == np.float64
    if not backend.is_jit:  # under jit the program is staged already
        for f in (lax.real, lax.imag, lax.conj, lax.abs):
            typecheck_jaxpr(ft.make_jaxpr(f)(z))
            np.testing.assert_allclose(_via_jaxpr(f, z), f(z))
        typecheck_jaxpr(ft.make_jaxpr(lax.complex)(re, im))


def test_complex_derivatives(backend):
    re = np.array([1.0, -2.0, 0.5])
    im = np.array([0.5, 3.0, -1.0])
    # Through complex numbers and back to reals: |re + i im| and its gradient.
    f = lambda a, b: lax.abs(lax.complex(a, b))  # noqa: E731
    check_grads(backend.jit(f), (re, im), order=2)
    g_re, g_im = backend(ft.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1)))(re, im)
    r = np.hypot(re, im)
    np.testing.assert_allclose(g_re, re / r)
    np.testing.assert_allclose(g_im, im / r)
    h = lambda a, b: lax.real(lax.mul(lax.complex(a, b), lax.conj(lax.complex(b, a))))  # noqa
    check_grads(backend.jit(h), (re, im), order=2)
    k = lambda a, b: lax.imag(lax.exp(lax.complex(a, b)))  # noqa: E731
    check_grads(backend.jit(k), (re, im), order=2)
    np.testing.assert_allclose(backend(k)(re, im), np.exp(re) * np.sin(im))
    # jvp of a holomorphic function of a complex argument.
    z = re + 1j * im
    out, t = backend(lambda v, dv: ft.jvp(lax.sin, (v,), (dv,)))(z, np.ones_like(z))
    np.testing.assert_allclose(t, np.cos(z))


def test_polygamma_orders_and_jvp(backend):
    x = np.array([0.7, 1.5, 4.0])
    for m in range(4):
        np.testing.assert_allclose(backend(lambda v: lax.polygamma(m, v))(x),
                                   scipy.special.polygamma(m, x))
    check_grads(backend.jit(lambda v: lax.polygamma(2, v)), (x,), order=2)
    np.testing.assert_allclose(backend(ft.grad(ft.grad(lax.lgamma)))(1.5),
                               scipy.special.polygamma(1, 1.5))
    assert backend(lambda v: lax.polygamma(1, v))(np.float32(2.0)).dtype == np.float32


def test_polygamma_rejects_negative_order():
    x = np.array([0.7, 1.5, 4.0])
    with pytest.raises(ValueError, match="polygamma"):
        lax.polygamma(-1, x)


def test_special_float32_results(backend):
    x = np.linspace(0.1, 0.8, 5, dtype=np.float32)
    for f in (lax.erf, lax.erfc, lax.erf_inv, lax.lgamma, lax.digamma):
        assert backend(f)(x).dtype == np.float32
        if not backend.is_jit:  # under jit the program is staged already
            assert _via_jaxpr(f, x).dtype == np.float32


def test_nextafter_and_is_finite(backend):
    x = np.array([1.0, -1.0, 0.0])
    np.testing.assert_array_equal(backend(lambda v: lax.nextafter(v, 2.0))(x),
                                  np.nextafter(x, 2.0))
    y = np.array([1.0, np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(backend(lax.is_finite)(y), [True, False, False, False])
    assert backend(ft.grad(lambda v: lax.nextafter(v, 2.0)))(1.0) == 0.0


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("f,name", [
    (lax.sin, "sin"), (lax.exp, "exp"), (lax.log, "log"), (lax.tan, "tan"),
    (lax.sqrt, "sqrt"), (lax.rsqrt, "rsqrt"), (lax.atanh, "atanh"), (lax.floor, "floor"),
    (lax.ceil, "ceil"), (lax.round, "round"), (lax.is_finite, "is_finite"),
    (lax.logistic, "logistic"), (lax.erf, "erf"), (lax.lgamma, "lgamma"),
    (lax.cbrt, "cbrt"), (lax.real, "real"), (lambda v: lax.integer_pow(v, -1), "integer_pow"),
])
def test_float_functions_reject_integers(f, name):
    x = np.arange(3, dtype=np.int32)
    with pytest.raises(TypeError, match=name) as info:
        f(x)
    assert THIS_FILE in str(info.value)
    assert "int32" in str(info.value)
    with pytest.raises(TypeError, match=name) as info:
        ft.make_jaxpr(f)(x)
    assert THIS_FILE in str(info.value)


@pytest.mark.parametrize("f,name,args", [
    (lax.shift_left, "shift_left", (np.ones(2), np.ones(2))),
    (lax.population_count, "population_count", (np.ones(2),)),
    (lax.bitwise_xor, "xor", (np.ones(2), np.ones(2))),
    (lax.bitwise_and, "and", (np.ones(2, np.float32), 1)),
    (lax.atan2, "atan2", (np.ones(2, np.int32), np.ones(2, np.int32))),
    (lax.pow, "pow", (np.ones(2, np.int32), 2)),
    (lax.nextafter, "nextafter", (np.ones(2, np.int64), 1)),
    (lax.sub, "sub", (np.ones(2, bool), np.ones(2, bool))),
    (lax.neg, "neg", (np.ones(2, bool),)),
    (lax.div, "div", (np.ones(2, bool), np.ones(2, bool))),
    (lax.rem, "rem", (np.ones(2, np.complex128), 1.0)),
    (lax.imag, "imag", (np.ones(2),)),
    (lax.complex, "complex", (np.ones(2, np.int32), np.ones(2, np.int32))),
    (lax.abs, "abs", (np.ones(2, bool),)),
])
def test_dtype_errors_name_the_op(f, name, args):
    with pytest.raises(TypeError, match=name) as info:
        f(*args)
    assert THIS_FILE in str(info.value)
    with pytest.raises(TypeError, match=name) as info:
        ft.make_jaxpr(f)(*args)
    assert THIS_FILE in str(info.value)


def test_shape_errors_name_op_and_shapes():
    for f, name in ((lax.add, "add"), (lax.atan2, "atan2"), (lax.shift_left, "shift_left")):
        dt = np.int32 if name == "shift_left" else np.float64
        with pytest.raises(TypeError) as info:
            ft.make_jaxpr(f)(np.ones(3, dt), np.ones(4, dt))
        msg = str(info.value)
        assert name in msg and "(3,)" in msg and "(4,)" in msg and THIS_FILE in msg
        with pytest.raises((TypeError, ValueError)) as info:
            f(np.ones(3, dt), np.ones(4, dt))
        assert name in str(info.value) and THIS_FILE in str(info.value)


def test_module_contract():
    for mod in (functrax.lax.elementwise, functrax.lax.special):
        assert "np" not in mod.__all__
        for n in mod.__all__:
            assert hasattr(mod, n), n
            assert hasattr(lax, n), n
        assert doctest.testmod(mod).failed == 0
