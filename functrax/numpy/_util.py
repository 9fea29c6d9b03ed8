"""Argument handling shared by functrax.numpy: array conversion and dtype promotion, and
the wrapper that makes errors raised by a numpy function name the user's line."""
from __future__ import annotations

import functools

import numpy as np

from .. import core, dtypes
from ..core import Tracer, get_aval


def user_line(fn):
    """Errors raised here name the user's line, as errors from abstract evaluation do."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (IndexError, ValueError, TypeError) as e:
            raise core._locate(e) from None
    return wrapper


def asarray_arg(x):
    """Leaves numbers, numpy arrays and tracers as they are; converts lists and tuples."""
    if isinstance(x, (list, tuple)):
        if holds_tracer(x):
            from .creation import array
            return array(x)
        return np.asarray(x)
    return x


def nested_leaves(x):
    """The non-list, non-tuple entries of nested lists and tuples, in order."""
    for e in x:
        if isinstance(e, (list, tuple)):
            yield from nested_leaves(e)
        else:
            yield e


def holds_tracer(x):
    """Whether the nested lists and tuples ``x`` hold a tracer anywhere."""
    return any(isinstance(e, Tracer) for e in nested_leaves(x))


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
