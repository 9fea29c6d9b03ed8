"""Reverse mode's second half: transposing a linear jaxpr.

``transpose_rules`` maps a linear primitive to ``rule(ct, *args, **params) -> cts_in``, where
each arg is either a value (a non-linear operand such as the constant factor of a
multiplication) or an ``UndefinedPrimal(aval)`` (a linear operand, whose cotangent the rule
returns). The rule returns one cotangent per argument: ``None`` (or a ``Zero``) for the
non-linear ones. Cotangents may be symbolic zeros; ``backward_pass`` skips equations whose
output cotangents are all zero.

>>> import functrax, functrax.numpy as fnp
>>> y, f_vjp = functrax.vjp(lambda x: 3.0 * x, 2.0)
>>> f_vjp(1.0)
(Array(3.),)
"""
from __future__ import annotations

from .. import core
from ..core import get_aval
from .jvp import Zero, add_tangents, instantiate_zeros, is_zero, tangent_aval

transpose_rules: dict = {}


class UndefinedPrimal:
    """A linear input of a jaxpr being transposed: only its type is known."""

    __slots__ = ("aval",)

    def __init__(self, aval):
        self.aval = aval

    def __repr__(self):
        return f"UndefinedPrimal({self.aval.str_short()})"


def is_undefined_primal(x) -> bool:
    return type(x) is UndefinedPrimal


def backward_pass(jaxpr: core.Jaxpr, consts, args, cts_out):
    """Transpose ``jaxpr`` with respect to its ``UndefinedPrimal`` inputs.

    ``args`` holds one entry per invar (values or UndefinedPrimal); ``cts_out`` one cotangent
    per output (values or Zero). Returns one cotangent per invar (Zero for defined inputs)."""
    primal_env = {}
    linear = set()

    def read_primal(v):
        if type(v) is core.Literal:
            return v.val
        return primal_env.get(v, UndefinedPrimal(v.aval)) if v in linear else primal_env[v]

    for v, c in zip(jaxpr.constvars, consts):
        primal_env[v] = c
    for v, a in zip(jaxpr.invars, args):
        if type(a) is UndefinedPrimal:
            linear.add(v)
        else:
            primal_env[v] = a

    # Forward: evaluate the equations that do not depend on linear inputs.
    linear_eqns = []
    for eqn in jaxpr.eqns:
        if any(type(v) is not core.Literal and v in linear for v in eqn.invars):
            linear.update(eqn.outvars)
            linear_eqns.append(eqn)
        else:
            invals = [read_primal(v) for v in eqn.invars]
            with core.source_info_context(eqn.source_info):
                outs = eqn.primitive.bind(*invals, **eqn.params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
            primal_env.update(zip(eqn.outvars, outs))

    ct_env = {}

    def write_ct(v, ct):
        if ct is None or type(v) is core.Literal or is_zero(ct):
            return
        if v not in linear:
            return
        ct_env[v] = add_tangents(ct_env[v], ct) if v in ct_env else ct

    def read_ct(v):
        ct = ct_env.pop(v, None)
        return Zero(tangent_aval(v.aval)) if ct is None else ct

    for v, ct in zip(jaxpr.outvars, cts_out):
        write_ct(v, ct)

    for eqn in reversed(linear_eqns):
        cts = [read_ct(v) for v in eqn.outvars]
        if all(is_zero(c) for c in cts):
            continue
        rule = transpose_rules.get(eqn.primitive)
        if rule is None:
            raise NotImplementedError(
                f"Transpose rule (reverse-mode differentiation) for '{eqn.primitive}' is not "
                f"implemented (at {eqn.source_info})")
        invals = [read_primal(v) for v in eqn.invars]
        with core.source_info_context(eqn.source_info):
            cts_in = rule(cts if eqn.primitive.multiple_results else cts[0], *invals,
                          **eqn.params)
        for v, ct in zip(eqn.invars, cts_in):
            write_ct(v, ct)

    return [read_ct(v) if v in linear else Zero(tangent_aval(v.aval)) for v in jaxpr.invars]


def transpose_jaxpr(closed: core.ClosedJaxpr, linear_flags):
    """A closed jaxpr computing, from the non-linear inputs and the output cotangents, the
    cotangents of the linear inputs (instantiated to zeros where symbolic)."""
    in_avals = closed.in_avals
    nonlin_avals = [a for a, lin in zip(in_avals, linear_flags) if not lin]
    ct_avals = [tangent_aval(a) for a in closed.out_avals]

    def fun(*args):
        nonlin, cts = iter(args[:len(nonlin_avals)]), args[len(nonlin_avals):]
        full = [UndefinedPrimal(a) if lin else next(nonlin)
                for a, lin in zip(in_avals, linear_flags)]
        cts_in = backward_pass(closed.jaxpr, closed.consts, full, list(cts))
        return [instantiate_zeros(ct) for ct, lin in zip(cts_in, linear_flags) if lin]

    jaxpr, consts, _ = core.trace_to_jaxpr(fun, nonlin_avals + ct_avals)
    return core.ClosedJaxpr(jaxpr, consts)


def unbroadcast(ct, aval):
    """Sum a cotangent down to ``aval``'s shape and cast it to its dtype: the transpose of
    numpy-style broadcasting in elementwise primitives."""
    from .. import lax
    if is_zero(ct):
        return Zero(tangent_aval(aval))
    ct_aval = get_aval(ct)
    if ct_aval.shape != aval.shape:
        lead = ct_aval.ndim - aval.ndim
        dims = tuple(range(lead)) + tuple(
            i + lead for i, d in enumerate(aval.shape) if d == 1 and ct_aval.shape[i + lead] != 1)
        if dims:
            ct = lax.reduce_sum(ct, axes=dims)
        if get_aval(ct).shape != aval.shape:
            ct = lax.reshape(ct, aval.shape)
    if get_aval(ct).dtype != aval.dtype and tangent_aval(aval).dtype == aval.dtype:
        ct = lax.convert_element_type(ct, aval.dtype)
    return ct
