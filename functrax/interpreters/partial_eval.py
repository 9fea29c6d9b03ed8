"""Partial evaluation: splitting a computation into a known part (evaluated now) and an
unknown part (recorded as a jaxpr).

Linearize is partial evaluation of the JVP: the primals are known, the tangents unknown. We do
it *online*: a recording ``JaxprTrace`` (``JaxprBuilder(partial=True)``) sits below the
``JVPTrace``; the primal half of every JVP rule runs on known values and goes to the enclosing
trace (eagerly, or into an enclosing jit), while the tangent half meets the recorder's tracers
and is recorded into a linear jaxpr. The known values it reads become the jaxpr's constants:
the residuals. Primitives with bodies (jit, scan, cond, ...) register ``partial_eval_rules``
(in core) to split their bodies with ``partial_eval_jaxpr``.

>>> import functrax, functrax.numpy as fnp
>>> y, f_lin = functrax.linearize(fnp.sin, 0.0)
>>> f_lin(2.0)
Array(2.)
"""
from __future__ import annotations

from .. import core, dtypes
from ..core import JaxprBuilder, JaxprTrace, Tracer, partial_eval_rules  # noqa: F401
from .jvp import JVPTrace, JVPTracer, Zero, instantiate_zeros, primal_leaves, tangent_aval


def linearize_flat(fun, primals, has_aux=False):
    """Returns (primals_out, linear closed jaxpr from input tangents to output tangents,
    out_zeros) where ``out_zeros[i]`` says the i-th output tangent is identically zero.
    With ``has_aux``, ``fun`` returns (outs, aux_leaves) and a fourth element holds the aux
    leaves' primal values."""
    with core.new_main(JaxprTrace, JaxprBuilder(partial=True)) as rec_main:
        rec = JaxprTrace(rec_main)
        tangent_in = [rec.new_arg(tangent_aval(core.get_aval(p))) for p in primals]
        with core.new_main(JVPTrace) as main:
            trace = JVPTrace(main)
            # Integer and boolean inputs have float0 tangents, which are always zero: keep
            # their invars (one per primal) but give the JVP a symbolic zero.
            tracers = [JVPTracer(trace, p, Zero(t.aval) if t.aval.dtype == dtypes.float0 else t)
                       for p, t in zip(primals, tangent_in)]
            outs = fun(*tracers)
            if has_aux:
                outs, aux = outs
                aux = primal_leaves(trace, aux)
            outs = [trace.full_raise(o) for o in outs]
            primals_out = [o.primal for o in outs]
            tangents_out = [o.tangent for o in outs]
        out_zeros = [type(t) is Zero for t in tangents_out]
        tangents_out = [rec.full_raise(instantiate_zeros(t)) for t in tangents_out]
        jaxpr, consts = rec_main.payload.build(tangent_in, tangents_out)
    if has_aux:
        return primals_out, core.ClosedJaxpr(jaxpr, consts), out_zeros, aux
    return primals_out, core.ClosedJaxpr(jaxpr, consts), out_zeros


def partial_eval_jaxpr(closed: core.ClosedJaxpr, in_unknowns, instantiate=False):
    """Split a closed jaxpr by which inputs are unknown.

    Returns (known, unknown, out_unknowns, num_res):
      known:   known inputs -> known outputs + residuals
      unknown: residuals + unknown inputs -> unknown outputs
    ``instantiate`` (bool or list per output) forces outputs into the unknown side."""
    n_out = len(closed.out_avals)
    if isinstance(instantiate, bool):
        instantiate = [instantiate] * n_out
    in_avals = closed.in_avals
    known_avals = [a for a, u in zip(in_avals, in_unknowns) if not u]
    box = {}

    def known_fun(*known_args):
        with core.new_main(JaxprTrace, JaxprBuilder(partial=True)) as rec_main:
            rec = JaxprTrace(rec_main)
            known_it = iter(known_args)
            unknown_tracers = []
            args = []
            for a, u in zip(in_avals, in_unknowns):
                if u:
                    t = rec.new_arg(a)
                    unknown_tracers.append(t)
                    args.append(t)
                else:
                    args.append(next(known_it))
            outs = core.eval_jaxpr(closed.jaxpr, closed.consts, *args)
            out_unknowns = [(isinstance(o, Tracer) and o._trace.main is rec_main) or inst
                            for o, inst in zip(outs, instantiate)]
            unknown_outs = [rec.full_raise(o) for o, u in zip(outs, out_unknowns) if u]
            jaxpr_unk, residuals = rec_main.payload.build(unknown_tracers, unknown_outs)
        known_outs = [o for o, u in zip(outs, out_unknowns) if not u]
        box["jaxpr_unk"], box["out_unknowns"], box["num_res"] = (
            jaxpr_unk, out_unknowns, len(residuals))
        return known_outs + list(residuals)

    jaxpr_known, consts_known, _ = core.trace_to_jaxpr(known_fun, known_avals)
    jaxpr_unk = core.convert_constvars_jaxpr(box["jaxpr_unk"])
    return (core.ClosedJaxpr(jaxpr_known, consts_known), core.ClosedJaxpr(jaxpr_unk, []),
            box["out_unknowns"], box["num_res"])


def dce_jaxpr(jaxpr: core.Jaxpr, used_outputs=None):
    """Drop equations whose outputs nobody uses (all primitives are pure). Returns
    (new_jaxpr, used_inputs)."""
    if used_outputs is None:
        used_outputs = [True] * len(jaxpr.outvars)
    outvars = [v for v, u in zip(jaxpr.outvars, used_outputs) if u]
    live = {v for v in outvars if type(v) is not core.Literal}
    new_eqns = []
    for eqn in reversed(jaxpr.eqns):
        if any(v in live for v in eqn.outvars) or eqn.primitive in effectful_primitives:
            new_eqns.append(eqn)
            live.update(v for v in eqn.invars if type(v) is not core.Literal)
    new_eqns.reverse()
    used_inputs = [v in live for v in jaxpr.invars]
    constvars = [v for v in jaxpr.constvars if v in live]
    return core.Jaxpr(constvars, jaxpr.invars, outvars, new_eqns), used_inputs


def dce_closed_jaxpr(closed: core.ClosedJaxpr, used_outputs=None):
    jaxpr, used_inputs = dce_jaxpr(closed.jaxpr, used_outputs)
    keep = set(jaxpr.constvars)
    consts = [c for v, c in zip(closed.jaxpr.constvars, closed.consts) if v in keep]
    return core.ClosedJaxpr(jaxpr, consts), used_inputs


# Primitives that must never be removed by DCE (for example, debug callbacks).
effectful_primitives: set = set()
