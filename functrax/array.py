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
    apply``. Repeated indices accumulate for add/multiply/min/max, as scatter does.

    Every method takes JAX's keywords, and only those (others raise TypeError):

    * ``mode``: what out-of-bounds integer indices do (no IndexError in any mode).
      None (``'promise_in_bounds'``) clamps them in ``get`` and drops their updates;
      ``'clip'`` clamps them; ``'drop'``/``'fill'`` drop updates and make ``get`` return
      ``fill_value``. Another mode raises ValueError.
    * ``fill_value`` (``get`` only): the value read at out-of-bounds indices in 'fill' mode;
      by default NaN for inexact dtypes, the smallest signed / largest unsigned integer, True
      for bools.
    * ``wrap_negative_indices`` (default True): False makes negative indices out of bounds.
    * ``indices_are_sorted``, ``unique_indices``: hints; results never depend on them.

    >>> import functrax.numpy as fnp
    >>> x = fnp.arange(4.0)
    >>> x.at[9].add(1.0).tolist(), x.at[9].add(1.0, mode="clip").tolist()
    ([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 4.0])
    >>> x.at[9].get().item(), x.at[9].get(mode="fill").item()
    (3.0, nan)
    >>> x.at[9].get(mode="fill", fill_value=-1).item()
    -1.0
    """

    __slots__ = ("array", "index")

    def __init__(self, array, index):
        self.array = array
        self.index = index

    def __repr__(self):
        return f"_IndexUpdateRef({self.array!r}, {self.index!r})"

    def _scatter(self, values, op, indices_are_sorted, unique_indices, mode,
                 wrap_negative_indices):
        from .numpy.indexing import index_update
        return index_update(self.array, self.index, values, op, mode=mode,
                            indices_are_sorted=indices_are_sorted,
                            unique_indices=unique_indices,
                            wrap_negative_indices=wrap_negative_indices)

    def _read(self, wrap_negative_indices):
        # The current values for power/apply. Their out-of-bounds entries are never written
        # back (dropped) or are written back clamped, so reading them clamped is exact.
        from .numpy.indexing import getitem
        return getitem(self.array, self.index, mode="clip",
                       wrap_negative_indices=wrap_negative_indices)

    def get(self, *, indices_are_sorted=False, unique_indices=False, mode=None,
            fill_value=None, wrap_negative_indices=True):
        from .numpy.indexing import getitem
        return getitem(self.array, self.index, mode="promise_in_bounds" if mode is None
                       else mode, fill_value=fill_value, indices_are_sorted=indices_are_sorted,
                       unique_indices=unique_indices,
                       wrap_negative_indices=wrap_negative_indices)

    def set(self, values, *, indices_are_sorted=False, unique_indices=False, mode=None,
            wrap_negative_indices=True):
        return self._scatter(values, "set", indices_are_sorted, unique_indices, mode,
                             wrap_negative_indices)

    def add(self, values, *, indices_are_sorted=False, unique_indices=False, mode=None,
            wrap_negative_indices=True):
        return self._scatter(values, "add", indices_are_sorted, unique_indices, mode,
                             wrap_negative_indices)

    def subtract(self, values, *, indices_are_sorted=False, unique_indices=False, mode=None,
                 wrap_negative_indices=True):
        from . import numpy as fnp
        return self._scatter(fnp.negative(values), "add", indices_are_sorted, unique_indices,
                             mode, wrap_negative_indices)

    def multiply(self, values, *, indices_are_sorted=False, unique_indices=False, mode=None,
                 wrap_negative_indices=True):
        return self._scatter(values, "mul", indices_are_sorted, unique_indices, mode,
                             wrap_negative_indices)

    mul = multiply

    def divide(self, values, *, indices_are_sorted=False, unique_indices=False, mode=None,
               wrap_negative_indices=True):
        from . import numpy as fnp
        return self._scatter(fnp.reciprocal(fnp.asarray(values, dtype=self.array.dtype)), "mul",
                             indices_are_sorted, unique_indices, mode, wrap_negative_indices)

    def power(self, values, *, indices_are_sorted=False, unique_indices=False, mode=None,
              wrap_negative_indices=True):
        from . import numpy as fnp
        new = fnp.power(self._read(wrap_negative_indices), values)
        return self.set(new, indices_are_sorted=indices_are_sorted,
                        unique_indices=unique_indices, mode=mode,
                        wrap_negative_indices=wrap_negative_indices)

    def min(self, values, *, indices_are_sorted=False, unique_indices=False, mode=None,
            wrap_negative_indices=True):
        return self._scatter(values, "min", indices_are_sorted, unique_indices, mode,
                             wrap_negative_indices)

    def max(self, values, *, indices_are_sorted=False, unique_indices=False, mode=None,
            wrap_negative_indices=True):
        return self._scatter(values, "max", indices_are_sorted, unique_indices, mode,
                             wrap_negative_indices)

    def apply(self, func, *, indices_are_sorted=False, unique_indices=False, mode=None,
              wrap_negative_indices=True):
        return self.set(func(self._read(wrap_negative_indices)),
                        indices_are_sorted=indices_are_sorted, unique_indices=unique_indices,
                        mode=mode, wrap_negative_indices=wrap_negative_indices)
