"""User-defined derivative rules: ``custom_jvp``, ``custom_vjp`` and ``custom_gradient``.

``custom_jvp(fun)`` with ``.defjvp(rule)`` (``rule(primals, tangents) -> (primal_out,
tangent_out)``) or ``.defjvps(*per_argument_rules)`` replaces the derivative of ``fun`` in every
mode (forward, reverse through linearize + transpose, and any nesting of them).

``custom_vjp(fun)`` with ``.defvjp(fwd, bwd)`` (``fwd(*args) -> (out, residuals)``,
``bwd(residuals, out_cotangent) -> one cotangent per argument``, ``None`` meaning zero)
replaces the reverse-mode derivative. Beyond JAX, a ``custom_vjp`` function also works under
forward mode (``jvp``, ``jacfwd``, ``hessian``): there the JVP of ``fun`` itself is used.

Both take ``nondiff_argnums``: those arguments are not differentiated; they are passed first
to the rules (``rule(*nondiff_args, primals, tangents)``, ``bwd(*nondiff_args, res, ct)``).

>>> import functrax as ft, functrax.numpy as fnp
>>> @ft.custom_jvp
... def log1pexp(x):
...     return fnp.log(1.0 + fnp.exp(x))
>>> @log1pexp.defjvp
... def _(primals, tangents):
...     (x,), (t,) = primals, tangents
...     return log1pexp(x), t * (1.0 - 1.0 / (1.0 + fnp.exp(x)))
>>> float(ft.grad(log1pexp)(100.0))
1.0

How it works. A call while some transformation is active traces ``fun`` to a closed jaxpr and
binds ``custom_jvp_call`` / ``custom_vjp_call`` with the jaxpr (its closed-over values become
leading operands) and flat wrappers around the rules. With no transformation active ``fun`` is
simply called. ``custom_vjp_call``'s JVP rule looks at the tangents: when any of them is being
recorded into a jaxpr (linearize, or the JVP jaxpr of a ``jit``/``checkpoint`` body), it runs
``fwd`` on the primals and emits ``custom_lin(residuals, primals, tangents)``, a linear
primitive whose transpose calls ``bwd``; otherwise (pure forward mode) it differentiates
``fun``. ``custom_lin`` evaluated forward (its impl) also differentiates ``fun``, so a linearized
program that is run forward rather than transposed stays correct.

Values ``fun`` closes over that are themselves being differentiated (a closure over a tracer)
get ordinary AD: through ``fun`` when no explicit argument is differentiated, through the code
of the JVP rule (or of ``fwd``) otherwise; the custom rule covers the explicit arguments.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from . import core, dtypes
from .core import ClosedJaxpr, Primitive, get_aval
from .interpreters import batching
from .interpreters.jvp import (Zero, add_tangents, instantiate_zeros, is_zero, jvp_flat, jvp_rules,
                               tangent_aval)
from .interpreters.transpose import transpose_rules
from .tree_util import tree_flatten, tree_unflatten, tree_structure

__all__ = ["custom_jvp", "custom_vjp", "custom_gradient"]


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _tracing_active() -> bool:
    """True when some transformation could see values flowing through the call (then the rules
    must be attached to the computation); false on the plain eager path."""
    return len(core._state.stack) > 1 or core._state.dynamic is not None


def _resolve_args(fun, name, args, kwargs):
    """Keyword arguments become positional ones, so that argnums index a flat tuple."""
    if not kwargs:
        return tuple(args)
    try:
        bound = inspect.signature(fun).bind(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: could not match the call's arguments to the signature of the "
                        f"function: {e}") from None
    bound.apply_defaults()
    if bound.kwargs:
        raise TypeError(f"{name}: keyword-only arguments ({', '.join(bound.kwargs)}) are not "
                        f"supported by custom derivative functions; pass them positionally")
    return tuple(bound.args)


def _check_nondiff_argnums(name, nondiff_argnums, nargs):
    for i in nondiff_argnums:
        if not -nargs <= i < nargs:
            raise ValueError(f"{name}: nondiff_argnums {tuple(nondiff_argnums)} is out of range "
                             f"for a call with {nargs} positional argument(s)")
    return tuple(sorted({i % nargs for i in nondiff_argnums}))


def _as_leaf(x, name, what):
    if isinstance(x, core.Tracer) or type(x) in (float, int, bool, complex):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    raise TypeError(f"{name}: every leaf of the {what} must be an array or a number, got "
                    f"{type(x).__name__} ({x!r}); mark non-array arguments with nondiff_argnums")


def _is_float(aval) -> bool:
    return dtypes.is_inexact(aval.dtype)


class _Call:
    """One call of a custom function: its differentiable arguments flattened, the static
    (nondiff) ones kept aside, and ``fun`` traced to a closed jaxpr whose constants (values it
    closes over) become leading invars."""

    def __init__(self, fun, name, nondiff_argnums, args):
        self.name = name
        self.nondiff = _check_nondiff_argnums(name, nondiff_argnums, len(args))
        self.args = args
        diff = tuple(a for i, a in enumerate(args) if i not in self.nondiff)
        leaves, self.in_tree = tree_flatten(diff)
        self.leaves = [_as_leaf(x, name, "arguments") for x in leaves]
        self.in_avals = [get_aval(x) for x in self.leaves]
        box = {}

        def flat_fun(*xs):
            out = fun(*self.full_args(xs))
            out_leaves, box["out_tree"] = tree_flatten(out)
            return [_as_leaf(o, name, "outputs") for o in out_leaves]

        jaxpr, consts, self.out_avals = core.trace_to_jaxpr(flat_fun, self.in_avals)
        self.out_tree = box["out_tree"]
        self.consts = consts
        self.call_jaxpr = ClosedJaxpr(core.convert_constvars_jaxpr(jaxpr), [])

    def full_args(self, diff_leaves):
        """The positional arguments of ``fun`` rebuilt from the flat differentiable leaves."""
        it = iter(tree_unflatten(self.in_tree, list(diff_leaves)))
        return [self.args[i] if i in self.nondiff else next(it) for i in range(len(self.args))]

    def nondiff_args(self):
        return [self.args[i] for i in self.nondiff]

    def diff_tree(self, leaves):
        return tree_unflatten(self.in_tree, list(leaves))


def _check_outputs(name, what, leaves, tree, expected_tree, expected_avals):
    """The primal outputs a rule returns must have ``fun``'s structure, shapes and dtypes."""
    if tree != expected_tree:
        raise TypeError(f"{name}: the {what} has structure {tree} but the function's output "
                        f"has structure {expected_tree}")
    for i, (x, a) in enumerate(zip(leaves, expected_avals)):
        xa = get_aval(_as_leaf(x, name, what))
        if xa.shape != a.shape or (xa.dtype != a.dtype and not xa.weak_type):
            raise TypeError(f"{name}: output {i} of the {what} is {xa.str_short()} but the "
                            f"function's output {i} is {a.str_short()}; they must agree")


def _fit_cotangent_like(name, what, x, aval):
    """A user-supplied value checked against ``aval``: the shape must agree; a weakly typed
    scalar or a float of another precision is cast; any other dtype is an error."""
    from . import lax
    x = _as_leaf(x, name, what)
    xa = get_aval(x)
    if xa.shape != aval.shape:
        raise TypeError(f"{name}: {what} has shape {xa.shape} but shape {aval.shape} "
                        f"({aval.str_short()}) is expected")
    if xa.dtype != aval.dtype:
        if xa.weak_type or (dtypes.is_inexact(xa.dtype) and xa.dtype.kind == aval.dtype.kind):
            return lax.convert_element_type(x, aval.dtype)
        raise TypeError(f"{name}: {what} has dtype {xa.dtype.name} but dtype "
                        f"{aval.dtype.name} is expected")
    return x


def _eval_call(call_jaxpr, *args):
    return core.eval_jaxpr(call_jaxpr.jaxpr, call_jaxpr.consts, *args)


def _nonzero(t) -> bool:
    return not is_zero(t) and get_aval(t).dtype != dtypes.float0


def _force_dim0(outs, dims, size):
    return [batching.matchaxis(o, d, 0, size) for o, d in zip(outs, dims)]


def _move_to_front(vals, dims):
    vals = [v if d is None else batching.moveaxis(v, d, 0) for v, d in zip(vals, dims)]
    return vals, [None if d is None else 0 for d in dims]


def _batch_call_jaxpr(call_jaxpr, size, dims):
    batched, _ = batching.batch_jaxpr(call_jaxpr, size, dims, [0] * len(call_jaxpr.out_avals))
    return batched


# ---------------------------------------------------------------------------------------------
# custom_jvp


class custom_jvp:
    """A function with a user-defined JVP rule, used for every derivative of it.

    ``f = custom_jvp(fun, nondiff_argnums=())``; ``f.defjvp(rule)`` where
    ``rule(*nondiff_args, primals, tangents) -> (primal_out, tangent_out)`` (primals and
    tangents are tuples of the differentiable arguments), or ``f.defjvps(*rules)`` with one
    ``rule(arg_tangent, primal_out, *primals) -> tangent_out contribution`` per argument.
    """

    def __init__(self, fun, nondiff_argnums=()):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.jvp = None

    @property
    def _name(self):
        return f"custom_jvp function {getattr(self.fun, '__name__', repr(self.fun))}"

    def defjvp(self, jvp):
        """Set the JVP rule; returns it, so it can be used as a decorator."""
        self.jvp = jvp
        return jvp

    def defjvps(self, *jvps):
        """Set the JVP rule from one rule per differentiable argument (``None``: that argument
        does not influence the output's derivative); the contributions are summed."""
        if self.nondiff_argnums:
            raise TypeError(f"{self._name}: defjvps does not take nondiff_argnums; use defjvp")

        def jvp(primals, tangents):
            if len(jvps) != len(primals):
                raise TypeError(f"{self._name}: defjvps got {len(jvps)} rules for a call with "
                                f"{len(primals)} argument(s)")
            primal_out = self(*primals)
            out_leaves, out_tree = tree_flatten(primal_out)
            total = [None] * len(out_leaves)
            for rule, t, in zip(jvps, tangents):
                if rule is None:
                    continue
                contrib_leaves, c_tree = tree_flatten(rule(t, primal_out, *primals))
                if c_tree != out_tree:
                    raise TypeError(f"{self._name}: a defjvps rule returned structure {c_tree}, "
                                    f"expected the output's structure {out_tree}")
                total = [c if acc is None else acc + c for acc, c in zip(total, contrib_leaves)]
            from . import lax
            total = [lax.full(get_aval(o).shape, 0, get_aval(o).dtype) if acc is None else acc
                     for acc, o in zip(total, out_leaves)]
            return primal_out, tree_unflatten(out_tree, total)

        self.jvp = jvp
        return jvp

    def __call__(self, *args, **kwargs):
        name = self._name
        args = _resolve_args(self.fun, name, args, kwargs)
        if self.jvp is None:
            raise AttributeError(f"No JVP defined for {name}: call its .defjvp(rule) first")
        if not _tracing_active():
            return self.fun(*args)
        call = _Call(self.fun, name, self.nondiff_argnums, args)
        jvp_fn = _make_custom_jvp_fn(self.jvp, call)
        outs = custom_jvp_call_p.bind(*call.consts, *call.leaves, call_jaxpr=call.call_jaxpr,
                                      jvp_fn=jvp_fn, num_consts=len(call.consts), name=name)
        return tree_unflatten(call.out_tree, outs)


def _make_custom_jvp_fn(rule, call):
    """The flat protocol of the rule: inputs are the argument leaves followed by the tangents
    of the floating-point ones; outputs are the primal outputs followed by the tangents of
    the floating-point ones. Only arrays cross it, so it can be vmapped."""
    name = call.name
    in_float = [_is_float(a) for a in call.in_avals]
    n_in = len(call.in_avals)

    def jvp_fn(*xs):
        primals, float_ts = list(xs[:n_in]), iter(xs[n_in:])
        tangents = [next(float_ts) if f else np.zeros(a.shape, dtypes.float0)
                    for f, a in zip(in_float, call.in_avals)]
        result = rule(*call.nondiff_args(), tuple(call.diff_tree(primals)),
                      tuple(call.diff_tree(tangents)))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise TypeError(f"{name}: the JVP rule must return a pair (primal_out, "
                            f"tangent_out), got {type(result).__name__}")
        p_leaves, p_tree = tree_flatten(result[0])
        _check_outputs(name, "primal output of the JVP rule", p_leaves, p_tree, call.out_tree,
                       call.out_avals)
        p_leaves = [_fit_cotangent_like(name, f"primal output {i} of the JVP rule", p, a)
                    for i, (p, a) in enumerate(zip(p_leaves, call.out_avals))]
        t_leaves, t_tree = tree_flatten(result[1])
        if t_tree != call.out_tree:
            raise TypeError(f"{name}: the JVP rule's tangent output has structure {t_tree} but "
                            f"the function's output has structure {call.out_tree}")
        t_float = [_fit_cotangent_like(name, f"tangent output {i} of the JVP rule", t, a)
                   for i, (t, a) in enumerate(zip(t_leaves, call.out_avals)) if _is_float(a)]
        return list(p_leaves) + t_float

    jvp_fn.__name__ = f"jvp_of_{getattr(rule, '__name__', 'rule')}"
    return jvp_fn


def _custom_jvp_call_impl(*args, call_jaxpr, jvp_fn, num_consts, name):
    return _eval_call(call_jaxpr, *args)


def _custom_call_abstract_eval(*avals, call_jaxpr, **_):
    return list(call_jaxpr.out_avals)


custom_jvp_call_p = Primitive("custom_jvp_call")
custom_jvp_call_p.multiple_results = True
custom_jvp_call_p.def_impl(_custom_jvp_call_impl)
custom_jvp_call_p.def_abstract_eval(_custom_call_abstract_eval)


def _differentiate_fun(prim, primals, tangents, params):
    """The derivative of the primal function itself (forward mode of a custom_vjp function,
    or a call whose explicit arguments are not being differentiated). When an outer
    transformation is watching the primals, the primal output is re-bound so that the custom
    rule stays attached for it."""
    call_jaxpr = params["call_jaxpr"]
    p_out, t_out = jvp_flat(functools.partial(_eval_call, call_jaxpr), list(primals),
                            list(tangents))
    if any(isinstance(p, core.Tracer) for p in primals):
        p_out = prim.bind(*primals, **params)
    return p_out, t_out


def _tracer_level(x):
    return x._trace.main.level if isinstance(x, core.Tracer) else -1


def _split_own_level(outs, inputs):
    """A rule that closes over values this JVP differentiates returns values carrying this
    JVP's own tracers (the rule's code was differentiated along with them). Split each output
    into its value and the tangent it carries (None where it carries none)."""
    from .interpreters.jvp import JVPTracer
    floor = max([_tracer_level(x) for x in inputs], default=-1)
    values, carried = [], []
    for o in outs:
        if isinstance(o, JVPTracer) and o._trace.main.level > floor:
            values.append(o.primal)
            carried.append(o.tangent)
        else:
            values.append(o)
            carried.append(None)
    return values, carried


def _custom_jvp_call_jvp(primals, tangents, *, call_jaxpr, jvp_fn, num_consts, name):
    params = dict(call_jaxpr=call_jaxpr, jvp_fn=jvp_fn, num_consts=num_consts, name=name)
    if not any(_nonzero(t) for t in tangents[num_consts:]):
        # Only values fun closes over are differentiated: the rule (for the explicit
        # arguments) does not apply. This also ends a rule's call of its own function.
        return _differentiate_fun(custom_jvp_call_p, primals, tangents, params)
    in_avals = call_jaxpr.in_avals[num_consts:]
    out_avals = call_jaxpr.out_avals
    arg_ts = [instantiate_zeros(t) for t, a in zip(tangents[num_consts:], in_avals)
              if _is_float(a)]
    outs = jvp_fn(*primals[num_consts:], *arg_ts)
    n_out = len(out_avals)
    p_out, p_carried = _split_own_level(outs[:n_out], list(primals) + list(tangents))
    float_ts, _ = _split_own_level(outs[n_out:], list(primals) + list(tangents))
    float_ts = iter(float_ts)
    t_out = [next(float_ts) if _is_float(a) else Zero(tangent_aval(a)) for a in out_avals]
    t_out = [t if c is None or not _is_float(a) else add_tangents(t, c)
             for t, c, a in zip(t_out, p_carried, out_avals)]
    return p_out, t_out


jvp_rules[custom_jvp_call_p] = _custom_jvp_call_jvp


def _custom_jvp_call_batch(vals, dims, *, call_jaxpr, jvp_fn, num_consts, name):
    size = batching.batch_size_of(vals, dims)
    vals, dims = _move_to_front(vals, dims)
    arg_dims = dims[num_consts:]
    in_avals = call_jaxpr.in_avals[num_consts:]
    # The rule's tangents are batched exactly like their primals.
    rule_dims = list(arg_dims) + [d for d, a in zip(arg_dims, in_avals) if _is_float(a)]

    def batched_jvp_fn(*xs):
        outs, out_dims = batching.batch_flat(jvp_fn, size, None, list(xs), rule_dims)
        return _force_dim0(outs, out_dims, size)

    outs = custom_jvp_call_p.bind(*vals, call_jaxpr=_batch_call_jaxpr(call_jaxpr, size, dims),
                                  jvp_fn=batched_jvp_fn, num_consts=num_consts, name=name)
    return outs, [0] * len(outs)


batching.batching_rules[custom_jvp_call_p] = _custom_jvp_call_batch


# ---------------------------------------------------------------------------------------------
# custom_vjp


class custom_vjp:
    """A function with a user-defined reverse-mode rule.

    ``f = custom_vjp(fun, nondiff_argnums=())``; ``f.defvjp(fwd, bwd)`` where ``fwd`` takes the
    arguments of ``fun`` and returns ``(output, residuals)`` (residuals: any pytree of arrays)
    and ``bwd(*nondiff_args, residuals, output_cotangent)`` returns a tuple with one cotangent
    per differentiable argument (``None`` for a zero cotangent, of the whole argument or of a
    leaf). Forward mode differentiates ``fun`` itself.
    """

    def __init__(self, fun, nondiff_argnums=()):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.fwd = None
        self.bwd = None

    @property
    def _name(self):
        return f"custom_vjp function {getattr(self.fun, '__name__', repr(self.fun))}"

    def defvjp(self, fwd, bwd):
        if not callable(fwd) or not callable(bwd):
            raise TypeError(f"{self._name}: defvjp takes two functions (fwd, bwd), got "
                            f"{type(fwd).__name__} and {type(bwd).__name__}")
        self.fwd = fwd
        self.bwd = bwd

    def __call__(self, *args, **kwargs):
        name = self._name
        args = _resolve_args(self.fun, name, args, kwargs)
        if self.fwd is None:
            raise AttributeError(f"No VJP defined for {name}: call its .defvjp(fwd, bwd) first")
        if not _tracing_active():
            return self.fun(*args)
        call = _Call(self.fun, name, self.nondiff_argnums, args)
        fwd_fn, bwd_fn = _make_custom_vjp_fns(self.fwd, self.bwd, call)
        outs = custom_vjp_call_p.bind(*call.consts, *call.leaves, call_jaxpr=call.call_jaxpr,
                                      fwd_fn=fwd_fn, bwd_fn=bwd_fn,
                                      num_consts=len(call.consts), name=name)
        return tree_unflatten(call.out_tree, outs)


def _make_custom_vjp_fns(fwd, bwd, call):
    """Flat protocols. ``fwd_fn(*arg_leaves) -> out_leaves + residual_leaves``;
    ``bwd_fn(*residual_leaves, *float_out_cts) -> cotangents of the floating-point argument
    leaves`` (zeros instantiated). The residual structure is learned when fwd_fn runs."""
    name = call.name
    box = {}
    float_out = [_is_float(a) for a in call.out_avals]
    float_in = [_is_float(a) for a in call.in_avals]

    def fwd_fn(*arg_leaves):
        result = fwd(*call.full_args(arg_leaves))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise TypeError(f"{name}: fwd must return a pair (output, residuals), got "
                            f"{type(result).__name__}")
        out_leaves, out_tree = tree_flatten(result[0])
        _check_outputs(name, "output of fwd", out_leaves, out_tree, call.out_tree, call.out_avals)
        out_leaves = [_fit_cotangent_like(name, f"output {i} of fwd", o, a)
                      for i, (o, a) in enumerate(zip(out_leaves, call.out_avals))]
        res_leaves, box["res_tree"] = tree_flatten(result[1])
        box["num_res"] = len(res_leaves)
        res_leaves = [_as_leaf(r, name, "residuals returned by fwd") for r in res_leaves]
        return list(out_leaves) + res_leaves

    def bwd_fn(*xs):
        n_res = box["num_res"]
        res = tree_unflatten(box["res_tree"], list(xs[:n_res]))
        cts_it = iter(xs[n_res:])
        ct_leaves = [next(cts_it) if f else np.zeros(a.shape, dtypes.float0)
                     for f, a in zip(float_out, call.out_avals)]
        cts = bwd(*call.nondiff_args(), res, tree_unflatten(call.out_tree, ct_leaves))
        return _flatten_bwd_output(name, cts, call, float_in)

    fwd_fn.__name__ = f"fwd_{getattr(fwd, '__name__', 'fwd')}"
    bwd_fn.__name__ = f"bwd_{getattr(bwd, '__name__', 'bwd')}"
    return fwd_fn, bwd_fn


def _flatten_bwd_output(name, cts, call, float_in):
    from . import lax
    diff_args = call.diff_tree(call.leaves)
    if isinstance(cts, list):
        cts = tuple(cts)
    if not isinstance(cts, tuple) or len(cts) != len(diff_args):
        got = f"a tuple of length {len(cts)}" if isinstance(cts, tuple) else type(cts).__name__
        raise TypeError(f"{name}: bwd must return a tuple with one cotangent per "
                        f"differentiable argument ({len(diff_args)}), got {got}")
    leaves = []
    for i, (arg, ct) in enumerate(zip(diff_args, cts)):
        n = len(tree_flatten(arg)[0])
        if ct is None:
            leaves.extend([None] * n)
            continue
        try:
            parts = tree_structure(arg).flatten_up_to(ct)
        except ValueError as e:
            raise TypeError(f"{name}: the cotangent bwd returned for argument {i} does not match "
                            f"the argument's structure: {e}") from None
        leaves.extend(parts)
    out = []
    for j, (ct, aval, f) in enumerate(zip(leaves, call.in_avals, float_in)):
        if not f:
            continue
        if ct is None:
            out.append(lax.full(aval.shape, 0, aval.dtype))
        else:
            out.append(_fit_cotangent_like(name, f"the cotangent bwd returned for input leaf {j}",
                                           ct, aval))
    return out


def _custom_vjp_call_impl(*args, call_jaxpr, fwd_fn, bwd_fn, num_consts, name):
    return _eval_call(call_jaxpr, *args)


custom_vjp_call_p = Primitive("custom_vjp_call")
custom_vjp_call_p.multiple_results = True
custom_vjp_call_p.def_impl(_custom_vjp_call_impl)
custom_vjp_call_p.def_abstract_eval(_custom_call_abstract_eval)


def _recorded(t) -> bool:
    """A tangent being recorded into a jaxpr: it may be transposed later (reverse mode)."""
    return isinstance(t, core.JaxprTracer)


def _custom_vjp_call_jvp(primals, tangents, *, call_jaxpr, fwd_fn, bwd_fn, num_consts, name):
    params = dict(call_jaxpr=call_jaxpr, fwd_fn=fwd_fn, bwd_fn=bwd_fn, num_consts=num_consts,
                  name=name)
    arg_nz = [_nonzero(t) for t in tangents[num_consts:]]
    if not any(_recorded(t) for t, n in zip(tangents[num_consts:], arg_nz) if n):
        # Pure forward mode (beyond JAX), or only closed-over values differentiated.
        return _differentiate_fun(custom_vjp_call_p, primals, tangents, params)
    n_out = len(call_jaxpr.out_avals)
    everything = list(primals) + list(tangents)
    outs, carried = _split_own_level(fwd_fn(*primals[num_consts:]), everything)
    p_out, res = outs[:n_out], outs[n_out:]
    if any(c is not None for c in carried[n_out:]):
        raise TypeError(f"{name}: fwd returned residuals that depend on a value the function "
                        f"closes over and that is being differentiated; pass that value as an "
                        f"argument instead")
    nz = (False,) * num_consts + tuple(arg_nz)
    lin_out = custom_lin_p.bind(*res, *primals, *[t for t, n in zip(tangents, nz) if n],
                                call_jaxpr=call_jaxpr, bwd_fn=bwd_fn, num_res=len(res),
                                num_consts=num_consts, tangent_nz=nz, name=name)
    lin_it = iter(lin_out)
    t_out = [next(lin_it) if _is_float(a) else Zero(tangent_aval(a))
             for a in call_jaxpr.out_avals]
    t_out = [t if c is None or not _is_float(a) else add_tangents(t, c)
             for t, c, a in zip(t_out, carried[:n_out], call_jaxpr.out_avals)]
    return p_out, t_out


jvp_rules[custom_vjp_call_p] = _custom_vjp_call_jvp


def _custom_vjp_call_batch(vals, dims, *, call_jaxpr, fwd_fn, bwd_fn, num_consts, name):
    from . import lax
    size = batching.batch_size_of(vals, dims)
    vals, dims = _move_to_front(vals, dims)
    arg_dims = dims[num_consts:]
    in_avals = call_jaxpr.in_avals[num_consts:]

    def batched_fwd(*xs):
        outs, out_dims = batching.batch_flat(fwd_fn, size, None, list(xs), list(arg_dims))
        return _force_dim0(outs, out_dims, size)

    def batched_bwd(*xs):
        # Residuals and output cotangents are all batched at 0 (batched_fwd and the batched
        # primitive force it); cotangents of unbatched arguments are summed over the batch.
        outs, out_dims = batching.batch_flat(bwd_fn, size, None, list(xs), [0] * len(xs))
        outs = _force_dim0(outs, out_dims, size)
        float_dims = [d for d, a in zip(arg_dims, in_avals) if _is_float(a)]
        return [o if d is not None else lax.reduce_sum(o, axes=(0,))
                for o, d in zip(outs, float_dims)]

    outs = custom_vjp_call_p.bind(*vals, call_jaxpr=_batch_call_jaxpr(call_jaxpr, size, dims),
                                  fwd_fn=batched_fwd, bwd_fn=batched_bwd,
                                  num_consts=num_consts, name=name)
    return outs, [0] * len(outs)


batching.batching_rules[custom_vjp_call_p] = _custom_vjp_call_batch


# --- custom_lin: the linear stand-in for a custom_vjp function's derivative -------------------


def _split_lin_operands(ops, call_jaxpr, num_res, tangent_nz):
    n_in = len(call_jaxpr.in_avals)
    res = list(ops[:num_res])
    primals = list(ops[num_res:num_res + n_in])
    nz_ts = iter(ops[num_res + n_in:])
    tangents = [next(nz_ts) if nz else Zero(tangent_aval(a))
                for nz, a in zip(tangent_nz, call_jaxpr.in_avals)]
    return res, primals, tangents


def _custom_lin_forward(*ops, call_jaxpr, bwd_fn, num_res, num_consts, tangent_nz, name):
    """custom_lin run forward: the JVP of the primal function at the stored primals."""
    _, primals, tangents = _split_lin_operands(ops, call_jaxpr, num_res, tangent_nz)
    _, t_out = jvp_flat(functools.partial(_eval_call, call_jaxpr), primals, tangents)
    return [instantiate_zeros(t) for t, a in zip(t_out, call_jaxpr.out_avals) if _is_float(a)]


def _custom_lin_abstract_eval(*avals, call_jaxpr, **_):
    return [tangent_aval(a) for a in call_jaxpr.out_avals if _is_float(a)]


custom_lin_p = Primitive("custom_lin")
custom_lin_p.multiple_results = True
custom_lin_p.def_impl(_custom_lin_forward)
custom_lin_p.def_abstract_eval(_custom_lin_abstract_eval)


def _custom_lin_jvp(primals, tangents, **params):
    return jvp_flat(functools.partial(_custom_lin_forward, **params), list(primals),
                    list(tangents))


jvp_rules[custom_lin_p] = _custom_lin_jvp


def _custom_lin_batch(vals, dims, **params):
    size = batching.batch_size_of(vals, dims)
    return batching.batch_flat(functools.partial(_custom_lin_forward, **params), size, None,
                               list(vals), list(dims))


batching.batching_rules[custom_lin_p] = _custom_lin_batch


def _custom_lin_transpose(cts, *ops, call_jaxpr, bwd_fn, num_res, num_consts, tangent_nz, name):
    res, primals, _ = _split_lin_operands(ops, call_jaxpr, num_res, tangent_nz)
    out_avals = call_jaxpr.out_avals
    float_out_avals = [a for a in out_avals if _is_float(a)]
    cts = [instantiate_zeros(c) if is_zero(c) else c for c in cts]
    if len(cts) != len(float_out_avals):  # defensive: one cotangent per float output
        raise TypeError(f"{name}: {len(cts)} cotangents for {len(float_out_avals)} outputs")
    in_avals = call_jaxpr.in_avals
    ct_in = [None] * len(in_avals)
    if any(tangent_nz[num_consts:]):
        try:
            arg_cts = iter(bwd_fn(*res, *cts))
        except (TypeError, ValueError) as e:
            # Transposition does not go through bind: point at the user's call ourselves.
            raise core._locate(e) from None
        for i in range(num_consts, len(in_avals)):
            if _is_float(in_avals[i]):
                ct = next(arg_cts)
                ct_in[i] = ct if tangent_nz[i] else None
    return [None] * (num_res + len(in_avals)) + [ct_in[i] for i, nz in enumerate(tangent_nz)
                                                  if nz]


transpose_rules[custom_lin_p] = _custom_lin_transpose


# ---------------------------------------------------------------------------------------------
# custom_gradient


def custom_gradient(fun):
    """``fun(*args) -> (output, vjp_fn)`` where ``vjp_fn(output_cotangent)`` returns a tuple of
    cotangents, one per argument (``None`` for zero): the function is differentiated with it.

    vjp_fn is traced to a jaxpr during the forward pass; the values it closes over are that
    jaxpr's constants and become the residuals.

    >>> import functrax as ft, functrax.numpy as fnp
    >>> @ft.custom_gradient
    ... def f(x):
    ...     return fnp.sin(x), lambda g: (g * 3.0,)
    >>> float(ft.grad(f)(0.0))
    3.0
    """
    def primal(*args):
        return fun(*args)[0]

    primal.__name__ = getattr(fun, "__name__", "custom_gradient_function")

    @functools.wraps(fun)
    def wrapped(*args):
        # A fresh custom_vjp per call: the traced vjp_fn belongs to this call only.
        state = {}

        def fwd(*a):
            out, vjp_fn = fun(*a)
            out_leaves, out_tree = tree_flatten(out)

            def flat_vjp(*ct_leaves):
                cts = vjp_fn(tree_unflatten(out_tree, list(ct_leaves)))
                if not isinstance(cts, (tuple, list)):
                    cts = (cts,)
                leaves, state["ct_tree"] = tree_flatten(tuple(cts), is_leaf=lambda x: x is None)
                state["present"] = [c is not None for c in leaves]
                return [c for c in leaves if c is not None]

            ct_avals = [tangent_aval(get_aval(o)) for o in out_leaves]
            jaxpr, consts, _ = core.trace_to_jaxpr(flat_vjp, ct_avals)
            state["jaxpr"] = jaxpr
            return out, list(consts)

        def bwd(res, ct):
            outs = iter(core.eval_jaxpr(state["jaxpr"], list(res), *tree_flatten(ct)[0]))
            leaves = [next(outs) if p else None for p in state["present"]]
            return tuple(tree_unflatten(state["ct_tree"], leaves))

        f = custom_vjp(primal)
        f.defvjp(fwd, bwd)
        return f(*args)

    return wrapped
