"""Argument handling shared by functrax.numpy: array conversion and dtype promotion."""
from __future__ import annotations

import numpy as np

from .. import core, dtypes
from ..core import Tracer, get_aval


def asarray_arg(x):
    """Leaves numbers, numpy arrays and tracers as they are; converts lists and tuples."""
    if isinstance(x, (list, tuple)):
        if any(isinstance(e, Tracer) for e in _flat(x)):
            from .creation import array
            return array(x)
        return np.asarray(x)
    return x


def _flat(x):
    for e in x:
        if isinstance(e, (list, tuple)):
            yield from _flat(e)
        else:
            yield e


def promote_inexact(name, *args):
    """Cast integer and boolean arguments to the default float, as JAX's numpy does for
    functions such as sin and true_divide (float32 stays float32)."""
    from .. import lax
    out = []
    for x in args:
        x = asarray_arg(x)
        aval = get_aval(x)
        if not dtypes.is_inexact(aval.dtype):
            x = lax.convert_element_type(x, dtypes.default_float, weak_type=aval.weak_type)
        out.append(x)
    return out


def check_arraylike(name, *args):
    for i, x in enumerate(args):
        if isinstance(x, (str, bytes)) or x is None or not (
                isinstance(x, (Tracer, np.ndarray, np.generic, int, float, complex, bool,
                               list, tuple)) or hasattr(x, "__array__")):
            raise TypeError(f"{name}: argument {i} of type {type(x).__name__} is not array-like")


def shape_of(x):
    return get_aval(x).shape


def dtype_of(x):
    return get_aval(x).dtype


def is_tracer(x):
    return isinstance(x, Tracer)


canonicalize_shape = core.canonicalize_shape
