"""Dtype rules: numpy's dtypes, numpy's (NEP 50) promotion, weakly typed Python scalars.

functrax follows numpy, which equals JAX with ``jax_enable_x64=True``: float64 is the default
float, int64 the default int, and a Python scalar is *weakly typed*: it takes the dtype of the
array it meets (``float32_array * 2.0`` stays float32).

>>> import numpy as np
>>> result_type(np.dtype('float32'), 2.0)
dtype('float32')
>>> result_type(np.dtype('int32'), 2.0)
dtype('float64')
"""
from __future__ import annotations

import numpy as np

float0 = np.dtype([("float0", np.void, 0)])  # tangent dtype of integer inputs, as in JAX

_SHORT = {
    "float64": "f64", "float32": "f32", "float16": "f16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint64": "u64", "uint32": "u32", "uint16": "u16", "uint8": "u8",
    "bool": "bool", "complex64": "c64", "complex128": "c128",
}

# A representative Python value per kind: numpy's NEP 50 rules treat a Python scalar as weak,
# so handing one of these to np.result_type gives the weak-type promotion we want.
_WEAK_STANDIN = {"b": False, "i": 0, "u": 0, "f": 0.0, "c": 0j}

_PY_SCALAR_DTYPE = {
    bool: np.dtype(np.bool_), int: np.dtype(np.int64), float: np.dtype(np.float64),
    complex: np.dtype(np.complex128),
}

default_float = np.dtype(np.float64)
default_int = np.dtype(np.int64)


def short_name(dtype) -> str:
    """'f64' for float64, as the jaxpr printer writes types."""
    dtype = np.dtype(dtype)
    return _SHORT.get(dtype.name, dtype.name)


def is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def is_inexact(dtype) -> bool:
    return np.dtype(dtype).kind in "fc"


def is_integer(dtype) -> bool:
    return np.dtype(dtype).kind in "iu"


def is_bool(dtype) -> bool:
    return np.dtype(dtype).kind == "b"


def python_scalar_dtype(x) -> np.dtype:
    return _PY_SCALAR_DTYPE[type(x)]


def is_weak_python_scalar(x) -> bool:
    # bool is a strong type in JAX and numpy; int/float/complex are weak.
    t = type(x)
    return t is int or t is float or t is complex


def result_type(*args) -> np.dtype:
    """Promote dtypes and Python scalars with numpy's NEP 50 rules.

    Each argument is a dtype (strong) or a Python scalar (weak).
    """
    return np.result_type(*args)


def promote_avals_dtype(avals) -> tuple[np.dtype, bool]:
    """(result dtype, weak) for abstract values combined by an elementwise operation."""
    strong = [a.dtype for a in avals if not a.weak_type]
    weak = [_WEAK_STANDIN[a.dtype.kind] for a in avals if a.weak_type]
    if not strong:
        # All weak: the widest weak kind wins, at the default precision.
        return np.result_type(*[np.asarray(w).dtype for w in weak]), True
    if not weak:
        if len(strong) == 1 or all(d == strong[0] for d in strong):
            return strong[0], False
        return np.result_type(*strong), False
    return np.result_type(*strong, *weak), False


def canonicalize(dtype) -> np.dtype:
    """A numpy dtype object from anything numpy accepts (None means float64)."""
    if dtype is None:
        return default_float
    return np.dtype(dtype)
