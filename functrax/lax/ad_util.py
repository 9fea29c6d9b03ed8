"""stop_gradient: the identity whose derivative is zero.

>>> import functrax as ft
>>> from functrax import lax
>>> ft.grad(lambda x: x * lax.stop_gradient(x))(3.0)
Array(3.)
"""
from __future__ import annotations

from ..core import Primitive, ShapedArray
from ..interpreters import batching
from ..interpreters import jvp as ad

__all__ = ["stop_gradient", "stop_gradient_p"]


def _stop_gradient_impl(x):
    return x


stop_gradient_p = Primitive("stop_gradient")
stop_gradient_p.def_impl(_stop_gradient_impl)
stop_gradient_p.def_abstract_eval(lambda x: ShapedArray(x.shape, x.dtype, x.weak_type))


def stop_gradient(x):
    """x, treated as a constant by every differentiation transform (pytrees too)."""
    from ..tree_util import tree_map
    return tree_map(stop_gradient_p.bind, x)


ad.defjvp_zero(stop_gradient_p)
batching.defvectorized(stop_gradient_p)
