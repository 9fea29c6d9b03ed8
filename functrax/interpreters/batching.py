"""vmap's interpreter: ``BatchTrace`` moves a batch dimension through primitives.

``batching_rules`` maps a primitive to ``rule(vals, dims, **params) -> (out, out_dim)``
where each dim is an int or ``not_mapped`` (None). ``axis_batching_rules`` holds rules that
also need the axis (its size and name): ``rule(axis_data, vals, dims, **params)`` — the
collectives (psum, ...) and control flow use them. Rules keep the work vectorized: one
primitive on the whole batch, never a Python loop.

Helpers for common rule shapes:

* ``defvectorized(prim)``: unary elementwise; the batch dim passes through.
* ``defbroadcasting(prim)``: numpy-broadcasting elementwise ops with any number of operands.
* ``defreducer(prim)``: reductions with an ``axes`` parameter.

>>> import functrax, functrax.numpy as fnp
>>> functrax.vmap(lambda x: x.sum())(fnp.ones((3, 4)))
Array([4., 4., 4.])
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import core
from ..core import Tracer, Trace, get_aval, ShapedArray

not_mapped = None

batching_rules: dict = {}
axis_batching_rules: dict = {}


class AxisData(NamedTuple):
    size: int
    name: object  # the axis_name given to vmap, or None


class BatchTracer(Tracer):
    __slots__ = ("val", "batch_dim")

    def __init__(self, trace, val, batch_dim):
        self._trace = trace
        self.val = val
        self.batch_dim = batch_dim

    @property
    def aval(self):
        aval = get_aval(self.val)
        if self.batch_dim is None:
            return aval
        shape = aval.shape[:self.batch_dim] + aval.shape[self.batch_dim + 1:]
        return ShapedArray(shape, aval.dtype, aval.weak_type)

    def full_lower(self):
        if self.batch_dim is None:
            return core.full_lower(self.val)
        return self


class BatchTrace(Trace):
    __slots__ = ()

    @property
    def axis_data(self) -> AxisData:
        return self.main.payload

    def pure(self, val):
        return BatchTracer(self, val, not_mapped)

    lift = pure

    def process_primitive(self, primitive, tracers, params):
        vals = [t.val for t in tracers]
        dims = [t.batch_dim for t in tracers]
        axis_rule = axis_batching_rules.get(primitive)
        if axis_rule is None and all(d is None for d in dims):
            return primitive.bind(*vals, **params)
        if axis_rule is not None:
            out, out_dim = axis_rule(self.axis_data, vals, dims, **params)
        else:
            rule = batching_rules.get(primitive)
            if rule is None:
                raise NotImplementedError(f"Batching rule for '{primitive}' is not implemented")
            out, out_dim = rule(vals, dims, **params)
        if primitive.multiple_results:
            return [BatchTracer(self, o, d) for o, d in zip(out, out_dim)]
        return BatchTracer(self, out, out_dim)

    def transform_name(self):
        return "BatchTrace"


def batch_flat(fun, axis_size, axis_name, vals, in_dims):
    """Apply ``fun`` (flat lists in and out) to batched values. Returns (outs, out_dims)."""
    with core.new_main(BatchTrace, AxisData(axis_size, axis_name)) as main:
        trace = BatchTrace(main)
        tracers = [BatchTracer(trace, v, d) if d is not None else v
                   for v, d in zip(vals, in_dims)]
        outs = fun(*tracers)
        outs = [trace.full_raise(o) for o in outs]
        return [o.val for o in outs], [o.batch_dim for o in outs]


# --- moving batch dimensions ------------------------------------------------------------------


def moveaxis(x, src, dst):
    from .. import lax
    nd = get_aval(x).ndim
    src, dst = src % nd, dst % nd
    if src == dst:
        return x
    perm = [i for i in range(nd) if i != src]
    perm.insert(dst, src)
    return lax.transpose(x, tuple(perm))


def bdim_at_front(x, bdim, size):
    """x with its batch dim first; an unbatched x is broadcast to the batch size."""
    from .. import lax
    if bdim is None:
        aval = get_aval(x)
        return lax.broadcast_in_dim(x, (size,) + aval.shape, tuple(range(1, aval.ndim + 1)))
    return moveaxis(x, bdim, 0)


def matchaxis(x, src, dst, size):
    """Move (or create, for an unbatched x) the batch dim at ``dst``."""
    from .. import lax
    if src == dst:
        return x
    if src is None:
        aval = get_aval(x)
        shape = list(aval.shape)
        shape.insert(dst, size)
        dims = tuple(i for i in range(len(shape)) if i != dst)
        return lax.broadcast_in_dim(x, tuple(shape), dims)
    if dst is None:
        raise ValueError("vmap: cannot drop a batched dimension (out_axes=None on an output "
                         "that depends on the mapped axis)")
    return moveaxis(x, src, dst)


def batch_size_of(vals, dims):
    for v, d in zip(vals, dims):
        if d is not None:
            return get_aval(v).shape[d]
    raise ValueError("no batched operand")


# --- helpers for common rule shapes -----------------------------------------------------------


def defvectorized(primitive):
    """Unary elementwise: apply to the batched value, the batch dim stays where it is."""
    def rule(vals, dims, **params):
        (x,), (d,) = vals, dims
        return primitive.bind(x, **params), d
    batching_rules[primitive] = rule


def broadcast_batcher(primitive, vals, dims, **params):
    """Elementwise primitives with numpy broadcasting: put each batched operand's batch dim
    first and pad its rank so that it lines up with the others' unbatched dims."""
    from .. import lax
    out_rank = max(get_aval(v).ndim - (d is not None) for v, d in zip(vals, dims))
    if all(d is not None for d in dims) and len({d for d in dims}) == 1 and \
            len({get_aval(v).ndim for v in vals}) == 1:
        return primitive.bind(*vals, **params), dims[0]  # all aligned: nothing to move
    new_vals = []
    for v, d in zip(vals, dims):
        if d is None:
            new_vals.append(v)
            continue
        v = moveaxis(v, d, 0)
        aval = get_aval(v)
        pad = out_rank - (aval.ndim - 1)
        if pad:
            v = lax.reshape(v, (aval.shape[0],) + (1,) * pad + aval.shape[1:])
        new_vals.append(v)
    return primitive.bind(*new_vals, **params), 0


def defbroadcasting(primitive):
    batching_rules[primitive] = lambda vals, dims, **params: broadcast_batcher(
        primitive, vals, dims, **params)


def defreducer(primitive):
    """Reductions with an ``axes`` parameter: shift the reduced axes past the batch dim."""
    def rule(vals, dims, *, axes, **params):
        (x,), (d,) = vals, dims
        axes = tuple(a + (a >= d) for a in axes)
        out = primitive.bind(x, axes=axes, **params)
        return out, d - sum(a < d for a in axes)
    batching_rules[primitive] = rule


def batch_jaxpr(closed: core.ClosedJaxpr, axis_size, in_dims, out_dims_dst, axis_name=None):
    """A closed jaxpr computing the batched version of ``closed``.

    ``in_dims``: batch dim of each input (None: unbatched). ``out_dims_dst``: where each
    output's batch dim should be (an int forces a batched output; None lets an output that
    does not depend on the batch stay unbatched). Returns (batched closed jaxpr, out_dims)."""
    box = []

    def fun(*args):
        outs, dims = batch_flat(lambda *xs: core.eval_jaxpr(closed.jaxpr, closed.consts, *xs),
                                axis_size, axis_name, args, in_dims)
        result, out_dims = [], []
        for o, d, dst in zip(outs, dims, out_dims_dst):
            if dst is None:
                result.append(o)
                out_dims.append(d)
            else:
                result.append(matchaxis(o, d, dst, axis_size))
                out_dims.append(dst)
        box.append(out_dims)
        return result

    in_avals = []
    for a, d in zip(closed.in_avals, in_dims):
        if d is None:
            in_avals.append(a)
        else:
            shape = list(a.shape)
            shape.insert(d, axis_size)
            in_avals.append(a.update(shape=tuple(shape)))
    jaxpr, consts, _ = core.trace_to_jaxpr(fun, in_avals)
    return core.ClosedJaxpr(jaxpr, consts), box[0]
