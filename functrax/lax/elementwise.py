"""Elementwise primitives: arithmetic, comparisons, logic, bit twiddling, transcendental and
complex-number functions.

Elementwise primitives broadcast their operands numpy-style and promote dtypes with numpy's
NEP 50 rules (Python scalars are weak), so the eager path is one call to the numpy ufunc.
Transcendental functions require inexact (float or complex) inputs, as in JAX's lax, eagerly
too (``lax.sin(int_array)`` raises TypeError); ``functrax.numpy`` promotes integers first.
Unsigned integer arithmetic wraps modulo 2**bits (what counter-based RNGs rely on).

Each primitive is one block: the ``*_p`` object, its wrapper, and its JVP, transpose and
batching rules right below it.

>>> from functrax import lax
>>> lax.mul(lax.cos(0.0), 2.0)
Array(2.)
>>> lax.round(2.5), lax.round(2.5, lax.RoundingMethod.TO_NEAREST_EVEN)
(Array(3.), Array(2.))
"""
from __future__ import annotations

import builtins
import enum
import math
from functools import partial

import numpy as np

from .. import dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero, defjvp, defjvp2, defjvp_zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules, unbroadcast
from ._util import array_namespace, standard_elementwise_abstract_eval

__all__ = [
    # arithmetic
    "add", "sub", "mul", "div", "rem", "neg", "max", "min", "pow", "integer_pow", "square",
    "reciprocal", "clamp", "abs", "sign", "nextafter",
    # transcendental and other float functions
    "exp", "exp2", "log", "expm1", "log1p", "sin", "cos", "tan", "asin", "acos", "atan",
    "atan2", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "cbrt",
    "logistic", "floor", "ceil", "round", "RoundingMethod", "is_finite",
    # complex numbers
    "real", "imag", "conj", "complex",
    # comparisons, logic and bits
    "eq", "ne", "lt", "le", "gt", "ge", "bitwise_and", "bitwise_or", "bitwise_xor",
    "bitwise_not", "shift_left", "shift_right_logical", "shift_right_arithmetic",
    "population_count",
    # choice
    "select_n", "select",
    # the primitive objects
    "add_p", "sub_p", "mul_p", "div_p", "rem_p", "neg_p", "max_p", "min_p", "pow_p",
    "integer_pow_p", "clamp_p", "abs_p", "sign_p", "nextafter_p", "exp_p", "exp2_p", "log_p",
    "expm1_p", "log1p_p", "sin_p", "cos_p", "tan_p", "asin_p", "acos_p", "atan_p", "atan2_p",
    "sinh_p", "cosh_p", "tanh_p", "asinh_p", "acosh_p", "atanh_p", "sqrt_p", "rsqrt_p",
    "cbrt_p", "logistic_p", "floor_p", "ceil_p", "round_p", "is_finite_p", "real_p", "imag_p",
    "conj_p", "complex_p", "eq_p", "ne_p", "lt_p", "le_p", "gt_p", "ge_p", "and_p", "or_p",
    "xor_p", "not_p", "shift_left_p", "shift_right_logical_p", "shift_right_arithmetic_p",
    "population_count_p", "select_n_p",
]

# Dtype kinds of the impls' operands without converting them: np.asarray on a Python scalar
# would make it strongly typed and change numpy's promotion.
_PY_KIND = {float: "f", int: "i", bool: "b", builtins.complex: "c"}


def _kind(x):
    k = _PY_KIND.get(type(x))
    return k if k is not None else x.dtype.kind


class _EagerDtypeError(TypeError):
    """Raised by an impl on a dtype the primitive rejects; bind then re-raises the abstract
    eval's message, which names the operation and the dtypes."""


def _require_inexact(dtype):
    return dtypes.is_inexact(dtype)


def _require_float(dtype):
    return dtypes.is_float(dtype)


def _require_int_or_bool(dtype):
    return dtypes.is_integer(dtype) or dtypes.is_bool(dtype)


def _require_int(dtype):
    return dtypes.is_integer(dtype)


def _require_real_number(dtype):
    return dtypes.is_integer(dtype) or dtypes.is_float(dtype)


def _require_number(dtype):
    return not dtypes.is_bool(dtype)


def _strict(ufunc):
    """A float ufunc that refuses integer inputs instead of casting them (numpy would compute
    sin of an int32 array in float64; lax.sin is defined on inexact types only)."""
    def impl(x):
        return ufunc(x, casting="no")
    impl.__name__ = ufunc.__name__
    return impl


def _kinds_impl(fn, kinds):
    """Check the operands' dtype kinds (promoted: any of them may carry the kind) eagerly."""
    def impl(*xs, **params):
        ks = [_kind(x) for x in xs]
        if not any(k in kinds for k in ks) or any(k not in kinds + "iub" for k in ks):
            raise _EagerDtypeError(fn.__name__)
        return fn(*xs, **params)
    impl.__name__ = getattr(fn, "__name__", "impl")
    return impl


def unop(name, impl, require=None, require_msg="", out_dtype=None):
    """A unary elementwise primitive with its abstract eval and batching rule."""
    p = Primitive(name)
    p.def_impl(impl)
    p.def_abstract_eval(partial(standard_elementwise_abstract_eval, name, require=require,
                                require_msg=require_msg, out_dtype=out_dtype))
    batching.defvectorized(p)
    return p


def naryop(name, impl, require=None, require_msg="", out_dtype=None):
    """A broadcasting elementwise primitive with two or more operands."""
    p = Primitive(name)
    p.def_impl(impl)
    p.def_abstract_eval(partial(standard_elementwise_abstract_eval, name, require=require,
                                require_msg=require_msg, out_dtype=out_dtype))
    batching.defbroadcasting(p)
    return p


_FLOAT_MSG = "requires floating-point or complex operands; convert integers with astype"
_REAL_FLOAT_MSG = "requires real floating-point operands; convert integers with astype"
_NUMBER_MSG = "requires numeric (not boolean) operands"


# ---------------------------------------------------------------------------------------------
# Arithmetic

add_p = naryop("add", np.add)


def add(x, y):
    """x + y with numpy broadcasting."""
    return add_p.bind(x, y)


defjvp(add_p, lambda g, x, y: g, lambda g, x, y: g)


def _add_transpose(ct, x, y):
    return [unbroadcast(ct, x.aval) if is_undefined_primal(x) else None,
            unbroadcast(ct, y.aval) if is_undefined_primal(y) else None]


transpose_rules[add_p] = _add_transpose


sub_p = naryop("sub", np.subtract, _require_number, _NUMBER_MSG)


def sub(x, y):
    return sub_p.bind(x, y)


defjvp(sub_p, lambda g, x, y: g, lambda g, x, y: neg(g))


def _sub_transpose(ct, x, y):
    return [unbroadcast(ct, x.aval) if is_undefined_primal(x) else None,
            unbroadcast(neg(ct), y.aval) if is_undefined_primal(y) and not ad.is_zero(ct)
            else None]


transpose_rules[sub_p] = _sub_transpose


mul_p = naryop("mul", np.multiply)


def mul(x, y):
    return mul_p.bind(x, y)


defjvp(mul_p, lambda g, x, y: mul(g, y), lambda g, x, y: mul(x, g))


def _mul_transpose(ct, x, y):
    if is_undefined_primal(x):
        if is_undefined_primal(y):
            raise ValueError("mul: transposing a product of two linear values (not linear)")
        return [unbroadcast(mul(ct, y), x.aval), None]
    return [None, unbroadcast(mul(x, ct), y.aval)]


transpose_rules[mul_p] = _mul_transpose


def _div_impl(x, y):
    kx, ky = _kind(x), _kind(y)
    if kx in "fc" or ky in "fc":
        return np.true_divide(x, y)
    if kx == "b" or ky == "b":
        raise _EagerDtypeError("div")
    # lax.div rounds toward zero, like C (numpy's // rounds toward -inf). The operands stay
    # as they are (no np.asarray) so that a Python int keeps its weak type.
    q = np.floor_divide(x, y)
    fix = (np.remainder(x, y) != 0) & (np.less(x, 0) != np.less(y, 0))
    return np.add(q, fix, dtype=q.dtype, casting="unsafe")


div_p = naryop("div", _div_impl, _require_number, _NUMBER_MSG)


def div(x, y):
    """x / y; integers divide rounding toward zero."""
    return div_p.bind(x, y)


defjvp(div_p, lambda g, x, y: div(g, y), lambda g, x, y: neg(div(mul(g, x), mul(y, y))))


def _div_transpose(ct, x, y):
    if is_undefined_primal(y):
        raise ValueError("div: not linear in the divisor")
    return [unbroadcast(div(ct, y), x.aval), None]


transpose_rules[div_p] = _div_transpose


def _rem_impl(x, y):
    # lax.rem takes the sign of the dividend (C fmod), unlike numpy's %.
    if _kind(x) == "b" or _kind(y) == "b":
        raise _EagerDtypeError("rem")
    return np.fmod(x, y)


rem_p = naryop("rem", _rem_impl, require=_require_real_number,
               require_msg="requires integer or real floating operands")


def rem(x, y):
    """The remainder of x / y rounded toward zero (C's fmod): the sign of x."""
    return rem_p.bind(x, y)


defjvp(rem_p, lambda g, x, y: g,
       lambda g, x, y: mul(neg(g), mul(sign(div(x, y)), floor(abs(div(x, y))))))


neg_p = unop("neg", np.negative, _require_number, _NUMBER_MSG)


def neg(x):
    return neg_p.bind(x)


ad.deflinear(neg_p, lambda ct, x: [neg(ct)])


max_p = naryop("max", np.maximum)


def max(x, y):  # noqa: A001 - lax's name
    """Elementwise maximum (NaN propagates); the gradient is split evenly at ties."""
    return max_p.bind(x, y)


def _balanced_eq(x, z, y):
    # 1 where x alone is the extremum, 1/2 at ties: the JAX convention.
    return div(select_n(eq(x, z), _zeros_like(z), _ones_like(z)),
               select_n(eq(y, z), _ones_like(z), _full_like(z, 2)))


defjvp2(max_p,
        lambda g, ans, x, y: mul(g, _balanced_eq(x, ans, y)),
        lambda g, ans, x, y: mul(g, _balanced_eq(y, ans, x)))


min_p = naryop("min", np.minimum)


def min(x, y):  # noqa: A001 - lax's name
    """Elementwise minimum (NaN propagates); the gradient is split evenly at ties."""
    return min_p.bind(x, y)


defjvp2(min_p,
        lambda g, ans, x, y: mul(g, _balanced_eq(x, ans, y)),
        lambda g, ans, x, y: mul(g, _balanced_eq(y, ans, x)))


pow_p = naryop("pow", _kinds_impl(np.power, "fc"), require=_require_inexact,
               require_msg=_FLOAT_MSG)


def pow(x, y):  # noqa: A001 - lax's name
    """x ** y for a floating x; use integer_pow for a static integer exponent."""
    return pow_p.bind(x, y)


def _pow_jvp_x(g, x, y):
    # y x**(y-1), taken as 0 where y == 0 (x**0 is constant, even at x == 0 where the formula
    # would give 0 * inf).
    jac = select_n(eq(y, 0), mul(y, pow(x, sub(y, 1))), 0)
    return mul(g, jac)


def _pow_jvp_y(g, x, y):
    # d/dy x**y = log(x) x**y, taken as 0 where x == 0 (the limit from the right).
    safe_x = select_n(eq(x, 0), x, _ones_like(x))
    return mul(g, mul(log(safe_x), pow(x, y)))


defjvp(pow_p, _pow_jvp_x, _pow_jvp_y)


def _integer_pow_impl(x, *, y):
    if y == 2:
        return np.multiply(x, x)
    if _kind(x) == "b" or (y < 0 and _kind(x) not in "fc"):
        raise _EagerDtypeError("integer_pow")
    return np.power(x, y)


def _integer_pow_abstract_eval(x, *, y):
    if dtypes.is_bool(x.dtype):
        raise TypeError(f"integer_pow: {_NUMBER_MSG} (got {x.dtype.name})")
    if y < 0 and not dtypes.is_inexact(x.dtype):
        raise TypeError(f"integer_pow: the negative exponent {y} needs a floating-point "
                        f"operand (got {x.dtype.name})")
    return ShapedArray(x.shape, x.dtype, x.weak_type)


integer_pow_p = Primitive("integer_pow")
integer_pow_p.def_impl(_integer_pow_impl)
integer_pow_p.def_abstract_eval(_integer_pow_abstract_eval)
batching.defvectorized(integer_pow_p)


def integer_pow(x, y: int):
    """x ** y for a static Python int y."""
    return integer_pow_p.bind(x, y=int(y))


def _integer_pow_jvp(g, x, *, y):
    if y == 0:
        return _zeros_like(g)
    return mul(g, mul(y, x) if y == 2 else mul(y, integer_pow(x, y - 1)))


defjvp(integer_pow_p, _integer_pow_jvp)


def square(x):
    """x * x (lax.square)."""
    return integer_pow(x, 2)


def reciprocal(x):
    """1 / x for a floating x (lax.reciprocal)."""
    return integer_pow(x, -1)


def _clamp_impl(lo, x, hi):
    return np.minimum(np.maximum(x, lo), hi)


clamp_p = naryop("clamp", _clamp_impl, _require_number, _NUMBER_MSG)


def clamp(min, x, max):  # noqa: A002 - lax's argument names
    """x limited to [min, max] elementwise (bounds broadcast against x)."""
    return clamp_p.bind(min, x, max)


# Each operand gets the tangent where it is the output; at exact ties none does (JAX's rule).
defjvp(clamp_p,
       lambda g, lo, x, hi: select_n(gt(lo, x), 0, g),
       lambda g, lo, x, hi: select_n(bitwise_and(gt(x, lo), lt(x, hi)), 0, g),
       lambda g, lo, x, hi: select_n(lt(hi, x), 0, g))


def _abs_impl(x):
    if _kind(x) == "b":
        raise _EagerDtypeError("abs")
    return np.abs(x)


def _abs_abstract_eval(x):
    if dtypes.is_bool(x.dtype):
        raise TypeError(f"abs: {_NUMBER_MSG} (got {x.dtype.name})")
    return ShapedArray(x.shape, _real_dtype(x.dtype), x.weak_type)


abs_p = Primitive("abs")
abs_p.def_impl(_abs_impl)
abs_p.def_abstract_eval(_abs_abstract_eval)
batching.defvectorized(abs_p)


def abs(x):  # noqa: A001 - lax's name
    """|x|; the modulus (a real array) for complex x."""
    return abs_p.bind(x)


def _abs_jvp(g, ans, x):
    if _is_complex(get_aval(x).dtype):
        # d|z| = Re(conj(z) dz) / |z|, with 0 / 0 read as 0 at z == 0.
        safe = select_n(eq(ans, 0), ans, 1)
        return div(real(mul(conj(x), g)), safe)
    # The subgradient 1 at x == 0, as in JAX.
    return select_n(ge(x, 0), neg(g), g)


defjvp2(abs_p, _abs_jvp)


def _sign_impl(x):
    if _kind(x) == "b":
        raise _EagerDtypeError("sign")
    return np.sign(x)


sign_p = unop("sign", _sign_impl, _require_number, _NUMBER_MSG)


def sign(x):
    """-1, 0 or 1 (x / |x| for complex x)."""
    return sign_p.bind(x)


defjvp_zero(sign_p)


nextafter_p = naryop("nextafter", _kinds_impl(np.nextafter, "f"), _require_float,
                     _REAL_FLOAT_MSG)


def nextafter(x1, x2):
    """The next representable float after x1 in the direction of x2."""
    return nextafter_p.bind(x1, x2)


defjvp_zero(nextafter_p)


# ---------------------------------------------------------------------------------------------
# Transcendental and other float functions

exp_p = unop("exp", _strict(np.exp), _require_inexact, _FLOAT_MSG)


def exp(x):
    return exp_p.bind(x)


defjvp2(exp_p, lambda g, ans, x: mul(g, ans))


exp2_p = unop("exp2", _strict(np.exp2), _require_inexact, _FLOAT_MSG)


def exp2(x):
    """2 ** x."""
    return exp2_p.bind(x)


_LOG2 = math.log(2.0)  # a Python float: weakly typed, so float32 stays float32
defjvp2(exp2_p, lambda g, ans, x: mul(g, mul(ans, _LOG2)))


log_p = unop("log", _strict(np.log), _require_inexact, _FLOAT_MSG)


def log(x):
    return log_p.bind(x)


defjvp(log_p, lambda g, x: div(g, x))


expm1_p = unop("expm1", _strict(np.expm1), _require_inexact, _FLOAT_MSG)


def expm1(x):
    return expm1_p.bind(x)


defjvp2(expm1_p, lambda g, ans, x: mul(g, add(ans, 1)))


log1p_p = unop("log1p", _strict(np.log1p), _require_inexact, _FLOAT_MSG)


def log1p(x):
    return log1p_p.bind(x)


defjvp(log1p_p, lambda g, x: div(g, add(x, 1)))


sin_p = unop("sin", _strict(np.sin), _require_inexact, _FLOAT_MSG)


def sin(x):
    return sin_p.bind(x)


defjvp(sin_p, lambda g, x: mul(g, cos(x)))


cos_p = unop("cos", _strict(np.cos), _require_inexact, _FLOAT_MSG)


def cos(x):
    return cos_p.bind(x)


defjvp(cos_p, lambda g, x: neg(mul(g, sin(x))))


tan_p = unop("tan", _strict(np.tan), _require_inexact, _FLOAT_MSG)


def tan(x):
    return tan_p.bind(x)


defjvp2(tan_p, lambda g, ans, x: mul(g, add(1, mul(ans, ans))))


asin_p = unop("asin", _strict(np.arcsin), _require_inexact, _FLOAT_MSG)


def asin(x):
    return asin_p.bind(x)


defjvp(asin_p, lambda g, x: mul(g, rsqrt(sub(1, mul(x, x)))))


acos_p = unop("acos", _strict(np.arccos), _require_inexact, _FLOAT_MSG)


def acos(x):
    return acos_p.bind(x)


defjvp(acos_p, lambda g, x: neg(mul(g, rsqrt(sub(1, mul(x, x))))))


atan_p = unop("atan", _strict(np.arctan), _require_inexact, _FLOAT_MSG)


def atan(x):
    return atan_p.bind(x)


defjvp(atan_p, lambda g, x: div(g, add(1, mul(x, x))))


atan2_p = naryop("atan2", _kinds_impl(np.arctan2, "f"), _require_float, _REAL_FLOAT_MSG)


def atan2(x, y):
    """The angle of the point (y, x): arctan(x / y) in the right quadrant."""
    return atan2_p.bind(x, y)


def _atan2_jvp_x(g, x, y):
    return mul(g, div(y, add(mul(x, x), mul(y, y))))


def _atan2_jvp_y(g, x, y):
    return mul(g, div(neg(x), add(mul(x, x), mul(y, y))))


defjvp(atan2_p, _atan2_jvp_x, _atan2_jvp_y)


sinh_p = unop("sinh", _strict(np.sinh), _require_inexact, _FLOAT_MSG)


def sinh(x):
    return sinh_p.bind(x)


defjvp(sinh_p, lambda g, x: mul(g, cosh(x)))


cosh_p = unop("cosh", _strict(np.cosh), _require_inexact, _FLOAT_MSG)


def cosh(x):
    return cosh_p.bind(x)


defjvp(cosh_p, lambda g, x: mul(g, sinh(x)))


tanh_p = unop("tanh", _strict(np.tanh), _require_inexact, _FLOAT_MSG)


def tanh(x):
    return tanh_p.bind(x)


defjvp2(tanh_p, lambda g, ans, x: mul(g, sub(1, mul(ans, ans))))


asinh_p = unop("asinh", _strict(np.arcsinh), _require_inexact, _FLOAT_MSG)


def asinh(x):
    return asinh_p.bind(x)


defjvp(asinh_p, lambda g, x: mul(g, rsqrt(add(mul(x, x), 1))))


acosh_p = unop("acosh", _strict(np.arccosh), _require_inexact, _FLOAT_MSG)


def acosh(x):
    return acosh_p.bind(x)


# (x - 1)(x + 1) rather than x*x - 1: no cancellation near x == 1.
defjvp(acosh_p, lambda g, x: mul(g, rsqrt(mul(sub(x, 1), add(x, 1)))))


atanh_p = unop("atanh", _strict(np.arctanh), _require_inexact, _FLOAT_MSG)


def atanh(x):
    return atanh_p.bind(x)


defjvp(atanh_p, lambda g, x: div(g, mul(sub(1, x), add(1, x))))


sqrt_p = unop("sqrt", _strict(np.sqrt), _require_inexact, _FLOAT_MSG)


def sqrt(x):
    return sqrt_p.bind(x)


defjvp2(sqrt_p, lambda g, ans, x: div(g, mul(2, ans)))


def _rsqrt_impl(x):
    return np.reciprocal(np.sqrt(x, casting="no"))


rsqrt_p = unop("rsqrt", _rsqrt_impl, _require_inexact, _FLOAT_MSG)


def rsqrt(x):
    """1 / sqrt(x)."""
    return rsqrt_p.bind(x)


defjvp2(rsqrt_p, lambda g, ans, x: mul(g, mul(-0.5, div(ans, x))))


cbrt_p = unop("cbrt", _strict(np.cbrt), _require_float, _REAL_FLOAT_MSG)


def cbrt(x):
    """The real cube root (negative for negative x)."""
    return cbrt_p.bind(x)


defjvp2(cbrt_p, lambda g, ans, x: mul(g, div(1 / 3, mul(ans, ans))))


def _logistic_impl(x):
    # Stable for large |x|: exp never overflows.
    xp = array_namespace(x)
    x = xp.asarray(x)
    if x.dtype.kind not in "fc":
        raise _EagerDtypeError("logistic")
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


logistic_p = unop("logistic", _logistic_impl, _require_inexact, _FLOAT_MSG)


def logistic(x):
    """1 / (1 + exp(-x)), stable at extreme inputs."""
    return logistic_p.bind(x)


defjvp2(logistic_p, lambda g, ans, x: mul(g, mul(ans, sub(1, ans))))


def _float_only(ufunc):
    def impl(x):
        if _kind(x) != "f":
            raise _EagerDtypeError(ufunc.__name__)
        return ufunc(x)
    impl.__name__ = ufunc.__name__
    return impl


floor_p = unop("floor", _float_only(np.floor), _require_float, _REAL_FLOAT_MSG)


def floor(x):
    return floor_p.bind(x)


defjvp_zero(floor_p)


ceil_p = unop("ceil", _float_only(np.ceil), _require_float, _REAL_FLOAT_MSG)


def ceil(x):
    return ceil_p.bind(x)


defjvp_zero(ceil_p)


class RoundingMethod(enum.IntEnum):
    """How ``round`` breaks ties: away from zero (lax's default) or to the nearest even."""
    AWAY_FROM_ZERO = 0
    TO_NEAREST_EVEN = 1


def _round_impl(x, *, rounding_method):
    if _kind(x) != "f":
        raise _EagerDtypeError("round")
    if rounding_method == RoundingMethod.TO_NEAREST_EVEN:
        return np.rint(x)
    # trunc(x) + sign(x) where the dropped fraction is at least one half; x - trunc(x) is
    # exact, unlike floor(|x| + 0.5), which rounds 0.49999999999999994 up.
    t = np.trunc(x)
    return np.where(np.abs(np.subtract(x, t)) >= 0.5, np.add(t, np.sign(x)), t)


def _round_abstract_eval(x, *, rounding_method):
    if rounding_method not in (0, 1):
        raise ValueError(f"round: rounding_method must be RoundingMethod.AWAY_FROM_ZERO (0) or "
                         f"TO_NEAREST_EVEN (1), got {rounding_method!r}")
    return standard_elementwise_abstract_eval("round", x, require=_require_float,
                                              require_msg=_REAL_FLOAT_MSG)


round_p = Primitive("round")
round_p.def_impl(_round_impl)
round_p.def_abstract_eval(_round_abstract_eval)
batching.defvectorized(round_p)


def round(x, rounding_method=RoundingMethod.AWAY_FROM_ZERO):  # noqa: A001 - lax's name
    """Round to the nearest integer; ties go away from zero unless TO_NEAREST_EVEN."""
    if rounding_method not in (0, 1):
        raise ValueError(f"round: rounding_method must be RoundingMethod.AWAY_FROM_ZERO (0) or "
                         f"TO_NEAREST_EVEN (1), got {rounding_method!r}")
    return round_p.bind(x, rounding_method=int(rounding_method))


defjvp_zero(round_p)


is_finite_p = unop("is_finite", _float_only(np.isfinite), _require_float, _REAL_FLOAT_MSG,
                   out_dtype=np.bool_)


def is_finite(x):
    """True where x is neither infinite nor NaN."""
    return is_finite_p.bind(x)


defjvp_zero(is_finite_p)


# ---------------------------------------------------------------------------------------------
# Complex numbers. real, imag, conj and complex are linear: their transposes follow JAX's
# convention for cotangents of complex values.

def _is_complex(dtype):
    return np.dtype(dtype).kind == "c"


def _real_dtype(dtype):
    dtype = np.dtype(dtype)
    return np.finfo(dtype).dtype if dtype.kind == "c" else dtype


def _complex_dtype(dtype):
    return np.result_type(dtype, np.complex64)


def _part_abstract_eval(name, require, require_msg):
    def abstract_eval(x):
        if not require(x.dtype):
            raise TypeError(f"{name}: {require_msg} (got {x.dtype.name})")
        return ShapedArray(x.shape, _real_dtype(x.dtype), x.weak_type)
    return abstract_eval


def _real_impl(x):
    if _kind(x) not in "fc":
        raise _EagerDtypeError("real")
    return np.real(x).copy() if _kind(x) == "c" else np.asarray(x)


real_p = Primitive("real")
real_p.def_impl(_real_impl)
real_p.def_abstract_eval(_part_abstract_eval("real", _require_inexact, _FLOAT_MSG))
batching.defvectorized(real_p)


def real(x):
    """The real part (x itself for a real floating x)."""
    return real_p.bind(x)


def _real_transpose(ct, x):
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    if _is_complex(x.aval.dtype):
        return [complex(ct, _zeros_like(ct))]
    return [ct]


ad.deflinear(real_p, _real_transpose)


def _imag_impl(x):
    if _kind(x) != "c":
        raise _EagerDtypeError("imag")
    return np.imag(x).copy()


imag_p = Primitive("imag")
imag_p.def_impl(_imag_impl)
imag_p.def_abstract_eval(_part_abstract_eval(
    "imag", _is_complex, "requires a complex operand"))
batching.defvectorized(imag_p)


def imag(x):
    """The imaginary part of a complex x."""
    return imag_p.bind(x)


ad.deflinear(imag_p, lambda ct, x: [
    Zero(ad.tangent_aval(x.aval)) if ad.is_zero(ct) else complex(_zeros_like(ct), neg(ct))])


def _conj_impl(x):
    if _kind(x) not in "fc":
        raise _EagerDtypeError("conj")
    return np.conjugate(x)


# numpy's convention: the conjugate of a real array is that array (lax.conj would make it
# complex).
conj_p = unop("conj", _conj_impl, _require_inexact, _FLOAT_MSG)


def conj(x):
    """The complex conjugate."""
    return conj_p.bind(x)


ad.deflinear(conj_p, lambda ct, x: [
    Zero(ad.tangent_aval(x.aval)) if ad.is_zero(ct) else conj(ct)])


def _complex_impl(x, y):
    if _kind(x) != "f" and _kind(y) != "f" or "c" in (_kind(x), _kind(y)):
        raise _EagerDtypeError("complex")
    dtype = _complex_dtype(_result_dtype(x, y))  # before asarray: Python floats are weak
    xp = array_namespace(x, y)  # CuPy for GPU arrays: the result stays there
    x, y = xp.asarray(x), xp.asarray(y)
    out = xp.empty(np.broadcast_shapes(x.shape, y.shape), dtype)
    out.real = x
    out.imag = y
    return out


def _complex_abstract_eval(x, y):
    out = standard_elementwise_abstract_eval("complex", x, y, require=_require_float,
                                             require_msg=_REAL_FLOAT_MSG)
    return ShapedArray(out.shape, _complex_dtype(out.dtype), out.weak_type)


complex_p = Primitive("complex")
complex_p.def_impl(_complex_impl)
complex_p.def_abstract_eval(_complex_abstract_eval)
batching.defbroadcasting(complex_p)


def complex(x, y):  # noqa: A001 - lax's name
    """x + 1j * y from real floating x and y."""
    return complex_p.bind(x, y)


def _complex_transpose(ct, x, y):
    if ad.is_zero(ct):
        return [None, None]
    return [unbroadcast(real(ct), x.aval) if is_undefined_primal(x) else None,
            unbroadcast(neg(imag(ct)), y.aval) if is_undefined_primal(y) else None]


ad.deflinear(complex_p, _complex_transpose)


# ---------------------------------------------------------------------------------------------
# Comparisons and logic (their outputs are boolean: zero derivative)

def _cmp(name, impl):
    p = naryop(name, impl, out_dtype=np.bool_)
    defjvp_zero(p)
    return p


eq_p = _cmp("eq", np.equal)
ne_p = _cmp("ne", np.not_equal)
lt_p = _cmp("lt", np.less)
le_p = _cmp("le", np.less_equal)
gt_p = _cmp("gt", np.greater)
ge_p = _cmp("ge", np.greater_equal)


def eq(x, y):
    return eq_p.bind(x, y)


def ne(x, y):
    return ne_p.bind(x, y)


def lt(x, y):
    return lt_p.bind(x, y)


def le(x, y):
    return le_p.bind(x, y)


def gt(x, y):
    return gt_p.bind(x, y)


def ge(x, y):
    return ge_p.bind(x, y)


def _bits_impl(ufunc, name):
    # numpy's bitwise ufuncs are logical on booleans; floats are refused eagerly as in the
    # abstract eval. The operands are passed as they are, so Python ints stay weak.
    def impl(*xs):
        for x in xs:
            if _kind(x) not in "iub":
                raise _EagerDtypeError(name)
        return ufunc(*xs)
    impl.__name__ = name
    return impl


_BITWISE_MSG = "requires boolean or integer operands"

and_p = naryop("and", _bits_impl(np.bitwise_and, "and"), _require_int_or_bool, _BITWISE_MSG)
or_p = naryop("or", _bits_impl(np.bitwise_or, "or"), _require_int_or_bool, _BITWISE_MSG)
xor_p = naryop("xor", _bits_impl(np.bitwise_xor, "xor"), _require_int_or_bool, _BITWISE_MSG)
not_p = unop("not", _bits_impl(np.invert, "not"), _require_int_or_bool, _BITWISE_MSG)
for _p in (and_p, or_p, xor_p, not_p):
    defjvp_zero(_p)


def bitwise_and(x, y):
    """Logical and for booleans, bitwise and for integers (lax.bitwise_and)."""
    return and_p.bind(x, y)


def bitwise_or(x, y):
    return or_p.bind(x, y)


def bitwise_xor(x, y):
    return xor_p.bind(x, y)


def bitwise_not(x):
    return not_p.bind(x)


_SHIFT_MSG = "requires integer operands"


def _int_kinds(name, *xs):
    for x in xs:
        if _kind(x) not in "iu":
            raise _EagerDtypeError(name)


def _shift_left_impl(x, y):
    # numpy defines shifts by the bit width or more as 0 (C leaves them undefined), which is
    # lax's rule too.
    _int_kinds("shift_left", x, y)
    return np.left_shift(x, y)


shift_left_p = naryop("shift_left", _shift_left_impl, _require_int, _SHIFT_MSG)


def shift_left(x, y):
    """x << y; shifting by the bit width or more gives 0."""
    return shift_left_p.bind(x, y)


defjvp_zero(shift_left_p)


def _as_signedness(x, dtype, kind):
    """x reinterpreted (same bits) in the integer type of ``dtype``'s width and ``kind``."""
    target = np.dtype(f"{kind}{np.dtype(dtype).itemsize}")
    return array_namespace(x).asarray(x).astype(target, casting="unsafe")


def _result_dtype(*xs):
    """numpy's result dtype of impl operands, computed from their dtypes (numpy's result_type
    cannot read a CuPy array) with Python scalars left as they are (weak)."""
    return np.result_type(*[x if type(x) in _PY_KIND else x.dtype for x in xs])


def _shift_right_impl(name, kind):
    def impl(x, y):
        _int_kinds(name, x, y)
        dtype = _result_dtype(x, y)
        if dtype.kind == kind:
            return np.right_shift(x, y)
        # Reinterpret the bits in the other signedness: numpy shifts signed integers
        # arithmetically and unsigned ones logically; shifting by the width or more gives 0
        # (logical) or the sign fill (arithmetic).
        xp = array_namespace(x, y)
        xs = _as_signedness(xp.asarray(x, dtype), dtype, kind)
        ys = _as_signedness(xp.asarray(y, dtype), dtype, kind)
        return np.right_shift(xs, ys).astype(dtype, casting="unsafe")
    impl.__name__ = name
    return impl


shift_right_logical_p = naryop("shift_right_logical", _shift_right_impl(
    "shift_right_logical", "u"), _require_int, _SHIFT_MSG)


def shift_right_logical(x, y):
    """x >> y filling with zeros (signed x is shifted as its unsigned bits)."""
    return shift_right_logical_p.bind(x, y)


defjvp_zero(shift_right_logical_p)


shift_right_arithmetic_p = naryop("shift_right_arithmetic", _shift_right_impl(
    "shift_right_arithmetic", "i"), _require_int, _SHIFT_MSG)


def shift_right_arithmetic(x, y):
    """x >> y filling with the sign bit (unsigned x is shifted as its signed bits)."""
    return shift_right_arithmetic_p.bind(x, y)


defjvp_zero(shift_right_arithmetic_p)


def _population_count_impl(x):
    _int_kinds("population_count", x)
    xp = array_namespace(x)
    x = xp.asarray(x)
    # Count the bits of the unsigned view: numpy's bitwise_count counts those of |x|.
    u = _as_signedness(x, x.dtype, "u")
    if hasattr(xp, "bitwise_count"):
        return xp.bitwise_count(u).astype(x.dtype)
    # numpy < 2.0 and CuPy without bitwise_count: add up the bits one shift at a time.
    one = u.dtype.type(1)
    total = xp.zeros(u.shape, x.dtype)
    for k in range(u.dtype.itemsize * 8):
        total += ((u >> u.dtype.type(k)) & one).astype(x.dtype)
    return total


population_count_p = unop("population_count", _population_count_impl, _require_int,
                          _SHIFT_MSG)


def population_count(x):
    """The number of set bits of each element (in x's dtype)."""
    return population_count_p.bind(x)


defjvp_zero(population_count_p)


# ---------------------------------------------------------------------------------------------
# select_n: the elementwise choice between cases (the batched form of a branch)

def _select_n_impl(which, *cases):
    xp = array_namespace(which, *cases)  # numpy, or CuPy for GPU arrays
    which = xp.asarray(which)
    if len(cases) == 1:
        return xp.broadcast_to(cases[0], np.broadcast_shapes(which.shape,
                                                             np.shape(cases[0]))).copy()
    if which.dtype == np.bool_ and len(cases) == 2:
        return xp.where(which, cases[1], cases[0])
    return xp.choose(which, cases)


def _select_n_abstract_eval(which, *cases):
    if not cases:
        raise TypeError("select_n: needs at least one case")
    if not (which.dtype == np.bool_ or dtypes.is_integer(which.dtype)):
        raise TypeError(f"select_n: the selector must be boolean or integer, got "
                        f"{which.dtype.name}")
    if which.dtype == np.bool_ and len(cases) > 2:
        raise TypeError(f"select_n: a boolean selector picks between 2 cases, got {len(cases)}")
    return standard_elementwise_abstract_eval("select_n", which.update(weak_type=True),
                                              *cases)


select_n_p = Primitive("select_n")
select_n_p.def_impl(_select_n_impl)
select_n_p.def_abstract_eval(_select_n_abstract_eval)
batching.defbroadcasting(select_n_p)


def select_n(which, *cases):
    """``cases[which]`` elementwise: ``select_n(pred, on_false, on_true)``."""
    return select_n_p.bind(which, *cases)


def select(pred, on_true, on_false):
    """``on_true`` where ``pred`` holds, else ``on_false`` (lax.select)."""
    return select_n_p.bind(pred, on_false, on_true)


def _select_n_jvp(primals, tangents):
    which, *cases = primals
    ans = select_n_p.bind(which, *primals[1:])
    out_aval = get_aval(ans)
    case_tangents = tangents[1:]
    if all(ad.is_zero(t) for t in case_tangents):
        return ans, Zero(ad.tangent_aval(out_aval))
    ts = [ad.fit_to_aval(ad.instantiate_zeros(t), out_aval) if not ad.is_zero(t)
          else _zeros_aval(out_aval) for t in case_tangents]
    return ans, select_n_p.bind(which, *ts)


ad.jvp_rules[select_n_p] = _select_n_jvp


def _select_n_transpose(ct, which, *cases):
    if is_undefined_primal(which):
        raise ValueError("select_n: not linear in the selector")
    zeros = _zeros_like(ct)
    out = [None]
    for i, c in enumerate(cases):
        if is_undefined_primal(c):
            branches = [zeros] * len(cases)
            branches[i] = ct
            out.append(unbroadcast(select_n(which, *branches), c.aval))
        else:
            out.append(None)
    return out


transpose_rules[select_n_p] = _select_n_transpose


# ---------------------------------------------------------------------------------------------
# Small constructors used by the rules above

def _full_like(x, fill):
    from .structural import full
    aval = get_aval(x)
    return full(aval.shape, fill, aval.dtype)


def _zeros_like(x):
    return _full_like(x, 0)


def _ones_like(x):
    return _full_like(x, 1)


def _zeros_aval(aval):
    from .structural import full
    return full(aval.shape, 0, aval.dtype)
