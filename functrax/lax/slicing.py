"""Static slicing and its relatives: slice (start/limit/stride per dim).

>>> import numpy as np
>>> from functrax import lax
>>> lax.slice(np.arange(10), (2,), (8,), (3,)).tolist()
[2, 5]
"""
from __future__ import annotations

import numpy as np

from .. import core
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero

# ---------------------------------------------------------------------------------------------
# slice


def _slice_impl(x, *, start_indices, limit_indices, strides):
    strides = strides or (1,) * len(start_indices)
    return x[tuple(slice(s, l, st) for s, l, st in zip(start_indices, limit_indices, strides))]


def _slice_abstract_eval(x, *, start_indices, limit_indices, strides):
    strides = strides or (1,) * x.ndim
    if not len(start_indices) == len(limit_indices) == len(strides) == x.ndim:
        raise TypeError(f"slice: start_indices {start_indices}, limit_indices {limit_indices} "
                        f"and strides {strides} must each have one entry per dim of "
                        f"{x.str_short()}")
    shape = []
    for d, s, l, st in zip(x.shape, start_indices, limit_indices, strides):
        if not 0 <= s <= l <= d or st < 1:
            raise ValueError(f"slice: bounds start={start_indices} limit={limit_indices} "
                             f"strides={strides} are invalid for shape {x.shape}")
        shape.append((l - s + st - 1) // st)
    return ShapedArray(shape, x.dtype, x.weak_type)


slice_p = Primitive("slice")
slice_p.def_impl(_slice_impl)
slice_p.def_abstract_eval(_slice_abstract_eval)


def slice(x, start_indices, limit_indices, strides=None):  # noqa: A001 - lax's name
    """x[start:limit:stride] along every dim, with static bounds."""
    return slice_p.bind(x, start_indices=tuple(int(i) for i in start_indices),
                        limit_indices=tuple(int(i) for i in limit_indices),
                        strides=None if strides is None else tuple(int(s) for s in strides))


def slice_in_dim(x, start_index, limit_index, stride=1, axis=0):
    """Slice along one axis (None bounds mean the ends)."""
    shape = get_aval(x).shape
    axis = axis % len(shape)
    start = [0] * len(shape)
    limit = list(shape)
    strides = [1] * len(shape)
    size = shape[axis]
    start_index = 0 if start_index is None else start_index
    limit_index = size if limit_index is None else limit_index
    start[axis] = start_index + size if start_index < 0 else start_index
    limit[axis] = limit_index + size if limit_index < 0 else limit_index
    strides[axis] = stride
    return slice(x, start, limit, strides)


def _slice_transpose(ct, x, *, start_indices, limit_indices, strides):
    from .structural import full
    from .padding import pad
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    shape = x.aval.shape
    strides = strides or (1,) * len(shape)
    ct_shape = get_aval(ct).shape
    # Place the cotangent back with interior padding for the stride.
    lo = start_indices
    hi = [d - (s + (c - 1) * st + 1) if c else d - s
          for d, s, c, st in zip(shape, start_indices, ct_shape, strides)]
    interior = [st - 1 for st in strides]
    zero = full((), 0, x.aval.dtype)
    return [pad(ct, zero, tuple(zip(lo, hi, interior)))]


ad.deflinear(slice_p, _slice_transpose)


def _slice_batch(vals, dims, *, start_indices, limit_indices, strides):
    (x,), (d,) = vals, dims
    size = get_aval(x).shape[d]
    start = list(start_indices)
    limit = list(limit_indices)
    start.insert(d, 0)
    limit.insert(d, size)
    st = None
    if strides is not None:
        st = list(strides)
        st.insert(d, 1)
        st = tuple(st)
    return slice_p.bind(x, start_indices=tuple(start), limit_indices=tuple(limit),
                        strides=st), d


batching.batching_rules[slice_p] = _slice_batch

del np, core
