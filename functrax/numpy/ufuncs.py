"""numpy's ufuncs over lax: arithmetic, comparisons, logic and math functions.

Binary functions broadcast and promote as numpy does (the lax primitives do both), so eager
``fnp.add(x, y)`` is a single primitive call. Functions that need floats (sin, true_divide,
...) promote integer inputs to float64 first.

>>> import functrax.numpy as fnp
>>> fnp.add(fnp.ones(2, dtype='float32'), 2.0).dtype
dtype('float32')
"""
from __future__ import annotations

import numpy as np

from .. import lax
from ._util import asarray_arg, promote_inexact


def _binary(lax_fn, name):
    def fn(x, y, /):
        return lax_fn(asarray_arg(x), asarray_arg(y))
    fn.__name__ = name
    fn.__doc__ = f"numpy.{name} with numpy broadcasting and promotion."
    return fn


def _binary_inexact(lax_fn, name):
    def fn(x, y, /):
        return lax_fn(*promote_inexact(name, x, y))
    fn.__name__ = name
    fn.__doc__ = f"numpy.{name}; integer inputs are promoted to float."
    return fn


def _unary(lax_fn, name):
    def fn(x, /):
        return lax_fn(asarray_arg(x))
    fn.__name__ = name
    fn.__doc__ = f"numpy.{name}."
    return fn


def _unary_inexact(lax_fn, name):
    def fn(x, /):
        return lax_fn(*promote_inexact(name, x))
    fn.__name__ = name
    fn.__doc__ = f"numpy.{name}; integer inputs are promoted to float."
    return fn


add = _binary(lax.add, "add")
subtract = _binary(lax.sub, "subtract")
multiply = _binary(lax.mul, "multiply")
true_divide = divide = _binary_inexact(lax.div, "true_divide")
maximum = _binary(lax.max, "maximum")
minimum = _binary(lax.min, "minimum")
equal = _binary(lax.eq, "equal")
not_equal = _binary(lax.ne, "not_equal")
less = _binary(lax.lt, "less")
less_equal = _binary(lax.le, "less_equal")
greater = _binary(lax.gt, "greater")
greater_equal = _binary(lax.ge, "greater_equal")

negative = _unary(lax.neg, "negative")
absolute = abs = _unary(lax.abs, "absolute")  # noqa: A001
sign = _unary(lax.sign, "sign")
exp = _unary_inexact(lax.exp, "exp")
log = _unary_inexact(lax.log, "log")
expm1 = _unary_inexact(lax.expm1, "expm1")
log1p = _unary_inexact(lax.log1p, "log1p")
sin = _unary_inexact(lax.sin, "sin")
cos = _unary_inexact(lax.cos, "cos")
tanh = _unary_inexact(lax.tanh, "tanh")
sqrt = _unary_inexact(lax.sqrt, "sqrt")
floor = _unary_inexact(lax.floor, "floor")


def positive(x, /):
    return asarray_arg(x)


def power(x, y, /):
    """x ** y: a static integer exponent uses integer_pow (exact for integer x)."""
    x = asarray_arg(x)
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
        return lax.integer_pow(x, int(y))
    x, y = asarray_arg(x), asarray_arg(y)
    from .. import dtypes
    from ..core import get_aval
    if not dtypes.is_inexact(dtypes.promote_avals_dtype([get_aval(x), get_aval(y)])[0]):
        # Integer ** integer array: no lax primitive; go through float and back.
        out_dtype = dtypes.promote_avals_dtype([get_aval(x), get_aval(y)])[0]
        xf, yf = promote_inexact("power", x, y)
        return lax.convert_element_type(lax.round(lax.pow(xf, yf)) if hasattr(lax, "round")
                                        else lax.pow(xf, yf), out_dtype)
    return lax.pow(*promote_inexact("power", x, y))


def square(x, /):
    return lax.integer_pow(asarray_arg(x), 2)


def reciprocal(x, /):
    x = asarray_arg(x)
    return lax.div(1.0 if np.issubdtype(np.asarray(0, dtype=_dtype(x)).dtype, np.inexact)
                   else 1, x)


def _dtype(x):
    from ..core import get_aval
    return get_aval(x).dtype
