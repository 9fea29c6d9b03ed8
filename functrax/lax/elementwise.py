"""Elementwise primitives: arithmetic, comparisons, logic, transcendental functions.

Elementwise primitives broadcast their operands numpy-style and promote dtypes with numpy's
NEP 50 rules (Python scalars are weak), so the eager path is one call to the numpy ufunc.
Transcendental functions require inexact (float or complex) inputs, as in JAX's lax;
``functrax.numpy`` promotes integers first.

Each primitive is one block: the ``*_p`` object, its wrapper, and its JVP, transpose and
batching rules right below it.

>>> from functrax import lax
>>> lax.mul(lax.sin(0.5), 2.0).round(6)
Array(0.958851)
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .. import dtypes
from ..core import Primitive, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero, defjvp, defjvp2, defjvp_zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules, unbroadcast
from ._util import standard_elementwise_abstract_eval

_inexact = dtypes.is_inexact


def _require_inexact(dtype):
    return dtypes.is_inexact(dtype)


def _require_int_or_bool(dtype):
    return dtypes.is_integer(dtype) or dtypes.is_bool(dtype)


def _require_int(dtype):
    return dtypes.is_integer(dtype)


def _require_real_number(dtype):
    return dtypes.is_integer(dtype) or dtypes.is_float(dtype)


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


sub_p = naryop("sub", np.subtract)


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
    x, y = np.asarray(x), np.asarray(y)
    if dtypes.is_integer(np.result_type(x, y)):
        # lax.div rounds toward zero, like C (numpy's // rounds toward -inf).
        q = np.floor_divide(x, y)
        fix = (np.remainder(x, y) != 0) & ((x < 0) != (y < 0))
        return q + fix.astype(q.dtype)
    return np.true_divide(x, y)


div_p = naryop("div", _div_impl)


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
    return np.fmod(x, y)


rem_p = naryop("rem", _rem_impl, require=_require_real_number,
               require_msg="requires integer or real floating operands")


def rem(x, y):
    return rem_p.bind(x, y)


defjvp(rem_p, lambda g, x, y: g,
       lambda g, x, y: mul(neg(g), mul(sign(div(x, y)), floor(abs(div(x, y))))))


neg_p = unop("neg", np.negative)


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
    return min_p.bind(x, y)


defjvp2(min_p,
        lambda g, ans, x, y: mul(g, _balanced_eq(x, ans, y)),
        lambda g, ans, x, y: mul(g, _balanced_eq(y, ans, x)))


def _pow_impl(x, y):
    return np.power(x, y)


pow_p = naryop("pow", _pow_impl, require=_require_inexact, require_msg=_FLOAT_MSG)


def pow(x, y):  # noqa: A001 - lax's name
    """x ** y for a floating x; use integer_pow for a static integer exponent."""
    return pow_p.bind(x, y)


def _pow_jvp_x(g, x, y):
    return mul(g, mul(y, pow(x, sub(y, 1))))


def _pow_jvp_y(g, x, y):
    # d/dy x**y = log(x) x**y, taken as 0 where x == 0 (the limit from the right).
    safe_x = select_n(eq(x, 0), x, _ones_like(x))
    return mul(g, mul(log(safe_x), pow(x, y)))


defjvp(pow_p, _pow_jvp_x, _pow_jvp_y)


def _integer_pow_impl(x, *, y):
    if y == 2:
        return np.multiply(x, x)
    if y < 0 and not dtypes.is_inexact(np.asarray(x).dtype):
        raise TypeError(f"integer_pow: negative exponent {y} of an integer array")
    return np.power(x, y) if y >= 0 else np.power(np.asarray(x), y)


integer_pow_p = unop("integer_pow", _integer_pow_impl)


def integer_pow(x, y: int):
    """x ** y for a static Python int y."""
    return integer_pow_p.bind(x, y=int(y))


def _integer_pow_jvp(g, x, *, y):
    if y == 0:
        return _zeros_like(g)
    return mul(g, mul(y, x) if y == 2 else mul(y, integer_pow(x, y - 1)))


defjvp(integer_pow_p, _integer_pow_jvp)


# ---------------------------------------------------------------------------------------------
# Transcendental and other float functions

exp_p = unop("exp", np.exp, _require_inexact, _FLOAT_MSG)


def exp(x):
    return exp_p.bind(x)


defjvp2(exp_p, lambda g, ans, x: mul(g, ans))


log_p = unop("log", np.log, _require_inexact, _FLOAT_MSG)


def log(x):
    return log_p.bind(x)


defjvp(log_p, lambda g, x: div(g, x))


expm1_p = unop("expm1", np.expm1, _require_inexact, _FLOAT_MSG)


def expm1(x):
    return expm1_p.bind(x)


defjvp2(expm1_p, lambda g, ans, x: mul(g, add(ans, 1)))


log1p_p = unop("log1p", np.log1p, _require_inexact, _FLOAT_MSG)


def log1p(x):
    return log1p_p.bind(x)


defjvp(log1p_p, lambda g, x: div(g, add(x, 1)))


sin_p = unop("sin", np.sin, _require_inexact, _FLOAT_MSG)


def sin(x):
    return sin_p.bind(x)


defjvp(sin_p, lambda g, x: mul(g, cos(x)))


cos_p = unop("cos", np.cos, _require_inexact, _FLOAT_MSG)


def cos(x):
    return cos_p.bind(x)


defjvp(cos_p, lambda g, x: neg(mul(g, sin(x))))


tanh_p = unop("tanh", np.tanh, _require_inexact, _FLOAT_MSG)


def tanh(x):
    return tanh_p.bind(x)


defjvp2(tanh_p, lambda g, ans, x: mul(g, sub(1, mul(ans, ans))))


sqrt_p = unop("sqrt", np.sqrt, _require_inexact, _FLOAT_MSG)


def sqrt(x):
    return sqrt_p.bind(x)


defjvp2(sqrt_p, lambda g, ans, x: div(g, mul(2, ans)))


def _logistic_impl(x):
    # Stable for large |x|: exp never overflows.
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


logistic_p = unop("logistic", _logistic_impl, _require_inexact, _FLOAT_MSG)


def logistic(x):
    """1 / (1 + exp(-x)), stable at extreme inputs."""
    return logistic_p.bind(x)


defjvp2(logistic_p, lambda g, ans, x: mul(g, mul(ans, sub(1, ans))))


abs_p = unop("abs", np.abs)


def abs(x):  # noqa: A001 - lax's name
    return abs_p.bind(x)


defjvp(abs_p, lambda g, x: mul(g, sign(x)))


sign_p = unop("sign", np.sign)


def sign(x):
    return sign_p.bind(x)


defjvp_zero(sign_p)


floor_p = unop("floor", np.floor, _require_inexact, _FLOAT_MSG)


def floor(x):
    return floor_p.bind(x)


defjvp_zero(floor_p)


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


def _logical_impl(bool_impl, int_impl):
    def impl(*xs):
        arrs = [np.asarray(x) for x in xs]
        if all(a.dtype == np.bool_ for a in arrs):
            return bool_impl(*arrs)
        return int_impl(*xs)
    return impl


_BITWISE_MSG = "requires boolean or integer operands"

and_p = naryop("and", _logical_impl(np.logical_and, np.bitwise_and), _require_int_or_bool,
               _BITWISE_MSG)
or_p = naryop("or", _logical_impl(np.logical_or, np.bitwise_or), _require_int_or_bool,
              _BITWISE_MSG)
not_p = unop("not", _logical_impl(np.logical_not, np.invert), _require_int_or_bool,
             _BITWISE_MSG)
for _p in (and_p, or_p, not_p):
    defjvp_zero(_p)


def bitwise_and(x, y):
    """Logical and for booleans, bitwise and for integers (lax.bitwise_and)."""
    return and_p.bind(x, y)


def bitwise_or(x, y):
    return or_p.bind(x, y)


def bitwise_not(x):
    return not_p.bind(x)


# ---------------------------------------------------------------------------------------------
# select_n: the elementwise choice between cases (the batched form of a branch)

def _select_n_impl(which, *cases):
    which = np.asarray(which)
    if len(cases) == 1:
        return np.broadcast_to(cases[0], np.broadcast_shapes(which.shape,
                                                             np.shape(cases[0]))).copy()
    if which.dtype == np.bool_ and len(cases) == 2:
        return np.where(which, cases[1], cases[0])
    return np.choose(which, cases)


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
