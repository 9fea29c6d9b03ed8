"""Products of arrays with numpy's semantics: dot, matmul (``@``), vdot, inner, outer,
tensordot, einsum, kron, trace and cross — all lowered to ``lax.dot_general`` (one BLAS call
per contraction) plus reshapes, transposes and sums, so they differentiate and batch through
those primitives.

>>> import functrax.numpy as fnp
>>> a = fnp.ones((2, 3)); b = fnp.ones((3, 4))
>>> fnp.einsum('ij,jk->ik', a, b).tolist()
[[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]
"""
from __future__ import annotations

import string

import numpy as np

from .. import dtypes, lax
from ..core import get_aval
from ..lax._util import broadcast_shapes
from ._util import asarray_arg

__all__ = ["dot", "matmul", "vdot", "inner", "outer", "tensordot", "einsum", "kron", "trace",
           "cross"]


def _dg(a, b, contract, batch=((), ()), precision=None, preferred_element_type=None):
    return lax.dot_general(a, b, (contract, batch), precision=precision,
                           preferred_element_type=preferred_element_type)


def _ndim(x):
    return get_aval(x).ndim


def _shape(x):
    return get_aval(x).shape


def dot(a, b, *, precision=None, preferred_element_type=None):
    """numpy.dot: a product of scalars, an inner product of vectors, or a sum over a's last
    axis and b's second-to-last (its only axis when b is a vector)."""
    a, b = asarray_arg(a), asarray_arg(b)
    na, nb = _ndim(a), _ndim(b)
    if na == 0 or nb == 0:
        return lax.mul(a, b)
    b_axis = 0 if nb == 1 else nb - 2
    return _dg(a, b, ((na - 1,), (b_axis,)), precision=precision,
               preferred_element_type=preferred_element_type)


def matmul(a, b, *, precision=None, preferred_element_type=None):
    """numpy.matmul (``a @ b``): matrix products over broadcast leading dims; a vector
    operand is promoted to a matrix and its added dim removed from the result."""
    a, b = asarray_arg(a), asarray_arg(b)
    na, nb = _ndim(a), _ndim(b)
    if na == 0 or nb == 0:
        raise ValueError(f"matmul: operands must not be scalars (got shapes {_shape(a)} and "
                         f"{_shape(b)}); use * for scalar multiplication")
    kw = dict(precision=precision, preferred_element_type=preferred_element_type)
    if nb == 1:
        # (..., m, k) @ (k,) -> (..., m): a contraction of the last axes.
        _check_inner("matmul", _shape(a)[-1], _shape(b)[0], _shape(a), _shape(b))
        return _dg(a, b, ((na - 1,), (0,)), **kw)
    if na == 1:
        _check_inner("matmul", _shape(a)[0], _shape(b)[-2], _shape(a), _shape(b))
        if nb == 2:
            return _dg(a, b, ((0,), (0,)), **kw)
        # (k,) @ (..., k, n) -> (..., n)
        return _dg(b, a, ((nb - 2,), (0,)), **kw)
    sa, sb = _shape(a), _shape(b)
    _check_inner("matmul", sa[-1], sb[-2], sa, sb)
    if nb == 2:
        # (..., m, k) @ (k, n): a's batch dims are free dims; the layout already fits.
        return _dg(a, b, ((na - 1,), (0,)), **kw)
    if sa[:-2] == sb[:-2]:
        batch = tuple(range(na - 2))
        return _dg(a, b, ((na - 1,), (nb - 2,)), (batch, batch), **kw)
    broadcast_shapes("matmul", sa[:-2], sb[:-2])
    # Broadcast batch dims: let einsum sort out which dims are shared, stretched or one-sided.
    return einsum("...mk,...kn->...mn", a, b, **kw)


def _check_inner(name, ka, kb, sa, sb):
    if ka != kb:
        raise ValueError(f"{name}: contracted dimensions differ in size ({ka} vs {kb}) for "
                         f"shapes {sa} and {sb}")


def vdot(a, b, *, precision=None, preferred_element_type=None):
    """Dot product of the flattened arrays, conjugating the first."""
    a, b = asarray_arg(a), asarray_arg(b)
    if get_aval(a).dtype.kind == "c":
        a = lax.conj(a)
    return dot(lax.reshape(a, (get_aval(a).size,)), lax.reshape(b, (get_aval(b).size,)),
               precision=precision, preferred_element_type=preferred_element_type)


def inner(a, b, *, precision=None, preferred_element_type=None):
    """Sum over the last axes of a and b (a product for scalars)."""
    a, b = asarray_arg(a), asarray_arg(b)
    na, nb = _ndim(a), _ndim(b)
    if na == 0 or nb == 0:
        return lax.mul(a, b)
    return _dg(a, b, ((na - 1,), (nb - 1,)), precision=precision,
               preferred_element_type=preferred_element_type)


def outer(a, b, out=None):
    """out[i, j] = a.ravel()[i] * b.ravel()[j]."""
    a, b = asarray_arg(a), asarray_arg(b)
    return lax.mul(lax.reshape(a, (get_aval(a).size, 1)), lax.reshape(b, (1, get_aval(b).size)))


def tensordot(a, b, axes=2, *, precision=None, preferred_element_type=None):
    """Sum over the given axes: an int N (a's last N with b's first N) or a pair of axis
    sequences."""
    a, b = asarray_arg(a), asarray_arg(b)
    na, nb = _ndim(a), _ndim(b)
    if isinstance(axes, (int, np.integer)):
        n = int(axes)
        if n < 0 or n > min(na, nb):
            raise ValueError(f"tensordot: axes={n} is out of range for shapes {_shape(a)} and "
                             f"{_shape(b)}")
        ca, cb = tuple(range(na - n, na)), tuple(range(n))
    else:
        if len(axes) != 2:
            raise ValueError(f"tensordot: axes must be an int or a pair of sequences, got "
                             f"{axes!r}")
        ca, cb = axes
        ca = (ca,) if isinstance(ca, (int, np.integer)) else tuple(ca)
        cb = (cb,) if isinstance(cb, (int, np.integer)) else tuple(cb)
        if len(ca) != len(cb):
            raise ValueError(f"tensordot: axes {axes} pair {len(ca)} with {len(cb)} dims")
        ca = tuple(int(x) % na for x in ca)
        cb = tuple(int(x) % nb for x in cb)
    for x, y in zip(ca, cb):
        _check_inner("tensordot", _shape(a)[x], _shape(b)[y], _shape(a), _shape(b))
    return _dg(a, b, (ca, cb), precision=precision,
               preferred_element_type=preferred_element_type)


def kron(a, b):
    """Kronecker product: blocks a[i, j, ...] * b."""
    a, b = asarray_arg(a), asarray_arg(b)
    sa, sb = _shape(a), _shape(b)
    nd = max(len(sa), len(sb))
    sa = (1,) * (nd - len(sa)) + sa
    sb = (1,) * (nd - len(sb)) + sb
    a2 = lax.reshape(a, tuple(x for d in sa for x in (d, 1)))
    b2 = lax.reshape(b, tuple(x for d in sb for x in (1, d)))
    return lax.reshape(lax.mul(a2, b2), tuple(x * y for x, y in zip(sa, sb)))


def _diagonal_mask(shape, axis1, axis2, offset):
    """Boolean array of ``shape`` that is True where index[axis2] == index[axis1] + offset."""
    i = lax.broadcasted_iota(np.int64, shape, axis1)
    j = lax.broadcasted_iota(np.int64, shape, axis2)
    return lax.eq(lax.add(i, offset) if offset else i, j)


def _keep_diagonal(x, axis1, axis2, offset=0):
    """x with everything off the (offset) diagonal of axes (axis1, axis2) set to zero (a
    select, so that infinities off the diagonal do not leak in as NaN)."""
    aval = get_aval(x)
    mask = _diagonal_mask(aval.shape, axis1, axis2, offset)
    return lax.select_n(mask, lax.full(aval.shape, 0, aval.dtype), x)


def trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    """Sum along a diagonal of the (axis1, axis2) planes."""
    a = asarray_arg(a)
    aval = get_aval(a)
    nd = aval.ndim
    if nd < 2:
        raise ValueError(f"trace: array must be at least 2-d, got shape {aval.shape}")
    axis1, axis2 = int(axis1) % nd, int(axis2) % nd
    if axis1 == axis2:
        raise ValueError(f"trace: axis1 and axis2 cannot be the same ({axis1})")
    if dtype is None and (dtypes.is_bool(aval.dtype) or
                          (dtypes.is_integer(aval.dtype) and aval.dtype.itemsize < 8)):
        dtype = np.uint64 if aval.dtype.kind == "u" else np.int64
    if dtype is not None:
        a = lax.convert_element_type(a, dtype)
    return lax.reduce_sum(_keep_diagonal(a, axis1, axis2, int(offset)),
                          tuple(sorted((axis1, axis2))))


def cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """Cross product of 2- or 3-vectors along the given axes (broadcasting the rest); two
    2-vectors give the scalar z component."""
    a, b = asarray_arg(a), asarray_arg(b)
    if axis is not None:
        axisa = axisb = axisc = axis
    a = _move_to_end(a, axisa)
    b = _move_to_end(b, axisb)
    da, db = _shape(a)[-1], _shape(b)[-1]
    if da not in (2, 3) or db not in (2, 3):
        raise ValueError(f"cross: incompatible dimensions for cross product (dimension must be "
                         f"2 or 3), got {da} and {db}")

    def comp(x, i):
        return lax.squeeze(lax.slice_in_dim(x, i, i + 1, axis=_ndim(x) - 1), (_ndim(x) - 1,))

    a0, a1 = comp(a, 0), comp(a, 1)
    b0, b1 = comp(b, 0), comp(b, 1)
    z = lax.sub(lax.mul(a0, b1), lax.mul(a1, b0))
    if da == 2 and db == 2:
        return z
    a2 = comp(a, 2) if da == 3 else None
    b2 = comp(b, 2) if db == 3 else None
    if a2 is None:
        x, y = lax.mul(a1, b2), lax.neg(lax.mul(a0, b2))
    elif b2 is None:
        x, y = lax.neg(lax.mul(a2, b1)), lax.mul(a2, b0)
    else:
        x = lax.sub(lax.mul(a1, b2), lax.mul(a2, b1))
        y = lax.sub(lax.mul(a2, b0), lax.mul(a0, b2))
    shape = broadcast_shapes("cross", _shape(x), _shape(y), _shape(z))
    parts = [lax.broadcast_to(c, shape) for c in (x, y, z)]
    dtype = dtypes.result_type(*[get_aval(p).dtype for p in parts])
    parts = [lax.expand_dims(lax.convert_element_type(p, dtype), (len(shape),)) for p in parts]
    out = lax.concatenate(parts, len(shape))
    nd = len(shape) + 1
    axisc = int(axisc) % nd
    if axisc != nd - 1:
        perm = list(range(nd - 1))
        perm.insert(axisc, nd - 1)
        out = lax.transpose(out, tuple(perm))
    return out


def _move_to_end(x, axis):
    nd = _ndim(x)
    axis = int(axis) % nd
    if axis == nd - 1:
        return x
    return lax.transpose(x, tuple(i for i in range(nd) if i != axis) + (axis,))


# ---------------------------------------------------------------------------------------------
# einsum


def _sublist_to_subscripts(args):
    """einsum(a, [0, 1], b, [1, 2], [0, 2]) -> ('ab,bc->ac', (a, b))."""
    letters = string.ascii_letters
    ops, subs = [], []
    args = list(args)
    out = None
    while len(args) >= 2:
        ops.append(args.pop(0))
        subs.append(args.pop(0))
    if args:
        out = args.pop(0)

    def conv(sub):
        return "".join("..." if s is Ellipsis else letters[int(s)] for s in sub)
    spec = ",".join(conv(s) for s in subs)
    if out is not None:
        spec += "->" + conv(out)
    return spec, ops


def _parse_einsum(subscripts, shapes):
    """Input index strings (ellipsis expanded to fresh letters) and the output string."""
    spec = subscripts.replace(" ", "")
    if "->" in spec:
        lhs, out = spec.split("->")
        explicit = True
    else:
        lhs, out, explicit = spec, None, False
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise ValueError(f"einsum: {len(ins)} operand specs in {subscripts!r} for "
                         f"{len(shapes)} operands")
    used = set(spec) - set(".,->")
    for c in used:
        if c not in string.ascii_letters:
            raise ValueError(f"einsum: invalid subscript {c!r} in {subscripts!r}")
    fresh = [c for c in string.ascii_letters if c not in used]
    n_ell = 0
    for s, shape in zip(ins, shapes):
        if "..." in s:
            n_ell = max(n_ell, len(shape) - (len(s) - 3))
    ell = "".join(fresh[:n_ell])
    expanded = []
    for s, shape in zip(ins, shapes):
        if "..." in s:
            k = len(shape) - (len(s) - 3)
            if k < 0:
                raise ValueError(f"einsum: spec {s!r} has more indices than operand shape "
                                 f"{shape}")
            s = s.replace("...", ell[n_ell - k:])
        if len(s) != len(shape):
            raise ValueError(f"einsum: spec {s!r} does not match operand shape {shape}")
        expanded.append(s)
    if explicit:
        if "..." in out:
            out = out.replace("...", ell)
        for c in out:
            if not any(c in s for s in expanded):
                raise ValueError(f"einsum: output index {c!r} of {subscripts!r} is not in any "
                                 f"input")
        if len(set(out)) != len(out):
            raise ValueError(f"einsum: output indices of {subscripts!r} repeat")
    else:
        counts = {}
        for s in expanded:
            for c in s:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    return expanded, out


def _sum_out(x, spec, drop):
    axes = tuple(i for i, c in enumerate(spec) if c in drop)
    if not axes:
        return x, spec
    return lax.reduce_sum(x, axes), "".join(c for c in spec if c not in drop)


def _contract_pair(a, sa, b, sb, keep, kw):
    """One dot_general: shared indices still needed are batch dims, other shared ones are
    contracted; indices of only one operand that nothing needs are summed first."""
    a, sa = _sum_out(a, sa, {c for c in sa if c not in sb and c not in keep})
    b, sb = _sum_out(b, sb, {c for c in sb if c not in sa and c not in keep})
    batch = [c for c in sa if c in sb and c in keep]
    contract = [c for c in sa if c in sb and c not in keep]
    dn = ((tuple(sa.index(c) for c in contract), tuple(sb.index(c) for c in contract)),
          (tuple(sa.index(c) for c in batch), tuple(sb.index(c) for c in batch)))
    out = lax.dot_general(a, b, dn, **kw)
    spec = "".join(batch) + "".join(c for c in sa if c not in sb) + \
        "".join(c for c in sb if c not in sa)
    return out, spec


def einsum(subscripts, *operands, out=None, optimize="greedy", precision=None,
           preferred_element_type=None):
    """Einstein summation, as numpy.einsum: explicit ('ij,jk->ik') and implicit ('ij,jk')
    modes, '...' broadcasting, repeated indices (diagonals), and the sublist form. Operands
    are contracted pairwise with ``dot_general``; with three or more, in the order numpy's
    ``einsum_path`` finds (left to right when ``optimize`` is False)."""
    if not isinstance(subscripts, str):
        subscripts, operands = _sublist_to_subscripts((subscripts,) + operands)
    ops = [asarray_arg(o) for o in operands]
    if not ops:
        raise ValueError("einsum: needs at least one operand")
    specs, out_spec = _parse_einsum(subscripts, [_shape(o) for o in ops])
    kw = dict(precision=precision, preferred_element_type=preferred_element_type)

    # Each index's size; size-1 dims stretched by another operand are dropped (broadcast).
    sizes = {}
    for s, o in zip(specs, ops):
        for c, d in zip(s, _shape(o)):
            seen = sizes.get(c)
            if d == 1:
                sizes.setdefault(c, 1)
                continue
            if seen not in (None, 1, d):
                raise ValueError(f"einsum: index {c!r} has sizes {seen} and {d} in "
                                 f"{subscripts!r}")
            sizes[c] = d
    prepared = []
    for s, o in zip(specs, ops):
        shape = _shape(o)
        squeeze = tuple(i for i, (c, d) in enumerate(zip(s, shape)) if d == 1 and sizes[c] != 1)
        if squeeze:
            o = lax.squeeze(o, squeeze)
            s = "".join(c for i, c in enumerate(s) if i not in squeeze)
        # Repeated index within one operand: keep its diagonal.
        while len(set(s)) != len(s):
            c = next(c for c in s if s.count(c) > 1)
            i = s.index(c)
            j = s.index(c, i + 1)
            o = lax.reduce_sum(_keep_diagonal(o, i, j), (j,))
            s = s[:j] + s[j + 1:]
        prepared.append((o, s))

    def needed(skip):
        k = set(out_spec)
        for idx, (_, s) in enumerate(prepared):
            if idx not in skip:
                k.update(s)
        return k

    # Indices only one operand has and nothing else needs are summed right away.
    for idx in range(len(prepared)):
        o, s = prepared[idx]
        prepared[idx] = _sum_out(o, s, {c for c in s if c not in needed({idx})})

    if len(prepared) > 2 and optimize:
        dummies = [np.broadcast_to(np.zeros((), np.float64), _shape(o)) for o, _ in prepared]
        path_spec = ",".join(s for _, s in prepared) + "->" + out_spec
        strategy = optimize if isinstance(optimize, str) and optimize != "optimal" else "greedy"
        path = np.einsum_path(path_spec, *dummies, optimize=strategy)[0][1:]
    else:
        path = [(0, 1)] * (len(prepared) - 1)
    for step in path:
        step = sorted(step, reverse=True)
        group = [prepared.pop(i) for i in step][::-1]
        acc, acc_s = group[0]
        for k in range(1, len(group)):
            rest = set(out_spec)
            for _, s in prepared + group[k + 1:]:
                rest.update(s)
            acc, acc_s = _contract_pair(acc, acc_s, group[k][0], group[k][1], rest, kw)
        prepared.append((acc, acc_s))
    result, rs = prepared[0]
    result, rs = _sum_out(result, rs, {c for c in rs if c not in out_spec})
    if rs != out_spec:
        result = lax.transpose(result, tuple(rs.index(c) for c in out_spec))
    if preferred_element_type is not None and \
            get_aval(result).dtype != np.dtype(preferred_element_type):
        result = lax.convert_element_type(result, preferred_element_type)
    return result
