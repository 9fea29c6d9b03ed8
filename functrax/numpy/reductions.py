"""Reductions with numpy's axis/keepdims/dtype conventions: sum, mean, max, min (first few).

>>> import functrax.numpy as fnp
>>> fnp.sum(fnp.ones((2, 3)), axis=0).tolist()
[2.0, 2.0]
"""
from __future__ import annotations

import numpy as np

from .. import dtypes, lax
from ..core import get_aval
from ._util import asarray_arg


def _axes(x, axis):
    ndim = get_aval(x).ndim
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    out = []
    for a in axis:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim)
    return tuple(sorted(out))


def _keepdims(x, out, axes):
    shape = list(get_aval(x).shape)
    for a in axes:
        shape[a] = 1
    return lax.reshape(out, tuple(shape))


def sum(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):  # noqa: A001
    """numpy.sum: booleans and small integers accumulate in the default int, as numpy does."""
    a = asarray_arg(a)
    aval = get_aval(a)
    if dtype is None:
        if dtypes.is_bool(aval.dtype) or (dtypes.is_integer(aval.dtype) and
                                         aval.dtype.itemsize < 8):
            dtype = np.dtype(np.int64) if aval.dtype.kind != "u" else np.dtype(np.uint64)
    if dtype is not None:
        a = lax.convert_element_type(a, dtype)
    axes = _axes(a, axis)
    r = lax.reduce_sum(a, axes)
    if initial is not None:
        r = lax.add(r, initial)
    return _keepdims(a, r, axes) if keepdims else r


def mean(a, axis=None, dtype=None, out=None, keepdims=False):
    a = asarray_arg(a)
    aval = get_aval(a)
    axes = _axes(a, axis)
    n = int(np.prod([aval.shape[i] for i in axes], dtype=np.int64))
    if dtype is None and not dtypes.is_inexact(aval.dtype):
        dtype = dtypes.default_float
    s = sum(a, axis=axes, dtype=dtype, keepdims=keepdims)
    return lax.div(s, float(n))


def max(a, axis=None, out=None, keepdims=False):  # noqa: A001
    a = asarray_arg(a)
    axes = _axes(a, axis)
    r = lax.reduce_max(a, axes)
    return _keepdims(a, r, axes) if keepdims else r


def min(a, axis=None, out=None, keepdims=False):  # noqa: A001
    a = asarray_arg(a)
    axes = _axes(a, axis)
    r = lax.reduce_min(a, axes)
    return _keepdims(a, r, axes) if keepdims else r


amax, amin = max, min
