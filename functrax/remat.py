"""Gradient checkpointing: ``checkpoint`` (alias ``remat``) recomputes instead of storing.

Reverse mode normally keeps every intermediate value the derivative needs (the residuals)
from the forward pass until the backward pass. ``checkpoint(f)`` keeps only the inputs of
``f`` and what ``policy`` allows, and recomputes the rest of ``f``'s intermediates during the
backward pass: less memory for more compute. Values are unchanged.

Policies (``checkpoint_policies``) decide, per equation of the differentiated function,
whether its output may be saved: ``everything_saveable``, ``nothing_saveable`` (the default
when ``policy=None``), ``dots_saveable`` (matrix products), ``dots_with_no_batch_dims_saveable``,
``save_only_these_names(*names)`` / ``save_any_names_but_these(*names)`` for values tagged with
``checkpoint_name(x, name)``, and ``save_from_both_policies(p1, p2)``.

>>> import numpy as np, functrax as ft, functrax.numpy as fnp
>>> f = lambda x: fnp.sum(fnp.sin(fnp.sin(fnp.sin(x))))
>>> x = fnp.ones(3)
>>> bool(np.allclose(ft.grad(ft.checkpoint(f))(x), ft.grad(f)(x)))
True
>>> len(ft.linearize(ft.checkpoint(f), x)[1].jaxpr.consts) < len(ft.linearize(f, x)[1].jaxpr.consts)
True

How it works. ``remat`` is a call primitive holding the traced closed jaxpr of ``f``. Its JVP
rule binds ``remat`` again on the JVP jaxpr (primals and tangents in, both out). Under
linearize the recorder meets that equation with known primals and unknown tangents and runs
``remat``'s partial-evaluation rule: the primal equations are evaluated now; the tangent
equations are recorded, together with recomputations of the known values they need that the
policy does not allow to save, into one ``remat`` equation of the linear jaxpr whose operands
(the residuals) are only the known inputs and the saved values. Transposing that equation
(``backward_pass`` on its jaxpr) first re-evaluates the recomputations, then transposes.
"""
from __future__ import annotations

import functools
import types

from . import core
from .core import ClosedJaxpr, JaxprBuilder, JaxprTrace, Literal, Primitive, get_aval
from .interpreters import batching
from .interpreters.jvp import Zero, is_zero, jvp_jaxpr, jvp_rules, tangent_aval
from .interpreters.transpose import backward_pass, transpose_rules
from .tree_util import tree_flatten, tree_map, tree_unflatten

__all__ = ["checkpoint", "remat", "checkpoint_policies", "checkpoint_name"]


# ---------------------------------------------------------------------------------------------
# checkpoint_name: tag a value so that a policy can refer to it


def _name_impl(x, *, name):
    return x


name_p = Primitive("name")
name_p.def_impl(_name_impl)
name_p.def_abstract_eval(lambda x, *, name: x)


def checkpoint_name(x, name):
    """Tag every array of the pytree ``x`` with ``name`` (an identity), for
    ``save_only_these_names`` / ``save_any_names_but_these`` policies."""
    if not isinstance(name, str):
        raise TypeError(f"checkpoint_name: name must be a string, got {type(name).__name__}")
    return tree_map(lambda v: name_p.bind(v, name=name), x)


def _name_jvp(primals, tangents, *, name):
    (x,), (t,) = primals, tangents
    return name_p.bind(x, name=name), t


jvp_rules[name_p] = _name_jvp
transpose_rules[name_p] = lambda ct, x, *, name: [ct]
batching.batching_rules[name_p] = lambda vals, dims, *, name: (name_p.bind(vals[0], name=name),
                                                               dims[0])


# ---------------------------------------------------------------------------------------------
# Policies: policy(primitive, *input_avals, **params) -> may this equation's output be saved?


def _everything_saveable(prim, *avals, **params):
    return True


def _nothing_saveable(prim, *avals, **params):
    return False


def _dots_saveable(prim, *avals, **params):
    return prim.name in ("dot_general", "conv_general_dilated")


def _dots_with_no_batch_dims_saveable(prim, *avals, **params):
    if prim.name != "dot_general":
        return False
    dims = params.get("dimension_numbers")
    try:
        (_, _), (lhs_batch, rhs_batch) = dims
    except (TypeError, ValueError):
        return False
    return not lhs_batch and not rhs_batch


def _save_only_these_names(*names):
    names = frozenset(names)

    def policy(prim, *avals, **params):
        return prim is name_p and params.get("name") in names
    policy.__name__ = f"save_only_these_names{tuple(sorted(names))}"
    return policy


def _save_any_names_but_these(*names):
    names = frozenset(names)

    def policy(prim, *avals, **params):
        return prim is name_p and params.get("name") not in names
    policy.__name__ = f"save_any_names_but_these{tuple(sorted(names))}"
    return policy


def _save_from_both_policies(policy_1, policy_2):
    def policy(prim, *avals, **params):
        return policy_1(prim, *avals, **params) or policy_2(prim, *avals, **params)
    return policy


checkpoint_policies = types.SimpleNamespace(
    everything_saveable=_everything_saveable,
    nothing_saveable=_nothing_saveable,
    dots_saveable=_dots_saveable,
    checkpoint_dots=_dots_saveable,
    dots_with_no_batch_dims_saveable=_dots_with_no_batch_dims_saveable,
    save_only_these_names=_save_only_these_names,
    save_any_names_but_these=_save_any_names_but_these,
    save_from_both_policies=_save_from_both_policies,
)


# ---------------------------------------------------------------------------------------------
# checkpoint


def checkpoint(fun=None, *, prevent_cse=True, policy=None, static_argnums=()):
    """``fun`` with its intermediates recomputed in the backward pass instead of stored.

    ``policy(primitive, *avals, **params) -> bool`` names the intermediates that may be saved
    (see ``checkpoint_policies``); ``policy=None`` saves none but the inputs.
    ``static_argnums`` marks arguments that are not arrays (passed through unchanged).
    ``prevent_cse`` is accepted for compatibility (no pass here merges the recomputation with
    the forward computation). Usable as ``@checkpoint`` or ``@checkpoint(policy=...)``.
    """
    if fun is None:
        return functools.partial(checkpoint, prevent_cse=prevent_cse, policy=policy,
                                 static_argnums=static_argnums)
    if policy is not None and not callable(policy):
        raise TypeError(f"checkpoint: policy must be a callable (see checkpoint_policies), got "
                        f"{type(policy).__name__}")
    static = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    fname = getattr(fun, "__name__", type(fun).__name__)

    @functools.wraps(fun)
    def remat_fun(*args, **kwargs):
        if len(core._state.stack) == 1 and core._state.dynamic is None:
            return fun(*args, **kwargs)  # nothing is differentiated: nothing to save
        for i in static:
            if not -len(args) <= i < len(args):
                raise ValueError(f"checkpoint of {fname}: static_argnums {static} is out of "
                                 f"range for a call with {len(args)} positional argument(s)")
        static_idx = {i % len(args) for i in static}
        dyn = [a for i, a in enumerate(args) if i not in static_idx]
        leaves, in_tree = tree_flatten((dyn, kwargs))
        box = {}

        def flat_fun(*xs):
            d, kw = tree_unflatten(in_tree, list(xs))
            it = iter(d)
            full = [args[i] if i in static_idx else next(it) for i in range(len(args))]
            out_leaves, box["out_tree"] = tree_flatten(fun(*full, **kw))
            return out_leaves

        jaxpr, consts, _ = core.trace_to_jaxpr(flat_fun, [get_aval(x) for x in leaves])
        closed = ClosedJaxpr(core.convert_constvars_jaxpr(jaxpr), [])
        outs = remat_p.bind(*consts, *leaves, jaxpr=closed, prevent_cse=prevent_cse,
                            policy=policy)
        return tree_unflatten(box["out_tree"], outs)

    return remat_fun


remat = checkpoint


def _remat_impl(*args, jaxpr, prevent_cse, policy):
    return core.eval_jaxpr(jaxpr.jaxpr, jaxpr.consts, *args)


remat_p = Primitive("remat")
remat_p.multiple_results = True
remat_p.def_impl(_remat_impl)
remat_p.def_abstract_eval(lambda *avals, jaxpr, **_: list(jaxpr.out_avals))


def _remat_jvp(primals, tangents, *, jaxpr, prevent_cse, policy):
    from . import dtypes
    nonzeros = [not is_zero(t) and get_aval(t).dtype != dtypes.float0 for t in tangents]
    jvp_closed, out_nz = jvp_jaxpr(jaxpr, nonzeros, instantiate=False)
    outs = remat_p.bind(*primals, *[t for t, nz in zip(tangents, nonzeros) if nz],
                        jaxpr=jvp_closed, prevent_cse=prevent_cse, policy=policy)
    n = len(jaxpr.out_avals)
    nz_ts = iter(outs[n:])
    t_out = [next(nz_ts) if nz else Zero(tangent_aval(a))
             for nz, a in zip(out_nz, jaxpr.out_avals)]
    return outs[:n], t_out


jvp_rules[remat_p] = _remat_jvp


def _remat_transpose(cts, *args, jaxpr, prevent_cse, policy):
    # backward_pass evaluates the non-linear equations (the recomputation) before transposing.
    return backward_pass(jaxpr.jaxpr, jaxpr.consts, list(args), list(cts))


transpose_rules[remat_p] = _remat_transpose


def _remat_batch(vals, dims, *, jaxpr, prevent_cse, policy):
    size = batching.batch_size_of(vals, dims)
    batched, out_dims = batching.batch_jaxpr(jaxpr, size, dims, [None] * len(jaxpr.out_avals))
    outs = remat_p.bind(*vals, jaxpr=batched, prevent_cse=prevent_cse, policy=policy)
    return outs, out_dims


batching.batching_rules[remat_p] = _remat_batch


def _remat_partial_eval(trace, tracers, params):
    """Evaluate the known equations now; record the unknown ones (with recomputations of the
    non-saveable known values they read) as one ``remat`` equation."""
    closed = params["jaxpr"]
    policy = params["policy"] or _nothing_saveable
    jaxpr = closed.jaxpr
    known = {}  # Var -> known value (an outer value)
    for v, c in zip(jaxpr.constvars, closed.consts):
        known[v] = c
    unknown_in = []
    for v, t in zip(jaxpr.invars, tracers):
        is_known, val = trace.known_value(t)
        if is_known:
            known[v] = val
        else:
            unknown_in.append((v, t))
    producer = {}  # Var -> (index, eqn) for values computed by known equations

    with core.new_main(JaxprTrace, JaxprBuilder(partial=True)) as rec_main:
        rec = JaxprTrace(rec_main)
        staged = {}  # Var -> tracer of the inner recorder
        in_tracers = []
        for v, _ in unknown_in:
            staged[v] = rec.new_arg(v.aval)
            in_tracers.append(staged[v])

        def stage_known(v):
            """A tracer for the known var ``v``: saved (a residual) when it is an input or the
            policy allows, else recomputed from what is saved."""
            if v in staged:
                return staged[v]
            todo, seen = [v], set()
            while todo:  # iterative: chains of recomputation can be long
                w = todo.pop()
                if w in seen or w in staged:
                    continue
                seen.add(w)
                if w in producer and not _saveable(policy, producer[w][1]):
                    todo.extend(x for x in producer[w][1].invars if type(x) is not Literal)
            recompute = {}
            for w in seen:
                if w in producer and not _saveable(policy, producer[w][1]):
                    idx, eqn = producer[w]
                    recompute[idx] = eqn
                else:
                    staged[w] = rec.full_raise(known[w])
            for _, eqn in sorted(recompute.items(), key=lambda item: item[0]):
                if all(o in staged for o in eqn.outvars):
                    continue
                ins = [x.val if type(x) is Literal else staged[x] for x in eqn.invars]
                outs = rec.record_eqn(eqn.primitive, [rec.full_raise(x) for x in ins],
                                      eqn.params, [o.aval for o in eqn.outvars])
                staged.update(zip(eqn.outvars, outs))
            return staged[v]

        for idx, eqn in enumerate(jaxpr.eqns):
            reads_unknown = any(type(x) is not Literal and x not in known for x in eqn.invars)
            if not reads_unknown:
                invals = [x.val if type(x) is Literal else known[x] for x in eqn.invars]
                with core.source_info_context(eqn.source_info):
                    outs = eqn.primitive.bind(*invals, **eqn.params)
                outs = outs if eqn.primitive.multiple_results else [outs]
                for o, val in zip(eqn.outvars, outs):
                    known[o] = val
                    producer[o] = (idx, eqn)
                continue
            # A primitive with its own partial-evaluation rule (a nested checkpoint, a scan)
            # must see its known inputs as known, so they are saved rather than recomputed.
            nested = eqn.primitive in core.partial_eval_rules
            invals = []
            for x in eqn.invars:
                if type(x) is Literal:
                    invals.append(x.val)
                elif x in known:
                    invals.append(rec.full_raise(known[x]) if nested else stage_known(x))
                else:
                    invals.append(staged[x])
            with core.source_info_context(eqn.source_info):
                outs = eqn.primitive.bind(*invals, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            for o, val in zip(eqn.outvars, outs):
                if isinstance(val, core.Tracer) and val._trace.main is rec_main:
                    staged[o] = val
                else:  # a nested rule (a scan, a custom rule) computed this output now
                    known[o] = val

        results = []
        unknown_outs = []
        for v in jaxpr.outvars:
            if type(v) is Literal:
                results.append(v.val)
            elif v in known:
                results.append(known[v])
            else:
                results.append(None)
                unknown_outs.append(rec.full_raise(staged[v]))
        inner, residuals = rec_main.payload.build(in_tracers, unknown_outs)
    del producer
    if unknown_outs:
        inner_closed = ClosedJaxpr(core.convert_constvars_jaxpr(inner), [])
        operands = [trace.full_raise(r) for r in residuals] + [t for _, t in unknown_in]
        new_params = dict(params, jaxpr=inner_closed)
        recorded = iter(trace.record_eqn(remat_p, operands, new_params,
                                         [v.aval for v in inner.outvars]))
        results = [next(recorded) if r is None else r for r in results]
    return results


def _saveable(policy, eqn) -> bool:
    return bool(policy(eqn.primitive, *[x.aval for x in eqn.invars], **eqn.params))


core.partial_eval_rules[remat_p] = _remat_partial_eval
