"""Shape manipulation: reshape, transpose, stack, concatenate, ... (first few).

>>> import functrax.numpy as fnp
>>> fnp.reshape(fnp.arange(6), (2, 3)).shape
(2, 3)
"""
from __future__ import annotations

import numpy as np

from .. import lax
from ..core import get_aval
from ._util import asarray_arg


def reshape(a, newshape=None, order="C", *, shape=None):
    a = asarray_arg(a)
    newshape = shape if shape is not None else newshape
    if isinstance(newshape, (int, np.integer)):
        newshape = (int(newshape),)
    newshape = list(newshape)
    size = get_aval(a).size
    if newshape.count(-1) > 1:
        raise ValueError("reshape: can only specify one unknown dimension (-1)")
    if -1 in newshape:
        known = int(np.prod([d for d in newshape if d != -1], dtype=np.int64))
        if known == 0 or size % known:
            raise ValueError(f"reshape: cannot reshape array of size {size} into shape "
                             f"{tuple(newshape)}")
        newshape[newshape.index(-1)] = size // known
    return lax.reshape(a, tuple(newshape))


def transpose(a, axes=None):
    a = asarray_arg(a)
    ndim = get_aval(a).ndim
    axes = tuple(reversed(range(ndim))) if axes is None else tuple(int(x) % ndim for x in axes)
    return lax.transpose(a, axes)


def expand_dims(a, axis):
    a = asarray_arg(a)
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return lax.expand_dims(a, axis)


def stack(arrays, axis=0):
    arrays = [asarray_arg(x) for x in arrays]
    if not arrays:
        raise ValueError("stack: need at least one array to stack")
    shapes = {get_aval(x).shape for x in arrays}
    if len(shapes) > 1:
        raise ValueError(f"stack: all input arrays must have the same shape, got "
                         f"{[get_aval(x).shape for x in arrays]}")
    nd = get_aval(arrays[0]).ndim + 1
    axis = axis % nd
    return concatenate([lax.expand_dims(x, (axis,)) for x in arrays], axis=axis)


def concatenate(arrays, axis=0):
    arrays = [asarray_arg(x) for x in arrays]
    if len(arrays) == 1:
        return arrays[0]
    return lax.concatenate(arrays, axis % get_aval(arrays[0]).ndim)
