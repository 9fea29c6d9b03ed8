"""Tensor contraction: ``dot_general`` and its wrappers ``dot`` and ``batch_matmul``.

``dot_general(lhs, rhs, ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch)))`` contracts
the paired ``*_contract`` dims, keeps the paired ``*_batch`` dims, and lays the output out as
(batch dims, lhs free dims, rhs free dims), each group in its operand's order — JAX's
semantics. Mixed dtypes promote with numpy's NEP 50 rules; ``preferred_element_type`` sets the
accumulation/output dtype.

The impl reorders each operand into a (batch, rows, cols) view and calls ``matmul`` (BLAS),
choosing between the two matrix orientations so that an operand already laid out either way is
never copied.

>>> import numpy as np
>>> from functrax import lax
>>> x, y = np.ones((2, 3, 4)), np.ones((2, 4, 5))
>>> lax.dot_general(x, y, (((2,), (1,)), ((0,), (0,)))).shape
(2, 3, 5)
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules
from ._util import array_namespace
from .structural import convert_element_type, transpose

__all__ = ["dot_general", "dot_general_p", "dot", "batch_matmul", "DotDimensionNumbers"]

DotDimensionNumbers = tuple  # ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))


def _free_dims(ndim, contract, batch):
    used = set(contract) | set(batch)
    return [i for i in range(ndim) if i not in used]


def _out_dtype(lhs_aval, rhs_aval, preferred_element_type):
    if preferred_element_type is not None:
        return np.dtype(preferred_element_type), False
    return dtypes.promote_avals_dtype((lhs_aval, rhs_aval))


# ---------------------------------------------------------------------------------------------
# dot_general


def _as_matrix_stack(x, xp, lead, rows, cols, shape):
    """``x`` viewed as (B, R, C) where ``lead``/``rows``/``cols`` name its dims. When the
    operand is already laid out as (lead, cols, rows) we take the transposed view instead of
    copying: matmul passes such operands to BLAS with a transpose flag."""
    B = int(np.prod([shape[d] for d in lead], dtype=np.int64))
    R = int(np.prod([shape[d] for d in rows], dtype=np.int64))
    C = int(np.prod([shape[d] for d in cols], dtype=np.int64))
    perm = list(lead) + list(rows) + list(cols)
    swapped = list(lead) + list(cols) + list(rows)
    identity = list(range(len(shape)))
    if perm != identity and swapped == identity:
        return xp.swapaxes(x.reshape(B, C, R), 1, 2)
    if perm != identity:
        x = xp.transpose(x, perm)
    return x.reshape(B, R, C)


def _dot_general_impl(lhs, rhs, *, dimension_numbers, precision, preferred_element_type):
    xp = array_namespace(lhs, rhs)
    t_l, t_r = type(lhs), type(rhs)
    if t_l is t_r and hasattr(lhs, "dtype") and lhs.dtype == rhs.dtype and \
            preferred_element_type is None:
        dtype = lhs.dtype
    else:
        dtype, _ = _out_dtype(get_aval(lhs), get_aval(rhs), preferred_element_type)
    lhs = xp.asarray(lhs, dtype=dtype)
    rhs = xp.asarray(rhs, dtype=dtype)
    (lc, rc), (lb, rb) = dimension_numbers
    if not lb and lhs.ndim == 2 and rhs.ndim == 2 and len(lc) == 1:
        # The matrix-matrix case (an MLP layer and its two transposes) straight to BLAS.
        return xp.matmul(lhs if lc[0] == 1 else lhs.T, rhs if rc[0] == 0 else rhs.T)
    lfree = _free_dims(lhs.ndim, lc, lb)
    rfree = _free_dims(rhs.ndim, rc, rb)
    out_shape = tuple(lhs.shape[d] for d in lb) + tuple(lhs.shape[d] for d in lfree) + \
        tuple(rhs.shape[d] for d in rfree)
    a = _as_matrix_stack(lhs, xp, lb, lfree, lc, lhs.shape)
    b = _as_matrix_stack(rhs, xp, rb, rc, rfree, rhs.shape)
    return xp.matmul(a, b).reshape(out_shape)


def _check_dims(name, which, dims, ndim, shape):
    for d in dims:
        if not 0 <= d < ndim:
            raise TypeError(f"{name}: {which} dimension {d} is out of range for an operand of "
                            f"shape {shape}")


def _dot_general_abstract_eval(lhs, rhs, *, dimension_numbers, precision,
                               preferred_element_type):
    (lc, rc), (lb, rb) = dimension_numbers
    where = f"lhs {lhs.str_short()} and rhs {rhs.str_short()} with dimension_numbers " \
            f"{dimension_numbers}"
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise TypeError(f"dot_general: lhs and rhs need as many contracting (and batch) "
                        f"dimensions each: {where}")
    _check_dims("dot_general", "lhs contracting/batch", tuple(lc) + tuple(lb), lhs.ndim,
                lhs.shape)
    _check_dims("dot_general", "rhs contracting/batch", tuple(rc) + tuple(rb), rhs.ndim,
                rhs.shape)
    if len(set(lc) | set(lb)) != len(lc) + len(lb) or \
            len(set(rc) | set(rb)) != len(rc) + len(rb):
        raise TypeError(f"dot_general: a dimension is repeated among the contracting and "
                        f"batch dimensions: {where}")
    for a, b in zip(lb, rb):
        if lhs.shape[a] != rhs.shape[b]:
            raise TypeError(f"dot_general: batch dimensions differ in size "
                            f"({lhs.shape[a]} vs {rhs.shape[b]}): {where}")
    for a, b in zip(lc, rc):
        if lhs.shape[a] != rhs.shape[b]:
            raise TypeError(f"dot_general: contracting dimensions differ in size "
                            f"({lhs.shape[a]} vs {rhs.shape[b]}): {where}")
    shape = tuple(lhs.shape[d] for d in lb) + \
        tuple(lhs.shape[d] for d in _free_dims(lhs.ndim, lc, lb)) + \
        tuple(rhs.shape[d] for d in _free_dims(rhs.ndim, rc, rb))
    dtype, weak = _out_dtype(lhs, rhs, preferred_element_type)
    return ShapedArray(shape, dtype, weak)


dot_general_p = Primitive("dot_general")
dot_general_p.def_impl(_dot_general_impl)
dot_general_p.def_abstract_eval(_dot_general_abstract_eval)


def _canonical_dims(dims, ndim):
    if isinstance(dims, (int, np.integer)):
        dims = (dims,)
    return tuple(int(d) % ndim if ndim and -ndim <= int(d) < 0 else int(d) for d in dims)


def _canonical_precision(precision):
    if isinstance(precision, list):
        return tuple(precision)
    return precision


# Eager dispatch cost matters (an MLP step is a handful of products): dimension numbers that
# are already tuples of non-negative ints need no canonicalization, so they are remembered.
_canonical_dn_cache: dict = {}


def _is_plain_dn(dn):
    return len(_canonical_dn_cache) < 4096 and all(
        type(g) is tuple and all(type(d) is int and d >= 0 for d in g)
        for pair in dn for g in pair)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """Contract ``lhs`` and ``rhs`` along paired dims, keeping paired batch dims.

    ``dimension_numbers = ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``; the
    output holds the batch dims, then lhs's free dims, then rhs's free dims."""
    try:
        dn = _canonical_dn_cache[dimension_numbers]
    except (KeyError, TypeError):
        (lc, rc), (lb, rb) = dimension_numbers
        nl, nr = get_aval(lhs).ndim, get_aval(rhs).ndim
        dn = ((_canonical_dims(lc, nl), _canonical_dims(rc, nr)),
              (_canonical_dims(lb, nl), _canonical_dims(rb, nr)))
        if _is_plain_dn(dimension_numbers):
            _canonical_dn_cache[dimension_numbers] = dn
    pet = None if preferred_element_type is None else np.dtype(preferred_element_type)
    return dot_general_p.bind(lhs, rhs, dimension_numbers=dn,
                              precision=_canonical_precision(precision),
                              preferred_element_type=pet)


def dot(lhs, rhs, precision=None, preferred_element_type=None):
    """Vector/matrix products: contracts lhs's last dim with rhs's first."""
    nl, nr = np.ndim(lhs), np.ndim(rhs)
    if nl == 0 or nr == 0:
        raise TypeError(f"dot: operands must have rank >= 1, got shapes {get_aval(lhs).shape} "
                        f"and {get_aval(rhs).shape}")
    return dot_general(lhs, rhs, (((nl - 1,), (0,)), ((), ())), precision,
                       preferred_element_type)


def batch_matmul(lhs, rhs, precision=None):
    """Matrix products over matching leading batch dims: (..., m, k) @ (..., k, n)."""
    la, ra = get_aval(lhs), get_aval(rhs)
    if la.ndim < 2 or la.ndim != ra.ndim:
        raise TypeError(f"batch_matmul: operands must have the same rank >= 2, got shapes "
                        f"{la.shape} and {ra.shape}")
    batch = tuple(range(la.ndim - 2))
    return dot_general(lhs, rhs, (((la.ndim - 1,), (ra.ndim - 2,)), (batch, batch)), precision)


def _dot_general_jvp_lhs(t, lhs, rhs, *, dimension_numbers, precision,
                         preferred_element_type):
    return dot_general_p.bind(t, rhs, dimension_numbers=dimension_numbers,
                              precision=precision, preferred_element_type=preferred_element_type)


def _dot_general_jvp_rhs(t, lhs, rhs, *, dimension_numbers, precision,
                         preferred_element_type):
    return dot_general_p.bind(lhs, t, dimension_numbers=dimension_numbers,
                              precision=precision, preferred_element_type=preferred_element_type)


ad.defjvp(dot_general_p, _dot_general_jvp_lhs, _dot_general_jvp_rhs)


def _ct_for_operand(ct, other, x_aval, x_contract, o_contract, x_batch, o_batch, x_is_lhs,
                    precision):
    """The cotangent of one operand x of ``dot_general`` given the other operand.

    The output's dims are (batch, lhs free, rhs free). Contracting the output cotangent with
    ``other`` over other's free dims (and pairing the batch dims) leaves, in order: the batch
    dims, x's free dims, then other's contracting dims in ascending order — each of which
    stands for its partner among x's contracting dims (x's free dims keep their relative
    order in the output, whichever side x is on). A transpose puts x's dims back."""
    o_ndim = get_aval(other).ndim
    x_free = _free_dims(x_aval.ndim, x_contract, x_batch)
    o_free = _free_dims(o_ndim, o_contract, o_batch)
    nb = len(x_batch)
    if x_is_lhs:
        ct_o_free = list(range(nb + len(x_free), nb + len(x_free) + len(o_free)))
    else:
        ct_o_free = list(range(nb, nb + len(o_free)))
    dn = ((tuple(ct_o_free), tuple(o_free)), (tuple(range(nb)), tuple(o_batch)))
    res = dot_general_p.bind(ct, other, dimension_numbers=dn, precision=precision,
                             preferred_element_type=None)
    # The remaining dims of `other` are its contracting dims, ascending.
    partner = {o: x for x, o in zip(x_contract, o_contract)}
    x_of_res = list(x_batch) + x_free + [partner[o] for o in sorted(o_contract)]
    perm = tuple(int(i) for i in np.argsort(x_of_res))
    if perm != tuple(range(len(perm))):
        res = transpose(res, perm)
    if get_aval(res).dtype != x_aval.dtype:
        res = convert_element_type(res, x_aval.dtype)
    return res


def _dot_general_transpose(ct, lhs, rhs, *, dimension_numbers, precision,
                           preferred_element_type):
    (lc, rc), (lb, rb) = dimension_numbers
    if is_undefined_primal(lhs) and is_undefined_primal(rhs):
        raise ValueError("dot_general: transposing a product of two linear values (not linear)")
    if is_undefined_primal(lhs):
        if ad.is_zero(ct):
            return [Zero(ad.tangent_aval(lhs.aval)), None]
        return [_ct_for_operand(ct, rhs, lhs.aval, lc, rc, lb, rb, True, precision), None]
    if ad.is_zero(ct):
        return [None, Zero(ad.tangent_aval(rhs.aval))]
    return [None, _ct_for_operand(ct, lhs, rhs.aval, rc, lc, rb, lb, False, precision)]


transpose_rules[dot_general_p] = _dot_general_transpose


def _dot_general_batch(vals, dims, *, dimension_numbers, precision, preferred_element_type):
    (lhs, rhs), (ld, rd) = vals, dims
    (lc, rc), (lb, rb) = dimension_numbers
    params = dict(precision=precision, preferred_element_type=preferred_element_type)

    def shift(ds, bd):
        return tuple(d + (d >= bd) for d in ds)

    if ld is not None and rd is not None:
        # Both batched: the vmapped axis becomes a new (leading) batch dim of the product.
        dn = ((shift(lc, ld), shift(rc, rd)), ((ld,) + shift(lb, ld), (rd,) + shift(rb, rd)))
        return dot_general_p.bind(lhs, rhs, dimension_numbers=dn, **params), 0
    nb = len(lb)
    if ld is not None:
        # Only lhs batched: its vmapped axis is one more free dim of lhs.
        dn = ((shift(lc, ld), rc), (shift(lb, ld), rb))
        lfree = _free_dims(get_aval(lhs).ndim, dn[0][0], dn[1][0])
        return dot_general_p.bind(lhs, rhs, dimension_numbers=dn, **params), \
            nb + lfree.index(ld)
    dn = ((lc, shift(rc, rd)), (lb, shift(rb, rd)))
    n_lfree = get_aval(lhs).ndim - len(lc) - len(lb)
    rfree = _free_dims(get_aval(rhs).ndim, dn[0][1], dn[1][1])
    return dot_general_p.bind(lhs, rhs, dimension_numbers=dn, **params), \
        nb + n_lfree + rfree.index(rd)


batching.batching_rules[dot_general_p] = _dot_general_batch

