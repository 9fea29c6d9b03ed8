"""``functrax.Array``: eager results are numpy arrays with JAX's few extras.

``Array`` is a thin subclass of ``numpy.ndarray``: every numpy-aware tool takes it as it is,
and it adds what JAX code relies on — functional updates through ``x.at[idx]``,
``block_until_ready()`` and ``.device``.

>>> import functrax.numpy as fnp
>>> x = fnp.zeros(3)
>>> y = x.at[1].set(7.0)
>>> x.tolist(), y.tolist()
([0.0, 0.0, 0.0], [0.0, 7.0, 0.0])
"""
from __future__ import annotations

import numpy as np


class Array(np.ndarray):
    """A numpy array returned by functrax. Functional updates never change it in place."""

    @property
    def at(self):
        return _IndexUpdateHelper(self)

    def __getitem__(self, index):
        # A traced index (params[i] inside vmap/jit with params closed over) must go through
        # functrax's indexing; everything else is numpy's own, at numpy's speed.
        if _has_tracer(index):
            from .numpy.indexing import getitem
            return getitem(self, index)
        return super().__getitem__(index)

    def block_until_ready(self):
        """Arrays on the CPU are always ready; returns self, as JAX does."""
        return self

    @property
    def device(self):
        from .devices import cpu_device
        return cpu_device()

    def devices(self):
        return {self.device}

    def __repr__(self):
        body = np.array2string(np.asarray(self), separator=", ", prefix="Array(")
        extra = "" if self.dtype in (np.float64, np.int64, np.bool_) else f", dtype={self.dtype}"
        return f"Array({body}{extra})"

    def __reduce__(self):
        # Pickle as a plain ndarray view so files written by functrax load without it.
        return np.asarray(self).__reduce__()


def _has_tracer(index):
    from .core import Tracer
    if isinstance(index, tuple):
        return any(isinstance(i, Tracer) for i in index)
    return isinstance(index, Tracer)


class _IndexUpdateHelper:
    """``x.at[idx]`` returns an updater whose methods return a new array."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __getitem__(self, index):
        return _IndexUpdateRef(self.array, index)

    def __repr__(self):
        return f"_IndexUpdateHelper({self.array!r})"


class _IndexUpdateRef:
    """The methods of ``x.at[idx]``: ``get set add subtract multiply divide power min max
    apply``. Repeated indices accumulate for add/multiply/min/max, as scatter does."""

    __slots__ = ("array", "index")

    def __init__(self, array, index):
        self.array = array
        self.index = index

    def _scatter(self, values, mode):
        from .numpy.indexing import index_update
        return index_update(self.array, self.index, values, mode)

    def get(self, **kwargs):
        from .numpy.indexing import getitem
        return getitem(self.array, self.index)

    def set(self, values, **kwargs):
        return self._scatter(values, "set")

    def add(self, values, **kwargs):
        return self._scatter(values, "add")

    def subtract(self, values, **kwargs):
        from . import numpy as fnp
        return self._scatter(fnp.negative(values), "add")

    def multiply(self, values, **kwargs):
        return self._scatter(values, "mul")

    mul = multiply

    def divide(self, values, **kwargs):
        from . import numpy as fnp
        return self._scatter(fnp.reciprocal(fnp.asarray(values, dtype=self.array.dtype)), "mul")

    def power(self, values, **kwargs):
        from . import numpy as fnp
        return self.set(fnp.power(self.get(), values))

    def min(self, values, **kwargs):
        return self._scatter(values, "min")

    def max(self, values, **kwargs):
        return self._scatter(values, "max")

    def apply(self, func, **kwargs):
        return self.set(func(self.get()))
