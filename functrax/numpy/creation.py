"""Array creation: array, asarray, zeros, ones, full, arange, ... (the first few; the rest of
numpy's creation API lives here too).

>>> import functrax.numpy as fnp
>>> fnp.zeros((2, 3)).shape
(2, 3)
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes, lax
from ..core import Tracer, get_aval, wrap_array


def asarray(a, dtype=None, copy=None):
    """An array (functrax.Array eagerly, the tracer itself under a transformation)."""
    if isinstance(a, Tracer):
        return a if dtype is None else lax.convert_element_type(a, dtype)
    if isinstance(a, (list, tuple)) and any(isinstance(e, Tracer) for e in _leaves(a)):
        return array(a, dtype=dtype)
    out = np.asarray(a, dtype=dtype)
    if core._state.dynamic is not None:
        return lax.convert_element_type(out, out.dtype) if dtype is not None else out
    return wrap_array(out)


def array(object, dtype=None, copy=True, ndmin=0):  # noqa: A002 - numpy's name
    """Like numpy.array; nested lists of traced values are stacked."""
    if isinstance(object, Tracer):
        out = object if dtype is None else lax.convert_element_type(object, dtype)
    elif isinstance(object, (list, tuple)) and any(isinstance(e, Tracer)
                                                   for e in _leaves(object)):
        from .shape_ops import stack
        elems = [array(e) if isinstance(e, (list, tuple)) else e for e in object]
        avals = [get_aval(e) for e in elems]
        target = dtypes.promote_avals_dtype(avals)[0] if dtype is None else np.dtype(dtype)
        elems = [lax.convert_element_type(e, target) for e in elems]
        out = stack(elems)
    else:
        out = wrap_array(np.array(object, dtype=dtype, copy=True))
    if ndmin and get_aval(out).ndim < ndmin:
        out = lax.reshape(out, (1,) * (ndmin - get_aval(out).ndim) + get_aval(out).shape)
    return out


def _leaves(x):
    for e in x:
        if isinstance(e, (list, tuple)):
            yield from _leaves(e)
        else:
            yield e


def zeros(shape, dtype=None):
    return lax.full(shape, 0, dtypes.canonicalize(dtype))


def ones(shape, dtype=None):
    return lax.full(shape, 1, dtypes.canonicalize(dtype))


def full(shape, fill_value, dtype=None):
    if dtype is None and not isinstance(fill_value, Tracer):
        dtype = np.asarray(fill_value).dtype
    return lax.full(shape, fill_value, dtype)


def empty(shape, dtype=None):
    return zeros(shape, dtype)


def zeros_like(a, dtype=None, shape=None):
    return lax.full_like(a, 0, dtype, shape)


def ones_like(a, dtype=None, shape=None):
    return lax.full_like(a, 1, dtype, shape)


def full_like(a, fill_value, dtype=None, shape=None):
    return lax.full_like(a, fill_value, dtype, shape)


def empty_like(a, dtype=None, shape=None):
    return zeros_like(a, dtype, shape)


def arange(start, stop=None, step=None, dtype=None):
    """numpy.arange with static bounds."""
    start = core.concrete_or_error(start, "arange needs static bounds")
    stop = core.concrete_or_error(stop, "arange needs static bounds")
    step = core.concrete_or_error(step, "arange needs static bounds")
    out = np.arange(start, stop, step, dtype=dtype) if stop is not None else \
        np.arange(start, dtype=dtype) if step is None else np.arange(0, start, step, dtype=dtype)
    return asarray(out)
