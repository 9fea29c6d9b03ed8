"""Forward mode: ``JVPTrace`` carries (primal, tangent) pairs through primitives.

The rule table ``jvp_rules`` maps a primitive to ``rule(primals, tangents, **params) ->
(primal_out, tangent_out)``. Tangents may be symbolic zeros (``Zero(aval)``): inputs that do
not depend on the differentiated arguments cost nothing, and a primitive all of whose tangents
are zero is simply evaluated. Every rule is written with functrax operations, so rules are
traceable and can be differentiated again (``grad(grad(f))``).

Helpers for the common rule shapes:

* ``defjvp(prim, *rules)``: one rule per argument, ``rule(x_dot, *primals, **params)``, summed.
* ``defjvp2(prim, *rules)``: like defjvp, with the primal output too: ``rule(x_dot, ans, *primals)``.
* ``deflinear(prim, transpose)``: the primitive is linear in all its arguments.
* ``defjvp_zero(prim)``: the output does not depend differentiably on the inputs.

>>> import functrax, functrax.numpy as fnp
>>> functrax.jvp(fnp.sin, (0.0,), (1.0,))
(Array(0.), Array(1.))
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes
from ..core import Tracer, Trace, get_aval, ShapedArray

jvp_rules: dict = {}


class Zero:
    """A symbolic zero tangent (or cotangent) of a given abstract value."""

    __slots__ = ("aval",)

    def __init__(self, aval: ShapedArray):
        self.aval = aval

    def __repr__(self):
        return f"Zero({self.aval.str_short()})"

    @staticmethod
    def from_value(val):
        return Zero(tangent_aval(get_aval(val)))


def tangent_aval(aval: ShapedArray) -> ShapedArray:
    """Tangents of integer and boolean values have dtype float0 (they are always zero)."""
    if dtypes.is_inexact(aval.dtype):
        return ShapedArray(aval.shape, aval.dtype)
    return ShapedArray(aval.shape, dtypes.float0)


def is_zero(t) -> bool:
    return type(t) is Zero


def instantiate_zeros(t):
    """A concrete zero array for a symbolic zero; other tangents pass through."""
    if type(t) is not Zero:
        return t
    if t.aval.dtype == dtypes.float0:
        return np.zeros(t.aval.shape, dtypes.float0)
    from .. import lax
    return lax.full(t.aval.shape, 0, t.aval.dtype)


def zeros_like_value(x):
    from .. import lax
    aval = get_aval(x)
    return lax.full(aval.shape, 0, aval.dtype)


def add_tangents(x, y):
    """Sum of two tangents of the same type, either possibly a symbolic zero."""
    if type(x) is Zero:
        return y
    if type(y) is Zero:
        return x
    from .. import lax
    return lax.add(x, y)


def fit_to_aval(t, aval: ShapedArray):
    """Broadcast and cast a tangent to exactly ``aval`` (elementwise rules broadcast their
    inputs, so a per-argument tangent may have the argument's smaller shape)."""
    if type(t) is Zero:
        return Zero(tangent_aval(aval))
    from .. import lax
    t_aval = get_aval(t)
    if t_aval.dtype != aval.dtype and dtypes.is_inexact(aval.dtype):
        t = lax.convert_element_type(t, aval.dtype)
    if t_aval.shape != aval.shape:
        t = lax.broadcast_to(t, aval.shape)
    return t


class JVPTracer(Tracer):
    __slots__ = ("primal", "tangent")

    def __init__(self, trace, primal, tangent):
        self._trace = trace
        self.primal = primal
        self.tangent = tangent

    @property
    def aval(self):
        return get_aval(self.primal)

    def full_lower(self):
        if type(self.tangent) is Zero:
            return core.full_lower(self.primal)
        return self


class JVPTrace(Trace):
    __slots__ = ()

    def pure(self, val):
        return JVPTracer(self, val, Zero.from_value(val))

    lift = pure

    def process_primitive(self, primitive, tracers, params):
        primals = [t.primal for t in tracers]
        tangents = [t.tangent for t in tracers]
        if all(type(t) is Zero for t in tangents):
            return primitive.bind(*primals, **params)
        rule = jvp_rules.get(primitive)
        if rule is None:
            raise NotImplementedError(
                f"Differentiation rule for '{primitive}' is not implemented")
        primal_out, tangent_out = rule(primals, tangents, **params)
        if primitive.multiple_results:
            return [JVPTracer(self, p, t) for p, t in zip(primal_out, tangent_out)]
        return JVPTracer(self, primal_out, tangent_out)

    def to_concrete(self, tracer, context):
        return core.concrete_or_error(tracer.primal, context)

    def transform_name(self):
        return "jvp"


def jvp_flat(fun, primals, tangents, has_aux=False):
    """Forward mode on flat lists: returns (primals_out, tangents_out); tangents_out may
    contain symbolic zeros. With ``has_aux``, ``fun`` returns (outs, aux_leaves) and the
    result gains a third element: the aux leaves' primal values (no tracer of this
    transformation escapes with them)."""
    with core.new_main(JVPTrace) as main:
        trace = JVPTrace(main)
        tracers = [JVPTracer(trace, p, t) for p, t in zip(primals, tangents)]
        outs = fun(*tracers)
        if has_aux:
            outs, aux = outs
            aux = primal_leaves(trace, aux)
        outs = [trace.full_raise(o) for o in outs]
        primals_out = [o.primal for o in outs]
        tangents_out = [o.tangent for o in outs]
    if has_aux:
        return primals_out, tangents_out, aux
    return primals_out, tangents_out


def primal_leaves(trace, leaves):
    """The primal parts of ``leaves`` as seen from ``trace`` (a JVPTrace): tracers of it give
    their primal, anything else (Python values, outer tracers) is returned unchanged."""
    return [trace.full_raise(x).primal if isinstance(x, core.Tracer) else x for x in leaves]


# --- helpers for the common rule shapes -------------------------------------------------------


def defjvp(primitive, *rules):
    """One rule per argument: ``rule(x_dot, *primals, **params)`` gives that argument's
    contribution to the output tangent (None for an argument that is not differentiable)."""
    def jvp(primals, tangents, **params):
        ans = primitive.bind(*primals, **params)
        out_aval = get_aval(ans)
        t_out = Zero(tangent_aval(out_aval))
        for rule, t in zip(rules, tangents):
            if rule is not None and type(t) is not Zero:
                t_out = add_tangents(t_out, fit_to_aval(rule(t, *primals, **params), out_aval))
        return ans, t_out
    jvp_rules[primitive] = jvp


def defjvp2(primitive, *rules):
    """Like defjvp, but each rule also sees the primal output: ``rule(x_dot, ans, *primals)``."""
    def jvp(primals, tangents, **params):
        ans = primitive.bind(*primals, **params)
        out_aval = get_aval(ans)
        t_out = Zero(tangent_aval(out_aval))
        for rule, t in zip(rules, tangents):
            if rule is not None and type(t) is not Zero:
                t_out = add_tangents(t_out,
                                     fit_to_aval(rule(t, ans, *primals, **params), out_aval))
        return ans, t_out
    jvp_rules[primitive] = jvp


def defjvp_zero(primitive):
    """Outputs with zero derivative (comparisons, floor, argmax, iota, ...)."""
    def jvp(primals, tangents, **params):
        ans = primitive.bind(*primals, **params)
        if primitive.multiple_results:
            return ans, [Zero.from_value(a) for a in ans]
        return ans, Zero.from_value(ans)
    jvp_rules[primitive] = jvp


def deflinear(primitive, transpose_rule=None):
    """A primitive linear in all its arguments: the tangent is the primitive applied to the
    tangents. ``transpose_rule(ct, *undefined_or_values, **params)`` goes to transpose.py."""
    def jvp(primals, tangents, **params):
        ans = primitive.bind(*primals, **params)
        if all(type(t) is Zero for t in tangents):
            return ans, Zero.from_value(ans)
        t_out = primitive.bind(*[instantiate_zeros(t) for t in tangents], **params)
        return ans, t_out
    jvp_rules[primitive] = jvp
    if transpose_rule is not None:
        from .transpose import transpose_rules
        transpose_rules[primitive] = transpose_rule


def jvp_jaxpr(closed: core.ClosedJaxpr, nonzeros, instantiate):
    """The JVP of a closed jaxpr as a closed jaxpr.

    Inputs of the result: the primals, then the tangents of the inputs marked in ``nonzeros``.
    Outputs: the primal outputs, then the nonzero output tangents. ``instantiate`` (a bool or a
    list) forces output tangents to be present. Returns (jvp_closed_jaxpr, out_nonzeros)."""
    n = len(closed.in_avals)
    if isinstance(instantiate, bool):
        instantiate = [instantiate] * len(closed.out_avals)
    out_nz_box = []

    def fun(*args):
        primals, nz_tangents = args[:n], iter(args[n:])
        tangents = [next(nz_tangents) if nz else Zero(tangent_aval(a))
                    for nz, a in zip(nonzeros, closed.in_avals)]
        p_out, t_out = jvp_flat(lambda *xs: core.eval_jaxpr(closed.jaxpr, closed.consts, *xs),
                                primals, tangents)
        out_nz = [not is_zero(t) or inst for t, inst in zip(t_out, instantiate)]
        out_nz_box.append(out_nz)
        t_out = [instantiate_zeros(t) for t, nz in zip(t_out, out_nz) if nz]
        return list(p_out) + t_out

    in_avals = list(closed.in_avals) + [tangent_aval(a) for a, nz in
                                        zip(closed.in_avals, nonzeros) if nz]
    jaxpr, consts, _ = core.trace_to_jaxpr(fun, in_avals)
    return core.ClosedJaxpr(jaxpr, consts), out_nz_box[0]
