"""Sorting primitives: ``sort`` (one or several operands, the first ``num_keys`` of them the
keys), ``sort_key_val``, ``top_k``, and the gather/scatter pair along one axis that carries
tangents through the sort permutation.

``sort_p`` always has multiple results (one per operand): the later operands are permuted in
the same way as the keys. Derivatives follow the permutation: the JVP sorts an extra ``iota``
operand to learn where every element went, then gathers the tangents with
``take_along_axis_p``, whose transpose is ``scatter_add_along_axis_p`` (and vice versa), so
reverse mode and higher derivatives need no special cases.

>>> import numpy as np
>>> from functrax import lax
>>> lax.sort(np.array([3.0, 1.0, 2.0])).tolist()
[1.0, 2.0, 3.0]
>>> keys, vals = lax.sort_key_val(np.array([2, 0, 1]), np.array([10.0, 20.0, 30.0]))
>>> vals.tolist()
[20.0, 30.0, 10.0]
>>> [v.tolist() for v in lax.top_k(np.array([1.0, 5.0, 3.0]), 2)]
[[5.0, 3.0], [1, 2]]
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules
from ._util import array_namespace, ufunc_at

__all__ = ["sort", "sort_key_val", "top_k", "sort_p", "top_k_p", "take_along_axis_p",
           "scatter_add_along_axis_p"]


def _check_axis(name, axis, ndim):
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise core._locate(ValueError(f"{name}: dimension {axis} is out of bounds for an "
                                      f"operand of rank {ndim}"))
    return axis % ndim


def _front(vals, dims):
    """Every operand with its batch dim first (unbatched ones broadcast to the batch)."""
    size = batching.batch_size_of(vals, dims)
    return [batching.bdim_at_front(v, d, size) for v, d in zip(vals, dims)]


# ---------------------------------------------------------------------------------------------
# take_along_axis: out[..., i, ...] = x[..., idx[..., i, ...], ...] along ``axis``. Used to apply
# a sort permutation (or any index map along one axis) to tangents; linear in x.


def _take_along_axis_impl(x, idx, *, axis):
    xp = array_namespace(x, idx)
    return xp.take_along_axis(xp.asarray(x), xp.asarray(idx), axis=axis)


def _take_along_axis_abstract_eval(x, idx, *, axis):
    if not dtypes.is_integer(idx.dtype):
        raise TypeError(f"take_along_axis: indices must be integers, got {idx.dtype.name}")
    if x.ndim != idx.ndim or not 0 <= axis < x.ndim or any(
            a != b for i, (a, b) in enumerate(zip(x.shape, idx.shape)) if i != axis):
        raise TypeError(f"take_along_axis: operand {x.str_short()} and indices "
                        f"{idx.str_short()} must agree on every dimension but axis {axis}")
    return ShapedArray(idx.shape, x.dtype, x.weak_type)


take_along_axis_p = Primitive("take_along_axis")
take_along_axis_p.def_impl(_take_along_axis_impl)
take_along_axis_p.def_abstract_eval(_take_along_axis_abstract_eval)


def _take_along_axis(x, idx, axis):
    return take_along_axis_p.bind(x, idx, axis=int(axis))


def _take_along_axis_jvp(primals, tangents, *, axis):
    (x, idx), (tx, _) = primals, tangents
    ans = take_along_axis_p.bind(x, idx, axis=axis)
    if ad.is_zero(tx):
        return ans, Zero.from_value(ans)
    return ans, take_along_axis_p.bind(tx, idx, axis=axis)


ad.jvp_rules[take_along_axis_p] = _take_along_axis_jvp


def _take_along_axis_transpose(ct, x, idx, *, axis):
    if is_undefined_primal(idx):
        raise ValueError("take_along_axis: not linear in the indices")
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval)), None]
    return [scatter_add_along_axis_p.bind(idx, ct, axis=axis, size=x.aval.shape[axis]), None]


transpose_rules[take_along_axis_p] = _take_along_axis_transpose


def _take_along_axis_batch(vals, dims, *, axis):
    x, idx = _front(vals, dims)
    return take_along_axis_p.bind(x, idx, axis=axis + 1), 0


batching.batching_rules[take_along_axis_p] = _take_along_axis_batch


# ---------------------------------------------------------------------------------------------
# scatter_add_along_axis: the transpose of take_along_axis. A zero array whose ``axis`` has
# length ``size``, with ``updates`` added at the positions ``idx`` (repeats accumulate).


def _scatter_add_along_axis_impl(idx, updates, *, axis, size):
    xp = array_namespace(idx, updates)
    idx, updates = xp.asarray(idx), xp.asarray(updates)
    out_shape = list(updates.shape)
    out_shape[axis] = size
    idx = xp.where(idx < 0, idx + size, idx)
    grids = list(xp.indices(updates.shape, sparse=True))
    grids[axis] = idx
    flat = xp.ravel_multi_index(tuple(xp.broadcast_arrays(*grids)), tuple(out_shape)).ravel()
    total = int(np.prod(out_shape, dtype=np.int64))
    vals = updates.ravel()
    if dtypes.is_float(updates.dtype):
        # bincount sums in float64 in one pass, far faster than np.add.at.
        out = xp.bincount(flat, weights=vals, minlength=total).astype(updates.dtype)
    elif updates.dtype.kind == "c":
        out = (xp.bincount(flat, weights=vals.real, minlength=total)
               + 1j * xp.bincount(flat, weights=vals.imag, minlength=total)).astype(
                   updates.dtype)
    else:
        out = xp.zeros(total, updates.dtype)
        ufunc_at(xp, "add", out, flat, vals)  # cupyx.scatter_add on a GPU
    return out.reshape(out_shape)


def _scatter_add_along_axis_abstract_eval(idx, updates, *, axis, size):
    if not dtypes.is_integer(idx.dtype):
        raise TypeError(f"scatter_add_along_axis: indices must be integers, got "
                        f"{idx.dtype.name}")
    if idx.shape != updates.shape or not 0 <= axis < updates.ndim:
        raise TypeError(f"scatter_add_along_axis: indices {idx.str_short()} and updates "
                        f"{updates.str_short()} must have the same shape (axis {axis})")
    shape = list(updates.shape)
    shape[axis] = size
    return ShapedArray(shape, updates.dtype, updates.weak_type)


scatter_add_along_axis_p = Primitive("scatter_add_along_axis")
scatter_add_along_axis_p.def_impl(_scatter_add_along_axis_impl)
scatter_add_along_axis_p.def_abstract_eval(_scatter_add_along_axis_abstract_eval)


def _scatter_add_along_axis_jvp(primals, tangents, *, axis, size):
    (idx, upd), (_, tu) = primals, tangents
    ans = scatter_add_along_axis_p.bind(idx, upd, axis=axis, size=size)
    if ad.is_zero(tu):
        return ans, Zero.from_value(ans)
    return ans, scatter_add_along_axis_p.bind(idx, tu, axis=axis, size=size)


ad.jvp_rules[scatter_add_along_axis_p] = _scatter_add_along_axis_jvp


def _scatter_add_along_axis_transpose(ct, idx, updates, *, axis, size):
    if is_undefined_primal(idx):
        raise ValueError("scatter_add_along_axis: not linear in the indices")
    if ad.is_zero(ct):
        return [None, Zero(ad.tangent_aval(updates.aval))]
    return [None, take_along_axis_p.bind(ct, idx, axis=axis)]


transpose_rules[scatter_add_along_axis_p] = _scatter_add_along_axis_transpose


def _scatter_add_along_axis_batch(vals, dims, *, axis, size):
    idx, upd = _front(vals, dims)
    return scatter_add_along_axis_p.bind(idx, upd, axis=axis + 1, size=size), 0


batching.batching_rules[scatter_add_along_axis_p] = _scatter_add_along_axis_batch


# ---------------------------------------------------------------------------------------------
# sort


def _sort_impl(*operands, dimension, is_stable, num_keys):
    xp = array_namespace(*operands)
    operands = [xp.asarray(x) for x in operands]
    # Always stable: it costs little and makes results reproducible.
    if len(operands) == 1:
        return [xp.sort(operands[0], axis=dimension, kind="stable")]
    if num_keys == 1:
        perm = xp.argsort(operands[0], axis=dimension, kind="stable")
    else:
        # lexsort's primary key is the last one it is given.
        perm = xp.lexsort(tuple(reversed(operands[:num_keys])), axis=dimension)
    return [xp.take_along_axis(x, perm, axis=dimension) for x in operands]


def _sort_abstract_eval(*operands, dimension, is_stable, num_keys):
    if not operands:
        raise TypeError("sort: needs at least one operand")
    shape = operands[0].shape
    if any(o.shape != shape for o in operands):
        raise TypeError(f"sort: all operands must have the same shape, got "
                        f"{[o.str_short() for o in operands]}")
    if not 0 <= dimension < len(shape):
        raise ValueError(f"sort: dimension {dimension} is out of bounds for operands of shape "
                         f"{shape}")
    if not 1 <= num_keys <= len(operands):
        raise ValueError(f"sort: num_keys={num_keys} must be between 1 and the number of "
                         f"operands ({len(operands)})")
    return [ShapedArray(o.shape, o.dtype, o.weak_type) for o in operands]


sort_p = Primitive("sort")
sort_p.multiple_results = True
sort_p.def_impl(_sort_impl)
sort_p.def_abstract_eval(_sort_abstract_eval)


def sort(operand, dimension=-1, is_stable=True, num_keys=1):
    """Sort along ``dimension``. ``operand`` is one array (the sorted array is returned) or a
    sequence of arrays of one shape (a tuple is returned): the first ``num_keys`` are the keys,
    compared lexicographically, and every operand is permuted as the keys are. NaNs sort to
    the end, as in numpy."""
    if isinstance(operand, (tuple, list)):
        ops = list(operand)
        if not ops:
            raise TypeError("sort: needs at least one operand")
        dim = _check_axis("sort", dimension, get_aval(ops[0]).ndim)
        return tuple(sort_p.bind(*ops, dimension=dim, is_stable=bool(is_stable),
                                 num_keys=int(num_keys)))
    dim = _check_axis("sort", dimension, get_aval(operand).ndim)
    return sort_p.bind(operand, dimension=dim, is_stable=bool(is_stable),
                       num_keys=int(num_keys))[0]


def sort_key_val(keys, values, dimension=-1, is_stable=True):
    """Sort ``keys`` along ``dimension`` and permute ``values`` the same way."""
    return sort((keys, values), dimension=dimension, is_stable=is_stable, num_keys=1)


def _permutation_dtype(n):
    return np.dtype(np.int32) if n < 2 ** 31 else np.dtype(np.int64)


def _sort_jvp(primals, tangents, *, dimension, is_stable, num_keys):
    from .structural import broadcasted_iota
    shape = get_aval(primals[0]).shape
    iota = broadcasted_iota(_permutation_dtype(shape[dimension]), shape, dimension)
    outs = sort_p.bind(*primals, iota, dimension=dimension, is_stable=is_stable,
                       num_keys=num_keys)
    perm, outs = outs[-1], outs[:-1]
    t_out = [Zero.from_value(o) if ad.is_zero(t) else
             take_along_axis_p.bind(t, perm, axis=dimension) for o, t in zip(outs, tangents)]
    return outs, t_out


ad.jvp_rules[sort_p] = _sort_jvp


def _sort_batch(vals, dims, *, dimension, is_stable, num_keys):
    if all(d is not None for d in dims) and len(set(dims)) == 1:
        d = dims[0]
        outs = sort_p.bind(*vals, dimension=dimension + (d <= dimension), is_stable=is_stable,
                           num_keys=num_keys)
        return outs, [d] * len(outs)
    outs = sort_p.bind(*_front(vals, dims), dimension=dimension + 1, is_stable=is_stable,
                       num_keys=num_keys)
    return outs, [0] * len(outs)


batching.batching_rules[sort_p] = _sort_batch


# ---------------------------------------------------------------------------------------------
# top_k: the k largest entries along the last axis, largest first; equal values keep their
# order (the lower index first). Indices are int32, as in JAX.


def _top_k_impl(operand, *, k):
    xp = array_namespace(operand)
    x = xp.asarray(operand)
    # Slicing would silently accept a k past the end; report it as tracing would.
    _top_k_abstract_eval(ShapedArray(x.shape, x.dtype), k=k)
    n = x.shape[-1]
    # A stable ascending sort of the reversed row, read backwards, is a descending sort in
    # which ties keep the lower index first; NaN, numpy's largest value, comes first.
    order = xp.argsort(x[..., ::-1], axis=-1, kind="stable")[..., ::-1][..., :k]
    idx = (n - 1) - order
    return [xp.take_along_axis(x, idx, axis=-1), idx.astype(np.int32)]


def _top_k_abstract_eval(operand, *, k):
    if operand.ndim == 0:
        raise TypeError(f"top_k: the operand must have at least one dimension, got "
                        f"{operand.str_short()}")
    if not 0 <= k <= operand.shape[-1]:
        raise ValueError(f"top_k: k={k} must be between 0 and the size of the last axis of "
                         f"{operand.str_short()}")
    shape = operand.shape[:-1] + (k,)
    return [ShapedArray(shape, operand.dtype, operand.weak_type),
            ShapedArray(shape, np.int32)]


top_k_p = Primitive("top_k")
top_k_p.multiple_results = True
top_k_p.def_impl(_top_k_impl)
top_k_p.def_abstract_eval(_top_k_abstract_eval)


def top_k(operand, k):
    """(values, indices) of the ``k`` largest entries along the last axis, largest first."""
    return tuple(top_k_p.bind(operand, k=int(k)))


def _top_k_jvp(primals, tangents, *, k):
    (x,), (t,) = primals, tangents
    vals, idx = top_k_p.bind(x, k=k)
    if ad.is_zero(t):
        return [vals, idx], [Zero.from_value(vals), Zero.from_value(idx)]
    axis = get_aval(x).ndim - 1
    return [vals, idx], [take_along_axis_p.bind(t, idx, axis=axis), Zero.from_value(idx)]


ad.jvp_rules[top_k_p] = _top_k_jvp


def _top_k_batch(vals, dims, *, k):
    (x,), (d,) = vals, dims
    if d == get_aval(x).ndim - 1:
        x, d = batching.moveaxis(x, d, 0), 0
    return top_k_p.bind(x, k=k), [d, d]


batching.batching_rules[top_k_p] = _top_k_batch
