"""numpy's ufuncs and elementwise functions over lax: arithmetic, comparisons, logic, bits,
rounding and math functions, with numpy's semantics.

* Binary functions broadcast and promote as numpy does (NEP 50: Python scalars are weak); the
  lax primitives do both, so eager ``fnp.add(x, y)`` on two arrays is a single primitive call.
* Functions that need floats (sin, true_divide, arctan2, ...) first cast integer and boolean
  inputs to float64 (JAX with x64; numpy agrees for int32/int64 but picks float16/float32 for
  bool/int8/int16). A float32 array stays float32, also with Python scalars.
* ``floor_divide`` and ``remainder`` follow Python's sign rules (numpy's); ``fmod`` and
  ``lax.rem`` the dividend's. Integer ``floor``/``ceil``/``trunc``/``fix`` return their input,
  as numpy 2 does; ``rint`` of integers gives float64.
* ``maximum``/``minimum`` (and ``clip``, built on them) split the gradient evenly at ties, as
  JAX does.

>>> import functrax.numpy as fnp
>>> fnp.add(fnp.ones(2, dtype='float32'), 2.0).dtype
dtype('float32')
>>> fnp.floor_divide(-7, 2), fnp.remainder(-7, 2), fnp.fmod(-7, 2)
(Array(-4), Array(1), Array(-1))
>>> fnp.round(fnp.array([0.125, 2.5]), 2).tolist(), fnp.clip(fnp.arange(5), 1, 3).tolist()
([0.12, 2.5], [1, 1, 2, 3, 3])
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from .. import dtypes, lax
from ..core import Tracer, get_aval, wrap_array, fast_bind
from ..lax import elementwise as _ew
from ._util import asarray_arg

__all__ = [
    # arithmetic
    "add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "remainder", "mod",
    "fmod", "divmod", "power", "pow", "float_power", "negative", "positive", "abs", "absolute",
    "sign", "reciprocal", "square", "sqrt", "cbrt",
    # exponentials and logarithms
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "logaddexp", "logaddexp2",
    # trigonometric and hyperbolic
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh",
    "arcsinh", "arccosh", "arctanh", "asin", "acos", "atan", "atan2", "asinh", "acosh",
    "atanh", "deg2rad", "rad2deg", "degrees", "radians", "hypot", "sinc",
    # extrema
    "maximum", "minimum", "fmax", "fmin", "clip",
    # comparisons and logic
    "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "logical_and",
    "logical_or", "logical_not", "logical_xor",
    # bits
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "invert", "bitwise_invert",
    "left_shift", "right_shift", "bitwise_left_shift", "bitwise_right_shift", "bitwise_count",
    # rounding
    "floor", "ceil", "trunc", "rint", "round", "around", "fix",
    # floating-point classification and manipulation
    "isnan", "isinf", "isfinite", "signbit", "copysign", "nextafter", "heaviside",
    "nan_to_num",
    # complex numbers
    "real", "imag", "conj", "conjugate", "angle",
]

_SEQ = frozenset((list, tuple))
_PY_KIND = {float: "f", int: "i", bool: "b", builtins.complex: "c"}
_float = dtypes.default_float


# ---------------------------------------------------------------------------------------------
# Argument handling. The fast paths only look at type(x) and x.dtype.kind: an eager call on
# arrays of the right kind goes straight to one bind.

def _kind(x):
    k = _PY_KIND.get(type(x))
    if k is not None:
        return k
    return get_aval(x).dtype.kind


def _to_inexact(x):
    """x, or x cast to float64 when it is an integer or boolean (Python ints stay weak)."""
    t = type(x)
    if t is float or t is builtins.complex:
        return x
    if t is int:
        return float(x)
    if t in _SEQ:
        x = asarray_arg(x)
    aval = get_aval(x)
    if aval.dtype.kind in "fc":
        return x
    return lax.convert_element_type(x, _float, weak_type=aval.weak_type)


def _inexact_args(x, y):
    """Cast both operands to float64 unless their promotion is already inexact (float32 with
    int8 stays float32, as in numpy)."""
    if type(x) in _SEQ or type(y) in _SEQ:
        x, y = asarray_arg(x), asarray_arg(y)
    if _kind(x) in "fc" or _kind(y) in "fc":
        return x, y
    return _to_inexact(x), _to_inexact(y)


def _common(*xs):
    """The operands cast to their common (promoted) dtype, and that dtype. Used by
    compositions of several primitives: weak values (Python scalars, traced or not) are cast
    too, because an eager intermediate such as abs(2.0) is a strongly typed float64 array
    that would widen a float32 result (eager arrays carry no weak type)."""
    avals = [get_aval(x) for x in xs]
    dtype, _ = dtypes.promote_avals_dtype(avals)
    out = []
    for x, a in zip(xs, avals):
        if a.dtype != dtype:
            x = lax.convert_element_type(x, dtype) if isinstance(x, Tracer) else \
                np.asarray(x, dtype) if a.weak_type else lax.convert_element_type(x, dtype)
        out.append(x)
    return out, dtype


def _name(fn, name, doc):
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


def _binary(prim, name, doc=None):
    # The fast bind is the function itself: the eager path is one closure call deep. numpy
    # accepts lists eagerly; the traced path converts them with asarray_arg.
    fn = fast_bind(prim, 2, asarray_arg)
    return _name(fn, name, doc or f"numpy.{name}: broadcasting, numpy's dtype promotion.")


def _unary(prim, name, doc=None):
    fn = fast_bind(prim, 1, asarray_arg)
    return _name(fn, name, doc or f"numpy.{name}.")


def _unary_inexact(prim, name, doc=None):
    bind = fast_bind(prim, 1)

    def fn(x, /):
        try:
            if x.dtype.kind in "fc":
                return bind(x)
        except AttributeError:
            pass
        return bind(_to_inexact(x))
    return _name(fn, name, doc or f"numpy.{name}; integer and boolean inputs become float64.")


def _binary_inexact(prim, name, doc=None):
    bind = fast_bind(prim, 2)

    def fn(x, y, /):
        return bind(*_inexact_args(x, y))
    return _name(fn, name, doc or f"numpy.{name}; integer and boolean inputs become float64.")


# ---------------------------------------------------------------------------------------------
# Arithmetic

add = _binary(lax.add_p, "add")
subtract = _binary(lax.sub_p, "subtract")
multiply = _binary(lax.mul_p, "multiply")
true_divide = _binary_inexact(lax.div_p, "true_divide",
                              "x / y; integer division gives float64, as in numpy.")
divide = true_divide
negative = _unary(lax.neg_p, "negative")
maximum = _binary(lax.max_p, "maximum", "Elementwise maximum; NaN propagates; the gradient "
                                        "is split evenly at ties.")
minimum = _binary(lax.min_p, "minimum", "Elementwise minimum; NaN propagates; the gradient "
                                        "is split evenly at ties.")


def positive(x, /):
    """+x (the array itself: functrax arrays are immutable)."""
    x = asarray_arg(x)
    return x if isinstance(x, Tracer) else wrap_array(np.asarray(x))


def absolute(x, /):
    """|x|; the modulus for complex x; booleans and unsigned integers are returned as is."""
    if type(x) in _SEQ:
        x = asarray_arg(x)
    if _kind(x) in "bu":
        return positive(x)
    return lax.abs_p.bind(x)


abs = absolute  # noqa: A001 - numpy's name


def sign(x, /):
    """-1, 0 or 1 with x's dtype (x / |x| for complex x)."""
    return lax.sign(asarray_arg(x))


def _floor_divide_ints(x, y):
    q, r = lax.div(x, y), lax.rem(x, y)
    # C division truncates; step down where the exact quotient was negative and inexact.
    fix = lax.bitwise_and(lax.ne(r, 0), lax.ne(lax.lt(r, 0), lax.lt(y, 0)))
    return lax.select(fix, lax.sub(q, 1), q), lax.select(fix, lax.add(r, y), r)


def _divmod_floats(x, y):
    # numpy's npy_divmod, step by step, so that eager results match numpy's bit for bit.
    mod = lax.rem(x, y)
    div = lax.div(lax.sub(x, mod), y)
    adjust = lax.bitwise_and(lax.ne(mod, 0), lax.ne(lax.lt(y, 0), lax.lt(mod, 0)))
    mod = lax.select(adjust, lax.add(mod, y), mod)
    div = lax.select(adjust, lax.sub(div, 1), div)
    signed_zero = lax.select(lax.lt(y, 0), lax.full_like(mod, -0.0), lax.full_like(mod, 0.0))
    mod = lax.select(lax.eq(mod, 0), signed_zero, mod)
    fl = lax.floor(div)
    fl = lax.select(lax.gt(lax.sub(div, fl), 0.5), lax.add(fl, 1), fl)
    # A zero quotient keeps the sign of x / y; division by zero gives x / y (inf or nan).
    x_over_y = lax.div(x, y)
    fl = lax.select(lax.eq(div, 0), lax.mul(0.0, x_over_y), fl)
    fl = lax.select(lax.eq(y, 0), x_over_y, fl)
    return fl, mod


def _divmod_impl(x, y):
    if type(x) in _SEQ or type(y) in _SEQ:
        x, y = asarray_arg(x), asarray_arg(y)
    (x, y), dtype = _common(x, y)
    if dtype.kind in "iu":
        return _floor_divide_ints(x, y)
    if dtype.kind == "f":
        return _divmod_floats(x, y)
    raise TypeError(f"floor_divide/remainder: requires integer or real floating operands (got "
                    f"{get_aval(x).dtype.name}, {get_aval(y).dtype.name})")


def floor_divide(x, y, /):
    """x // y: the quotient rounded toward minus infinity (Python's and numpy's rule)."""
    return _divmod_impl(x, y)[0]


def remainder(x, y, /):
    """x % y with the sign of y (Python's and numpy's rule); see fmod for C's."""
    return _divmod_impl(x, y)[1]


mod = remainder


def divmod(x, y, /):  # noqa: A001 - numpy's name
    """(floor_divide(x, y), remainder(x, y))."""
    return tuple(_divmod_impl(x, y))


fmod = _binary(lax.rem_p, "fmod", "The remainder of x / y with the sign of x (C's fmod).")


def _int_power(x, y, dtype):
    """x ** y for integer arrays, by binary exponentiation over the bits of y (the loop is as
    long as y's largest value eagerly, as the dtype's width under a transformation)."""
    x = lax.convert_element_type(x, dtype) if get_aval(x).dtype != dtype else x
    y = lax.convert_element_type(y, dtype) if get_aval(y).dtype != dtype else y
    if isinstance(y, Tracer):
        nbits = dtype.itemsize * 8
    else:
        y_np = np.asarray(y)
        if dtype.kind == "i" and y_np.size and np.any(y_np < 0):
            raise ValueError("power: integers to negative integer powers are not allowed")
        nbits = int(y_np.max()).bit_length() if y_np.size else 0
    acc = lax.full_like(lax.add(x, y), 1)
    base = x
    for i in range(nbits):
        bit = lax.ne(lax.bitwise_and(y, 1), 0)
        acc = lax.select(bit, lax.mul(acc, base), acc)
        if i + 1 < nbits:
            base = lax.mul(base, base)
            y = lax.shift_right_logical(y, 1)
    return acc


def power(x, y, /):
    """x ** y. A static integer exponent uses integer_pow (exact for integer x); integer
    arrays raise to integer powers exactly; otherwise float pow."""
    if type(x) in _SEQ or type(y) in _SEQ:
        x, y = asarray_arg(x), asarray_arg(y)
    ty = type(y)
    if ty is int or isinstance(y, np.integer):
        kx = _kind(x)
        if ty is not int:
            # A numpy integer scalar is strongly typed: promote x first (float32 ** int64 is
            # float64 in numpy).
            x = _common_with(x, y)
            kx = _kind(x)
            y = int(y)
        if kx == "b":
            x = lax.convert_element_type(x, dtypes.default_int)
        elif kx in "iu" and y < 0:
            raise ValueError("power: integers to negative integer powers are not allowed")
        return lax.integer_pow(x, y)
    (x, y), dtype = _common(x, y)
    if dtype.kind == "b":
        dtype = np.dtype(np.int8)
    if dtype.kind in "iu":
        return _int_power(x, y, dtype)
    return lax.pow(x, y)


def _common_with(x, y):
    """x cast to the promotion of x and y."""
    dtype = dtypes.promote_avals_dtype([get_aval(x), get_aval(y)])[0]
    return x if get_aval(x).dtype == dtype else lax.convert_element_type(x, dtype)


pow = power  # noqa: A001 - numpy 2's name


def float_power(x, y, /):
    """x ** y computed in float64 (complex128 for complex operands), as numpy does."""
    x, y = asarray_arg(x), asarray_arg(y)
    target = np.dtype(np.complex128) if "c" in (_kind(x), _kind(y)) else np.dtype(np.float64)
    return lax.pow(lax.convert_element_type(x, target), lax.convert_element_type(y, target))


def reciprocal(x, /):
    """1 / x; integers become float64 first (numpy would divide integers, 1 // x)."""
    return lax.integer_pow(_to_inexact(x), -1)


def square(x, /):
    """x * x (booleans become int8, as in numpy)."""
    x = asarray_arg(x)
    if _kind(x) == "b":
        x = lax.convert_element_type(x, np.int8)
    return lax.integer_pow(x, 2)


sqrt = _unary_inexact(lax.sqrt_p, "sqrt")
cbrt = _unary_inexact(lax.cbrt_p, "cbrt")


# ---------------------------------------------------------------------------------------------
# Exponentials and logarithms

exp = _unary_inexact(lax.exp_p, "exp")
exp2 = _unary_inexact(lax.exp2_p, "exp2")
expm1 = _unary_inexact(lax.expm1_p, "expm1")
log = _unary_inexact(lax.log_p, "log")
log1p = _unary_inexact(lax.log1p_p, "log1p")

_LN2 = math.log(2.0)  # Python floats are weak: float32 stays float32
_LN10 = math.log(10.0)


def log2(x, /):
    """The base-2 logarithm, as log(x) / log(2) (like JAX: may be one ulp off at powers of
    two, where numpy's log2 is exact)."""
    return lax.div(lax.log(_to_inexact(asarray_arg(x))), _LN2)


def log10(x, /):
    """The base-10 logarithm, as log(x) / log(10) (like JAX: may be one ulp off numpy's)."""
    return lax.div(lax.log(_to_inexact(asarray_arg(x))), _LN10)


def _logaddexp(x, y, exp_fn, scale):
    (x, y), _ = _common(*_inexact_args(x, y))
    amax = lax.max(x, y)
    # Where x == y (infinities included) the difference is taken as 0 without computing
    # inf - inf: the result is amax + log(2), with no invalid-value warning and a gradient of
    # 1/2 each (max's tie rule) instead of NaN.
    tie = lax.eq(x, y)
    delta = lax.sub(lax.select(tie, lax.full_like(x, 0), x),
                    lax.select(tie, lax.full_like(y, 0), y))
    # -|delta| as min(delta, -delta): its derivative at delta == 0 is 0 (max/min split ties),
    # so the gradient there is the exact 1/2 each.
    soft = lax.log1p(exp_fn(lax.min(delta, lax.neg(delta))))
    return lax.add(amax, soft if scale is None else lax.div(soft, scale))


def logaddexp(x, y, /):
    """log(exp(x) + exp(y)) without overflow."""
    return _logaddexp(x, y, lax.exp, None)


def logaddexp2(x, y, /):
    """log2(2**x + 2**y) without overflow."""
    return _logaddexp(x, y, lax.exp2, _LN2)


# ---------------------------------------------------------------------------------------------
# Trigonometric and hyperbolic functions

sin = _unary_inexact(lax.sin_p, "sin")
cos = _unary_inexact(lax.cos_p, "cos")
tan = _unary_inexact(lax.tan_p, "tan")
arcsin = asin = _unary_inexact(lax.asin_p, "arcsin")
arccos = acos = _unary_inexact(lax.acos_p, "arccos")
arctan = atan = _unary_inexact(lax.atan_p, "arctan")
arctan2 = atan2 = _binary_inexact(lax.atan2_p, "arctan2",
                                  "The angle of the point (x2, x1), in (-pi, pi].")
sinh = _unary_inexact(lax.sinh_p, "sinh")
cosh = _unary_inexact(lax.cosh_p, "cosh")
tanh = _unary_inexact(lax.tanh_p, "tanh")
arcsinh = asinh = _unary_inexact(lax.asinh_p, "arcsinh")
arccosh = acosh = _unary_inexact(lax.acosh_p, "arccosh")
arctanh = atanh = _unary_inexact(lax.atanh_p, "arctanh")

_DEG_PER_RAD = 180.0 / math.pi
_RAD_PER_DEG = math.pi / 180.0


def deg2rad(x, /):
    """Degrees to radians."""
    return lax.mul(_to_inexact(asarray_arg(x)), _RAD_PER_DEG)


def rad2deg(x, /):
    """Radians to degrees."""
    return lax.mul(_to_inexact(asarray_arg(x)), _DEG_PER_RAD)


radians = deg2rad
degrees = rad2deg


def hypot(x, y, /):
    """sqrt(x**2 + y**2) without overflow or underflow; inf if either is infinite."""
    (x, y), _ = _common(*_inexact_args(x, y))
    ax, ay = lax.abs(x), lax.abs(y)
    big, small = lax.max(ax, ay), lax.min(ax, ay)
    safe_big = lax.select(lax.eq(big, 0), lax.full_like(big, 1), big)
    ratio = lax.div(small, safe_big)
    out = lax.mul(big, lax.sqrt(lax.add(1, lax.mul(ratio, ratio))))
    either_inf = lax.bitwise_or(lax.eq(ax, np.inf), lax.eq(ay, np.inf))
    return lax.select(either_inf, lax.full_like(out, np.inf), out)


def sinc(x, /):
    """sin(pi x) / (pi x), with the value 1 at 0."""
    x = _to_inexact(asarray_arg(x))
    zero = lax.eq(x, 0)
    safe = lax.select(zero, lax.full_like(x, 1), x)
    pix = lax.mul(safe, math.pi)
    general = lax.div(lax.sin(pix), pix)
    # At exactly 0 use the Taylor polynomial 1 - t/6 + t^2/120 - t^3/5040 (t = (pi x)^2): the
    # value is 1 and derivatives through the sixth are right there too.
    t = lax.mul(lax.mul(x, x), math.pi ** 2)
    taylor = lax.add(1, lax.mul(t, lax.add(-1 / 6, lax.mul(t, lax.add(
        1 / 120, lax.mul(t, -1 / 5040))))))
    return lax.select(zero, taylor, general)


# ---------------------------------------------------------------------------------------------
# Extrema

def _fext(prim, x, y):
    if type(x) in _SEQ or type(y) in _SEQ:
        x, y = asarray_arg(x), asarray_arg(y)
    if _kind(x) not in "fc" and _kind(y) not in "fc":
        return prim.bind(x, y)
    (x, y), _ = _common(x, y)
    out = prim.bind(x, y)
    out = lax.select(lax.ne(x, x), lax.select(lax.ne(y, y), out, y), out)
    return lax.select(lax.bitwise_and(lax.ne(y, y), lax.eq(x, x)), x, out)


def fmax(x, y, /):
    """Elementwise maximum ignoring NaN (NaN only where both are NaN)."""
    return _fext(lax.max_p, x, y)


def fmin(x, y, /):
    """Elementwise minimum ignoring NaN (NaN only where both are NaN)."""
    return _fext(lax.min_p, x, y)


_NOVALUE = object()


def clip(a, a_min=_NOVALUE, a_max=_NOVALUE, /, *, min=_NOVALUE, max=_NOVALUE):  # noqa: A002
    """a limited to [a_min, a_max] (either may be None); ``min=``/``max=`` are numpy 2's
    spellings. Built from maximum and minimum, so ties split the gradient as in JAX."""
    if min is not _NOVALUE:
        if a_min is not _NOVALUE and a_min is not None:
            raise TypeError("clip: pass the lower bound as a_min or as min=, not both")
        a_min = min
    if max is not _NOVALUE:
        if a_max is not _NOVALUE and a_max is not None:
            raise TypeError("clip: pass the upper bound as a_max or as max=, not both")
        a_max = max
    out = asarray_arg(a)
    if a_min is not _NOVALUE and a_min is not None:
        out = lax.max(out, asarray_arg(a_min))
    if a_max is not _NOVALUE and a_max is not None:
        out = lax.min(out, asarray_arg(a_max))
    return out


# ---------------------------------------------------------------------------------------------
# Comparisons and logic

equal = _binary(lax.eq_p, "equal")
not_equal = _binary(lax.ne_p, "not_equal")
less = _binary(lax.lt_p, "less")
less_equal = _binary(lax.le_p, "less_equal")
greater = _binary(lax.gt_p, "greater")
greater_equal = _binary(lax.ge_p, "greater_equal")


def _truth(x):
    x = asarray_arg(x)
    return x if _kind(x) == "b" else lax.ne(x, 0)


def logical_and(x, y, /):
    """x and y elementwise (nonzero is true)."""
    return lax.bitwise_and(_truth(x), _truth(y))


def logical_or(x, y, /):
    """x or y elementwise (nonzero is true)."""
    return lax.bitwise_or(_truth(x), _truth(y))


def logical_xor(x, y, /):
    """x xor y elementwise (nonzero is true)."""
    return lax.bitwise_xor(_truth(x), _truth(y))


def logical_not(x, /):
    """not x elementwise (nonzero is true)."""
    return lax.bitwise_not(_truth(x))


# ---------------------------------------------------------------------------------------------
# Bits

bitwise_and = _binary(lax.and_p, "bitwise_and", "Bitwise and (logical and for booleans).")
bitwise_or = _binary(lax.or_p, "bitwise_or", "Bitwise or (logical or for booleans).")
bitwise_xor = _binary(lax.xor_p, "bitwise_xor", "Bitwise xor (logical xor for booleans).")
invert = _unary(lax.not_p, "invert", "Bitwise not (logical not for booleans).")
bitwise_not = bitwise_invert = invert
left_shift = bitwise_left_shift = _binary(lax.shift_left_p, "left_shift",
                                          "x << y (0 once y reaches the bit width).")


def right_shift(x, y, /):
    """x >> y: arithmetic for signed integers, logical for unsigned ones (numpy's rule)."""
    x, y = asarray_arg(x), asarray_arg(y)
    dtype = dtypes.promote_avals_dtype([get_aval(x), get_aval(y)])[0]
    if dtype.kind == "u":
        return lax.shift_right_logical(x, y)
    return lax.shift_right_arithmetic(x, y)


bitwise_right_shift = right_shift


def bitwise_count(x, /):
    """The number of set bits of |x| (numpy's rule), as uint8."""
    x = asarray_arg(x)
    k = _kind(x)
    if k == "i":
        x = lax.abs(x)
    elif k == "b":
        x = lax.convert_element_type(x, np.uint8)
    return lax.convert_element_type(lax.population_count(x), np.uint8)


# ---------------------------------------------------------------------------------------------
# Rounding

def _int_identity(fn_name, float_fn):
    def fn(x, /):
        if type(x) in _SEQ:
            x = asarray_arg(x)
        k = _kind(x)
        if k == "f":
            return float_fn(x)
        if k in "iub":
            return positive(x)
        raise TypeError(f"{fn_name}: not supported for {get_aval(x).dtype.name} inputs")
    return fn


def _trunc(x):
    return lax.select(lax.lt(x, 0), lax.ceil(x), lax.floor(x))


floor = _name(_int_identity("floor", lax.floor), "floor",
              "The largest integer <= x (integer inputs are returned as they are).")
ceil = _name(_int_identity("ceil", lax.ceil), "ceil",
             "The smallest integer >= x (integer inputs are returned as they are).")
trunc = _name(_int_identity("trunc", _trunc), "trunc",
              "x rounded toward zero (integer inputs are returned as they are).")
fix = _name(_int_identity("fix", _trunc), "fix", "x rounded toward zero, as numpy.fix.")


def rint(x, /):
    """Round to the nearest integer, ties to even; integers become float64 (numpy's rule)."""
    x = _to_inexact(asarray_arg(x))
    if _kind(x) == "c":
        return lax.complex(rint(lax.real(x)), rint(lax.imag(x)))
    return lax.round(x, lax.RoundingMethod.TO_NEAREST_EVEN)


def round(a, decimals=0, out=None):  # noqa: A001 - numpy's name
    """Round to ``decimals`` decimal places, ties to even, as numpy: x * 10**d rounded, then
    divided by 10**d. Integers with decimals >= 0 are returned as they are."""
    if out is not None:
        raise TypeError("round: functrax arrays are immutable; out= is not supported")
    x = asarray_arg(a)
    decimals = int(decimals)
    k = _kind(x)
    if k == "c":
        return lax.complex(round(lax.real(x), decimals), round(lax.imag(x), decimals))
    if k in "iub":
        if decimals >= 0 or k == "b":
            return positive(x)
        dtype = get_aval(x).dtype
        scale = 10 ** (-decimals)
        xf = lax.convert_element_type(x, _float)
        r = lax.mul(lax.round(lax.div(xf, float(scale)), lax.RoundingMethod.TO_NEAREST_EVEN),
                    float(scale))
        return lax.convert_element_type(r, dtype)
    if k != "f":
        raise TypeError(f"round: not supported for {get_aval(x).dtype.name} inputs")
    even = lax.RoundingMethod.TO_NEAREST_EVEN
    if decimals == 0:
        return lax.round(x, even)
    if decimals > 0:
        scale = 10.0 ** decimals
        return lax.div(lax.round(lax.mul(x, scale), even), scale)
    scale = 10.0 ** (-decimals)
    return lax.mul(lax.round(lax.div(x, scale), even), scale)


around = round


# ---------------------------------------------------------------------------------------------
# Floating-point classification and manipulation

def _const_like(x, value):
    return lax.full(get_aval(x).shape, value, np.bool_)


def isnan(x, /):
    """True where x is NaN (never for integers)."""
    x = asarray_arg(x)
    if _kind(x) in "fc":
        return lax.ne(x, x)
    return _const_like(x, False)


def isinf(x, /):
    """True where x is +inf or -inf."""
    x = asarray_arg(x)
    k = _kind(x)
    if k == "c":
        return lax.bitwise_or(isinf(lax.real(x)), isinf(lax.imag(x)))
    if k == "f":
        return lax.eq(lax.abs(x), np.inf)
    return _const_like(x, False)


def isfinite(x, /):
    """True where x is neither infinite nor NaN."""
    x = asarray_arg(x)
    k = _kind(x)
    if k == "c":
        return lax.bitwise_and(lax.is_finite(lax.real(x)), lax.is_finite(lax.imag(x)))
    if k == "f":
        return lax.is_finite(x)
    return _const_like(x, True)


def signbit(x, /):
    """True where the sign bit is set (also for -0.0 and -inf)."""
    x = asarray_arg(x)
    k = _kind(x)
    if k == "f":
        # atan2(x, -1) is +pi at +0.0 and -pi at -0.0, and has x's sign elsewhere: the sign bit
        # without a bit cast and without the division-by-zero warning of 1 / x.
        return lax.lt(lax.atan2(x, lax.full_like(x, -1)), 0)
    if k == "i":
        return lax.lt(x, 0)
    if k in "ub":
        return _const_like(x, False)
    raise TypeError(f"signbit: not supported for {get_aval(x).dtype.name} inputs")


def copysign(x, y, /):
    """|x| with the sign of y."""
    (x, y), _ = _common(*_inexact_args(x, y))
    ax = lax.abs(x)
    return lax.select(signbit(y), lax.neg(ax), ax)


nextafter = _binary_inexact(lax.nextafter_p, "nextafter",
                            "The next float after x in the direction of y.")


def heaviside(x, y, /):
    """0 where x < 0, 1 where x > 0, y where x == 0 (NaN where x is NaN)."""
    (x, y), _ = _common(*_inexact_args(x, y))
    step = lax.select(lax.gt(x, 0), 1, y)
    step = lax.select(lax.lt(x, 0), 0, step)
    return lax.select(lax.ne(x, x), x, step)


def nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    """NaN -> ``nan``, +inf -> ``posinf`` (default: the largest float), -inf -> ``neginf``
    (default: the most negative float); other values and integer arrays unchanged."""
    x = asarray_arg(x)
    k = _kind(x)
    if k == "c":
        parts = [nan_to_num(p, nan=nan, posinf=posinf, neginf=neginf)
                 for p in (lax.real(x), lax.imag(x))]
        return lax.complex(*parts)
    if k != "f":
        return positive(x)
    info = np.finfo(get_aval(x).dtype)
    posinf = float(info.max) if posinf is None else posinf
    neginf = float(info.min) if neginf is None else neginf
    out = lax.select(lax.ne(x, x), nan, x)
    out = lax.select(lax.eq(x, np.inf), posinf, out)
    return lax.select(lax.eq(x, -np.inf), neginf, out)


# ---------------------------------------------------------------------------------------------
# Complex numbers

def real(x, /):
    """The real part (x itself for real arrays)."""
    x = asarray_arg(x)
    return lax.real(x) if _kind(x) == "c" else positive(x)


def imag(x, /):
    """The imaginary part (zeros of x's dtype for real arrays)."""
    x = asarray_arg(x)
    if _kind(x) == "c":
        return lax.imag(x)
    aval = get_aval(x)
    return lax.full(aval.shape, 0, aval.dtype)


def conjugate(x, /):
    """The complex conjugate (x itself for real arrays)."""
    x = asarray_arg(x)
    return lax.conj(x) if _kind(x) == "c" else positive(x)


conj = conjugate


def angle(z, deg=False):
    """The argument of z in (-pi, pi] (degrees if ``deg``); pi for negative reals."""
    z = _to_inexact(asarray_arg(z))
    if _kind(z) == "c":
        out = lax.atan2(lax.imag(z), lax.real(z))
    else:
        out = lax.atan2(lax.full_like(z, 0), z)
    return lax.mul(out, _DEG_PER_RAD) if deg else out


del _ew
