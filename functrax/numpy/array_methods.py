"""Operators and methods of traced arrays (``x + y``, ``x @ w``, ``x.T``, ``x.sum()``,
``x.reshape(...)``, ``x.at[i].set(v)``, ``x[i]``), installed on ``core.Tracer``.

Eager ``functrax.Array`` values keep numpy's own operators (same results, no overhead); a
numpy array on the left of a tracer hands over because tracers set ``__array_ufunc__ = None``.
"""
from __future__ import annotations

from .. import core


def _defer(name):
    def method(self, *args, **kwargs):
        from .. import numpy as fnp
        return getattr(fnp, name)(self, *args, **kwargs)
    method.__name__ = name
    return method


def _binop(name, reflected=False):
    def method(self, other):
        from .. import numpy as fnp
        if not core.is_array_like(other) and not isinstance(other, (list, tuple)):
            return NotImplemented
        fn = getattr(fnp, name)
        return fn(other, self) if reflected else fn(self, other)
    return method


_BINOPS = {
    "add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
    "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "matmul": "matmul",
    "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor",
    "lshift": "left_shift", "rshift": "right_shift",
}
_CMPOPS = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal",
           "gt": "greater", "ge": "greater_equal"}
_UNOPS = {"neg": "negative", "pos": "positive", "abs": "abs", "invert": "invert"}
_METHODS = ["sum", "mean", "max", "min", "prod", "var", "std", "all", "any", "argmax", "argmin",
            "cumsum", "cumprod", "clip", "round", "conj", "conjugate", "dot", "ravel", "squeeze", "swapaxes", "take", "trace", "diagonal", "sort", "argsort",
            "nonzero", "repeat", "transpose", "astype", "reshape"]


def install(cls=core.Tracer):
    for op, fname in _BINOPS.items():
        setattr(cls, f"__{op}__", _binop(fname))
        setattr(cls, f"__r{op}__", _binop(fname, reflected=True))
    for op, fname in _CMPOPS.items():
        setattr(cls, f"__{op}__", _binop(fname))
    for op, fname in _UNOPS.items():
        setattr(cls, f"__{op}__", _defer(fname))
    for name in _METHODS:
        setattr(cls, name, _defer(name))
    cls.__hash__ = core.Tracer.__hash__
    cls.T = property(lambda self: _defer("transpose")(self))
    cls.mT = property(lambda self: _defer("swapaxes")(self, -1, -2))
    cls.real = property(lambda self: _defer("real")(self))
    cls.imag = property(lambda self: _defer("imag")(self))

    def reshape(self, *shape, order="C"):
        from .. import numpy as fnp
        if len(shape) == 1 and not isinstance(shape[0], int):
            shape = shape[0]
        return fnp.reshape(self, shape)

    def transpose(self, *axes):
        from .. import numpy as fnp
        if len(axes) == 1 and not isinstance(axes[0], int):
            axes = axes[0]
        return fnp.transpose(self, axes or None)

    def astype(self, dtype, copy=True):
        from .. import lax
        return lax.convert_element_type(self, dtype)

    def getitem(self, index):
        from .indexing import getitem as _getitem
        return _getitem(self, index)

    def at(self):
        from ..array import _IndexUpdateHelper
        return _IndexUpdateHelper(self)

    cls.flatten = _defer("ravel")
    cls.reshape = reshape
    cls.transpose = transpose
    cls.astype = astype
    cls.__getitem__ = getitem
    cls.at = property(at)
    cls.block_until_ready = lambda self: self
