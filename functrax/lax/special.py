"""Special functions: erf, erfc, erf_inv, lgamma, digamma and polygamma.

The impls call ``scipy.special`` (a runtime dependency); the results keep the operand's float
dtype. Like the transcendental primitives, these require real floating-point operands.
Derivatives are closed forms written with functrax operations, so they differentiate again:
erf' = 2/sqrt(pi) exp(-x^2), erf_inv' = sqrt(pi)/2 exp(erf_inv(x)^2), lgamma' = digamma,
digamma' = polygamma(1, .), polygamma(m, .)' = polygamma(m + 1, .).

>>> from functrax import lax
>>> float(lax.erf(0.5).round(6)), float(lax.lgamma(5.0).round(6))
(0.5205, 3.178054)
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes
from ..core import Primitive
from ..interpreters import batching
from ..interpreters.jvp import defjvp, defjvp2
from ._util import array_namespace, scipy_namespace, standard_elementwise_abstract_eval
from .elementwise import exp, mul, neg

__all__ = ["erf", "erfc", "erf_inv", "lgamma", "digamma", "polygamma",
           "erf_p", "erfc_p", "erf_inv_p", "lgamma_p", "digamma_p", "polygamma_p"]

_MSG = "requires real floating-point operands; convert integers with astype"


def _require_float(dtype):
    return dtypes.is_float(dtype)


def _scipy(fn_name, xp=np):
    # scipy.special costs ~0.3 s to import: load it on first use, not with functrax. Arrays
    # on a GPU use cupyx.scipy.special (same names), so they stay there.
    return getattr(scipy_namespace(xp, "special"), fn_name)


def _scipy_impl(fn, name):
    def impl(x):
        xp = array_namespace(x)
        x = xp.asarray(x)
        if x.dtype.kind != "f":
            # Refused eagerly as in the abstract eval (scipy would compute in float64).
            raise TypeError(f"{name}: {_MSG} (got {x.dtype.name})")
        return xp.asarray(_scipy(fn, xp)(x)).astype(x.dtype, copy=False)
    impl.__name__ = name
    return impl


def _special_unop(name, fn):
    p = Primitive(name)
    p.def_impl(_scipy_impl(fn, name))
    p.def_abstract_eval(lambda x: standard_elementwise_abstract_eval(
        name, x, require=_require_float, require_msg=_MSG))
    batching.defvectorized(p)
    return p


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)  # Python floats: weak, float32 stays float32
_SQRT_PI_OVER_TWO = math.sqrt(math.pi) / 2.0


erf_p = _special_unop("erf", "erf")


def erf(x):
    """The error function, 2/sqrt(pi) * integral of exp(-t^2) from 0 to x."""
    return erf_p.bind(x)


defjvp(erf_p, lambda g, x: mul(g, mul(_TWO_OVER_SQRT_PI, exp(neg(mul(x, x))))))


erfc_p = _special_unop("erfc", "erfc")


def erfc(x):
    """1 - erf(x), accurate where erf(x) is close to 1."""
    return erfc_p.bind(x)


defjvp(erfc_p, lambda g, x: mul(g, mul(-_TWO_OVER_SQRT_PI, exp(neg(mul(x, x))))))


erf_inv_p = _special_unop("erf_inv", "erfinv")


def erf_inv(x):
    """The inverse of erf on (-1, 1)."""
    return erf_inv_p.bind(x)


defjvp2(erf_inv_p, lambda g, ans, x: mul(g, mul(_SQRT_PI_OVER_TWO, exp(mul(ans, ans)))))


lgamma_p = _special_unop("lgamma", "gammaln")


def lgamma(x):
    """log |Gamma(x)|."""
    return lgamma_p.bind(x)


defjvp(lgamma_p, lambda g, x: mul(g, digamma(x)))


digamma_p = _special_unop("digamma", "digamma")


def digamma(x):
    """The derivative of lgamma."""
    return digamma_p.bind(x)


defjvp(digamma_p, lambda g, x: mul(g, polygamma(1, x)))


def _polygamma_impl(x, *, m):
    xp = array_namespace(x)
    x = xp.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"polygamma: {_MSG} (got {x.dtype.name})")
    return xp.asarray(_scipy("polygamma", xp)(m, x)).astype(x.dtype, copy=False)


def _polygamma_abstract_eval(x, *, m):
    if m < 0:
        raise ValueError(f"polygamma: the order m must be a non-negative integer, got {m}")
    return standard_elementwise_abstract_eval("polygamma", x, require=_require_float,
                                              require_msg=_MSG)


polygamma_p = Primitive("polygamma")
polygamma_p.def_impl(_polygamma_impl)
polygamma_p.def_abstract_eval(_polygamma_abstract_eval)
batching.defvectorized(polygamma_p)


def polygamma(m, x):
    """The m-th derivative of digamma, for a static non-negative integer order m."""
    from ..core import concrete_or_error
    m_val = concrete_or_error(m, "polygamma: the order m must be static")
    if np.ndim(m_val) != 0 or int(m_val) != m_val:
        raise TypeError(f"polygamma: the order m must be a scalar integer, got {m_val!r}")
    if m_val < 0:
        raise ValueError(f"polygamma: the order m must be a non-negative integer, got {m_val}")
    return polygamma_p.bind(x, m=int(m_val))


defjvp(polygamma_p, lambda g, x, *, m: mul(g, polygamma(m + 1, x)))

