"""Back-end-neutral lowering passes over a jaxpr: inline, simplify, fuse, plan buffers.

The pipeline every back end shares, up to code generation:

1. ``inline_calls``: nested ``pjit`` calls are spliced into their caller, so fusion sees
   across ``jit`` boundaries.
2. ``simplify``: constant folding (small results only), the algebraic no-ops that AD leaves
   behind (``x * 1``, ``x + 0`` with literal or broadcast constants, same-dtype casts,
   identity reshapes/transposes, double negation), common-subexpression elimination and dead
   code elimination.
3. ``fuse``: elementwise equations of one iteration shape, the broadcasts feeding them and the
   reductions ending them become a ``Cluster`` (one pass over memory); every other equation is
   an ``OpStep``. The grouping is greedy in program order: a cluster stays open while its values
   are consumed only by equations that can join it, and is sealed (scheduled) as soon as
   anything else needs one of its values, which keeps the step list topologically ordered.
4. ``last_uses``: the step after which each value is dead, for buffer reuse and early frees.

>>> import functrax, functrax.numpy as fnp
>>> from functrax.lowering import plan
>>> closed = functrax.make_jaxpr(lambda x: fnp.sum(fnp.sin(x) * 1.0 + x))(fnp.ones(3))
>>> jaxpr, consts = plan.simplify(*plan.inline_calls(closed.jaxpr, closed.consts))
>>> steps = plan.fuse(jaxpr, plan.DEFAULT_FUSIBLE)
>>> [type(s).__name__ for s in steps], len(steps[0].eqns)
(['Cluster'], 3)
"""
from __future__ import annotations

import numpy as np

from .. import core
from ..core import Jaxpr, JaxprEqn, Literal, Var
from ..interpreters.partial_eval import dce_jaxpr, effectful_primitives

__all__ = ["inline_calls", "simplify", "fuse", "last_uses", "Cluster", "OpStep",
           "ELEMENTWISE", "REDUCTIONS", "DEFAULT_FUSIBLE", "FOLD_MAX_SIZE", "CALL_PRIMITIVES"]

# Elementwise primitives (by name) a fused kernel may contain, and the reductions that may end
# one. Back ends pass the subset they can generate code for.
ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "rem", "neg", "max", "min", "pow", "integer_pow", "exp", "log",
    "expm1", "log1p", "sin", "cos", "tanh", "sqrt", "logistic", "abs", "sign", "floor", "eq",
    "ne", "lt", "le", "gt", "ge", "and", "or", "not", "select_n", "convert_element_type"})
REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min"})
DEFAULT_FUSIBLE = ELEMENTWISE | REDUCTIONS | {"broadcast_in_dim"}

# Call-like primitives whose body is inlined into the caller.
CALL_PRIMITIVES = frozenset({"pjit"})

# Constant folding evaluates equations on constants at lowering time, but only when the result
# is small: folding a broadcast of 1.0 to 10**7 elements would bake a 40 MB array into the
# program where a kernel reads one scalar.
FOLD_MAX_SIZE = 4096


def _is_lit(v):
    return type(v) is Literal


# ---------------------------------------------------------------------------------------------
# Inlining


def inline_calls(jaxpr: Jaxpr, consts):
    """Splice the bodies of ``pjit`` equations into ``jaxpr`` (recursively). Returns
    (jaxpr, consts); an inlined body gets fresh variables each time it is inlined, so a jitted
    function called twice by its caller is inlined twice without clashes."""
    if not any(e.primitive.name in CALL_PRIMITIVES for e in jaxpr.eqns):
        return jaxpr, list(consts)
    constvars, constvals = list(jaxpr.constvars), list(consts)
    eqns = []
    env = {}
    _inline_into(jaxpr.eqns, env, eqns, constvars, constvals, rename=False)
    outvars = [v if _is_lit(v) else env.get(v, v) for v in jaxpr.outvars]
    return Jaxpr(constvars, jaxpr.invars, outvars, eqns), constvals


def _inline_into(src_eqns, env, out_eqns, constvars, constvals, rename):
    for eqn in src_eqns:
        invars = [v if _is_lit(v) else env.get(v, v) for v in eqn.invars]
        if eqn.primitive.name in CALL_PRIMITIVES and "jaxpr" in eqn.params:
            closed = eqn.params["jaxpr"]
            inner = closed.jaxpr
            sub = {}
            for cv, val in zip(inner.constvars, closed.consts):
                nv = Var(cv.aval)
                constvars.append(nv)
                constvals.append(val)
                sub[cv] = nv
            sub.update(zip(inner.invars, invars))
            _inline_into(inner.eqns, sub, out_eqns, constvars, constvals, rename=True)
            for ov, iv in zip(eqn.outvars, inner.outvars):
                if type(ov) is not core.DropVar:
                    env[ov] = iv if _is_lit(iv) else sub.get(iv, iv)
            continue
        new = eqn._replace(invars=invars)
        if rename:
            outs = []
            for v in eqn.outvars:
                nv = core.DropVar(v.aval) if type(v) is core.DropVar else Var(v.aval)
                env[v] = nv
                outs.append(nv)
            new = new._replace(outvars=outs)
        out_eqns.append(new)
