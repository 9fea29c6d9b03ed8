"""Structured control flow: ``cond``, ``switch``, ``while_loop``, ``fori_loop``, ``scan``, ``map``.

Python ``if``/``for``/``while`` work eagerly and under ``grad`` (the trace is rebuilt on every
call); these primitives are for code that must keep a branch or a loop *inside* the IR: under
``jit``, ``vmap`` or ``make_jaxpr``. Bodies are traced once to closed jaxprs over the flattened
pytrees of carries and slices, and carried as primitive parameters, so every interpreter (jvp,
partial evaluation, transpose, batching, the jit back ends) sees inside them.

>>> from functrax import lax
>>> lax.scan(lambda c, x: (c + x, c * x), 0.0, lax.iota('float64', 4))[0]
Array(6.)
>>> lax.fori_loop(0, 5, lambda i, x: x + i, 0)
Array(10)
>>> lax.cond(True, lambda x: x + 1.0, lambda x: x - 1.0, 2.0)
Array(3.)

The primitives and their parameters (the contract with the jit back ends)
-------------------------------------------------------------------------
Every jaxpr held in a parameter is a ``ClosedJaxpr`` whose ``consts`` are concrete arrays;
values the user's body closed over that were traced (outer ``jit``/``grad``/``vmap`` tracers)
are hoisted into explicit leading operands.

``scan_p``: operands ``consts, init, xs`` (``num_consts`` + ``num_carry`` + the rest).
  ``jaxpr``: ``[consts, carry, x slices] -> [carry, y slices]``; ``length`` (static int);
  ``reverse`` (bool: iterate from the last slice down, ys written at the same index);
  ``linear`` (tuple of bools, one per operand: True for operands the body is linear in, an
  informational hint set by the AD rules); ``unroll`` (int: a hint for compiled back ends, the
  reference implementation ignores it). Outputs ``final carry, stacked ys`` (leading dim
  ``length``).
``cond_p``: operands ``index, *ops``; ``branches`` (tuple of ClosedJaxprs, all
  ``ops -> outs`` with identical types). ``index`` is an int32 scalar, already clamped by
  ``switch``/``cond``. Outputs ``branches[index](*ops)``.
``while_p``: operands ``cond_consts, body_consts, init``; ``cond_jaxpr``
  (``[cond_consts, carry] -> [bool scalar]``), ``body_jaxpr`` (``[body_consts, carry] ->
  carry``), ``cond_nconsts``, ``body_nconsts``, ``max_steps`` (None, or an int bounding the
  number of iterations: the loop stops when the predicate is false or after ``max_steps``
  iterations).

Design choices
--------------
* Eagerly, ``cond``/``switch`` with a concrete predicate run the chosen branch as plain Python
  (as an ``if`` would); the other branch is not traced, so its output type is not checked.
  Under ``jit``/``make_jaxpr`` and with a traced predicate both are traced and checked.
* Reverse mode through ``scan`` splits the JVP'd body into a known scan (primal carries, which
  also emits the residuals each step needs, stacked as extra ys) and an unknown, linear scan
  that reads them as xs. Residuals that are loop invariant (the body's constants, including
  closed-over weights) are passed once as constants, and residuals that are slices of ``xs``
  are read from ``xs`` itself, so only per-step values are stored.
* ``cond`` under reverse mode: the known ``cond`` outputs the union of the branches'
  residuals (each branch fills the others' with zeros, as JAX does) and the index is kept as
  a residual for the linear ``cond``.
* Beyond JAX: ``while_loop(..., max_steps=n)`` supports reverse mode. Its partial evaluation
  rewrites the loop as a ``scan`` of ``n`` steps whose body is ``cond(pred, body, identity)``:
  finished steps leave the carry unchanged and cost almost nothing to run. The body is
  checkpointed, so reverse mode stores one carry per step (not the body's intermediates) and
  recomputes the body on the way back: memory is proportional to ``max_steps`` times the
  carry (choose ``max_steps`` close to the expected trip count). Without ``max_steps`` a ``while_loop`` is
  forward-mode only (``jvp``, ``linearize``), as in JAX, and ``grad`` raises an error that
  says to pass ``max_steps``.
* ``fori_loop`` with concrete bounds is a ``scan`` (so ``grad`` works); with traced bounds it
  is a ``while_loop``.
* A batched ``cond`` predicate evaluates every branch and selects (``select_n``); a batched
  ``while_loop`` predicate keeps the loop running while any member is active and freezes the
  finished members with ``select_n``.
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes
from ..core import ClosedJaxpr, Jaxpr, Primitive, ShapedArray, Tracer, Var, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero, jvp_jaxpr, tangent_aval
from ..interpreters.partial_eval import dce_closed_jaxpr, partial_eval_jaxpr
from ..interpreters.transpose import is_undefined_primal, transpose_jaxpr, transpose_rules
from ..tree_util import keystr, tree_flatten, tree_flatten_with_path, tree_map, tree_unflatten
from ._util import array_namespace

__all__ = ["cond", "switch", "while_loop", "fori_loop", "scan", "map",
           "cond_p", "while_p", "scan_p"]

_int32 = np.dtype(np.int32)

# ---------------------------------------------------------------------------------------------
# Helpers: tracing bodies, reshaping jaxprs


def _split(seq, sizes):
    seq = list(seq)
    out, start = [], 0
    for s in sizes:
        out.append(seq[start:start + s])
        start += s
    out.append(seq[start:])
    return out


def _avals_str(avals):
    """A group of avals as the abstract-eval messages print it: (f32[3], i32[])."""
    return f"({', '.join(a.str_short() for a in avals)})"


def _check_same_types(avals, expected, message):
    """Raise TypeError(message(i, got, want)) at the first operand whose aval differs from
    what the jaxpr expects."""
    for i, (a, e) in enumerate(zip(avals, expected)):
        if not a.same_type(e):
            raise TypeError(message(i, a.str_short(), e.str_short()))


def _or(a, b):
    return [x or y for x, y in zip(a, b)]


def _trace_flat(flat_fun, in_avals):
    """Trace a flat function to a ClosedJaxpr whose consts are concrete.

    Closed-over tracers of enclosing transformations cannot live in a parameter (the
    enclosing interpreters must see them), so they are hoisted into leading invars; the
    caller passes them as operands. Returns (closed, hoisted_values, out_avals)."""
    jaxpr, consts, out_avals = core.trace_to_jaxpr(flat_fun, in_avals)
    traced = [isinstance(c, Tracer) for c in consts]
    if not any(traced):
        return ClosedJaxpr(jaxpr, consts), [], out_avals
    hoisted_vars = [v for v, t in zip(jaxpr.constvars, traced) if t]
    kept_vars = [v for v, t in zip(jaxpr.constvars, traced) if not t]
    new = Jaxpr(kept_vars, hoisted_vars + jaxpr.invars, jaxpr.outvars, jaxpr.eqns)
    return (ClosedJaxpr(new, [c for c, t in zip(consts, traced) if not t]),
            [c for c, t in zip(consts, traced) if t], out_avals)


def _trace_rule(flat_fun, in_avals):
    """Trace a helper body inside a rule: it only closes over jaxprs and concrete values."""
    closed, hoisted, _ = _trace_flat(flat_fun, in_avals)
    assert not hoisted, "control-flow rule body closed over a traced value"
    return closed


def _trace_user_fun(fun, in_tree, in_avals):
    """Trace a user function of pytrees. Returns (closed, hoisted, out_tree, out_avals,
    out_paths) where out_paths names each output leaf (for error messages)."""
    box = []

    def flat(*leaves):
        out = fun(*tree_unflatten(in_tree, leaves))
        with_path, out_tree = tree_flatten_with_path(out)
        box.append((out_tree, [keystr(p) for p, _ in with_path]))
        return [leaf for _, leaf in with_path]

    closed, hoisted, out_avals = _trace_flat(flat, in_avals)
    return closed, hoisted, box[0][0], out_avals, box[0][1]


def _permute(closed, in_order, out_order=None):
    """The same jaxpr with its invars (and outvars) reordered by index lists."""
    j = closed.jaxpr
    invars = [j.invars[i] for i in in_order]
    outvars = j.outvars if out_order is None else [j.outvars[i] for i in out_order]
    return ClosedJaxpr(Jaxpr(j.constvars, invars, outvars, j.eqns), closed.consts)


def _add_unused_invars(closed, avals, position):
    """Insert invars of the given avals (which the jaxpr ignores) at ``position``."""
    j = closed.jaxpr
    new = [Var(a) for a in avals]
    invars = j.invars[:position] + new + j.invars[position:]
    return ClosedJaxpr(Jaxpr(j.constvars, invars, j.outvars, j.eqns), closed.consts)


def _drop_invars(closed, keep):
    """Drop the invars not marked in ``keep``; they must be unused (DCE first)."""
    j = closed.jaxpr
    return ClosedJaxpr(Jaxpr(j.constvars, [v for v, k in zip(j.invars, keep) if k],
                             j.outvars, j.eqns), closed.consts)


def _check_operand(x, fname, what):
    if isinstance(x, Tracer) or core.is_array_like(x):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{fname}: every leaf of {what} must be an array or a number, got "
                    f"{type(x).__name__} {x!r}")


def _locate(err):
    return core._locate(err)


def _zeros(aval):
    from .structural import full
    return full(aval.shape, 0, aval.dtype)


def _type_str(aval):
    return aval.str_short() + (" (weak)" if aval.weak_type else "")


def _carry_mismatch(fname, paths, in_avals, out_avals, prefix="carry"):
    """Leaves whose type changes across an iteration. A weakly typed initial value (a Python
    number) adopts the body's dtype, as in JAX; returns (promote_dtypes, error or None)."""
    promote = [None] * len(in_avals)
    for i, (p, a, b) in enumerate(zip(paths, in_avals, out_avals)):
        if a.shape == b.shape and a.dtype == b.dtype:
            continue
        if a.shape == b.shape and a.weak_type and \
                dtypes.promote_avals_dtype([a, b.strip_weak_type()])[0] == b.dtype:
            promote[i] = b.dtype
            continue
        return promote, _locate(TypeError(
            f"{fname}: the body changes the type of {prefix}{p}: it enters as "
            f"{_type_str(a)} and the body returns {_type_str(b)}. A loop carry must keep its "
            f"shape and dtype across iterations (cast it with .astype, or start from a value "
            f"of the type the body returns)."))
    return promote, None


def _promote_leaves(leaves, promote):
    from .structural import convert_element_type
    return [x if d is None else convert_element_type(x, d) for x, d in zip(leaves, promote)]


def _pe_rule(rule):
    # core calls partial-evaluation rules as rule(trace, tracers, params_dict).
    return lambda trace, tracers, params: rule(trace, tracers, **params)


def _fit_dtypes(vals, avals):
    # Eager numpy arithmetic forgets weak types once a Python number has become a numpy
    # scalar (f32 + np.int64 -> f64), so loop impls cast each step's results back to the
    # types the jaxpr declares; otherwise a carry's dtype could drift between iterations.
    out = []
    for v, a in zip(vals, avals):
        dt = getattr(v, "dtype", None)
        if dt is not None and dt != a.dtype:
            v = array_namespace(v).asarray(v).astype(a.dtype)
        out.append(v)
    return out


def _eager_result(tree):
    # The Python branch of an eager cond returns arrays, like the primitive would.
    return tree_map(lambda x: x if isinstance(x, Tracer) else core.wrap_array(x), tree)


def _is_concrete_eager(x):
    return not isinstance(x, Tracer) and core._state.dynamic is None


# ---------------------------------------------------------------------------------------------
# scan


def _scan_impl(*args, jaxpr, length, reverse, num_consts, num_carry, linear, unroll):
    consts, carry, xs = _split(args, [num_consts, num_carry])
    xp = array_namespace(*args)
    xs = [xp.asarray(x) for x in xs]
    y_avals = jaxpr.out_avals[num_carry:]
    ys = [xp.empty((length,) + a.shape, a.dtype) for a in y_avals]
    steps = range(length - 1, -1, -1) if reverse else range(length)
    j, jc = jaxpr.jaxpr, jaxpr.consts
    carry_avals = jaxpr.in_avals[num_consts:num_consts + num_carry]
    for i in steps:
        outs = core.eval_jaxpr(j, jc, *consts, *carry, *[x[i] for x in xs])
        carry = _fit_dtypes(outs[:num_carry], carry_avals)
        for buf, y in zip(ys, outs[num_carry:]):
            buf[i] = xp.asarray(y)
    return list(carry) + ys


def _scan_abstract_eval(*avals, jaxpr, length, reverse, num_consts, num_carry, linear, unroll):
    j_in, j_out = jaxpr.in_avals, jaxpr.out_avals
    if len(avals) != len(j_in):
        raise TypeError(f"scan: {len(avals)} operands for a body with {len(j_in)} inputs")
    if len(linear) != len(avals):
        raise TypeError(f"scan: linear has {len(linear)} entries for {len(avals)} operands")
    if not isinstance(length, int) or length < 0:
        raise TypeError(f"scan: length must be a non-negative int, got {length!r}")
    if len(j_out) < num_carry:
        raise TypeError(f"scan: the body returns {len(j_out)} values, fewer than the "
                        f"{num_carry} carries")
    consts, init, xs = _split(avals, [num_consts, num_carry])
    bc, bcarry, bx = _split(j_in, [num_consts, num_carry])
    _check_same_types(consts, bc, lambda i, got, want: (
        f"scan: constant operand {i} is {got} but the body expects {want}"))
    for i, (a, b, o) in enumerate(zip(init, bcarry, j_out[:num_carry])):
        if not a.same_type(b):
            raise TypeError(f"scan: carry {i} is {a.str_short()} but the body expects "
                            f"{b.str_short()}")
        if not o.same_type(b):
            raise TypeError(f"scan: the body returns carry {i} as {o.str_short()} but it "
                            f"enters as {b.str_short()}")
    for i, (a, b) in enumerate(zip(xs, bx)):
        if a.shape[:1] != (length,) or a.shape[1:] != b.shape or a.dtype != b.dtype:
            raise TypeError(f"scan: xs operand {i} is {a.str_short()} but the body expects "
                            f"slices {b.str_short()} over length {length}")
    return list(bcarry) + [ShapedArray((length,) + a.shape, a.dtype, a.weak_type)
                           for a in j_out[num_carry:]]


scan_p = Primitive("scan")
scan_p.multiple_results = True
scan_p.def_impl(_scan_impl)
scan_p.def_abstract_eval(_scan_abstract_eval)


def scan(f, init, xs=None, length=None, reverse=False, unroll=1):
    """Loop ``f(carry, x) -> (carry, y)`` over the leading axis of ``xs``; returns
    ``(final carry, stacked ys)``. ``carry``, ``x`` and ``y`` are pytrees; the carry must keep
    its shape and dtype. ``reverse`` scans from the end; ``unroll`` is a hint for compiled
    back ends (the reference implementation ignores it).

    >>> from functrax import lax
    >>> lax.scan(lambda c, x: (c + x, c), 0, lax.iota('int64', 4))[1].tolist()
    [0, 0, 1, 3]
    """
    init_with_path, init_tree = tree_flatten_with_path(init)
    paths = [keystr(p) for p, _ in init_with_path]
    init_leaves = [_check_operand(x, "scan", "init") for _, x in init_with_path]
    xs_with_path, xs_tree = tree_flatten_with_path(xs)
    xs_leaves = [_check_operand(x, "scan", "xs") for _, x in xs_with_path]
    lengths = {}
    for (p, _), x in zip(xs_with_path, xs_leaves):
        a = get_aval(x)
        if a.ndim == 0:
            raise _locate(ValueError(f"scan: xs{keystr(p)} is a scalar; every leaf of xs "
                                     f"needs a leading axis to scan over"))
        lengths[keystr(p)] = a.shape[0]
    if length is not None:
        length = int(core.concrete_or_error(length, "scan: length must be static"))
    sizes = set(lengths.values())
    if len(sizes) > 1 or (length is not None and sizes and sizes != {length}):
        detail = ", ".join(f"xs{p}: {n}" for p, n in lengths.items())
        given = f" and length={length}" if length is not None else ""
        raise _locate(ValueError(f"scan: the leading axes of xs must all equal the scan "
                                 f"length; got {detail}{given}"))
    if length is None:
        if not sizes:
            raise _locate(ValueError("scan: xs is empty (None); pass length= to scan over "
                                     "nothing"))
        length = sizes.pop()
    x_avals = [get_aval(x) for x in xs_leaves]
    x_avals = [ShapedArray(a.shape[1:], a.dtype, a.weak_type) for a in x_avals]
    nc = len(init_leaves)

    def body(carry, x):
        out = f(carry, x)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise _locate(TypeError(f"scan: the body must return a pair (new_carry, y), got "
                                    f"{type(out).__name__}"))
        return tuple(out)

    _, args_tree = tree_flatten((init, xs))
    for attempt in range(2):
        carry_avals = [get_aval(x) for x in init_leaves]
        closed, hoisted, out_tree, out_avals, out_paths = _trace_user_fun(
            body, args_tree, carry_avals + x_avals)
        new_tree_c, y_tree = _split_pair_tree(out_tree)
        if new_tree_c != init_tree:
            raise _locate(TypeError(
                f"scan: the body must return a carry with the same structure as init:\n"
                f"  init  {init_tree}\n  body  {new_tree_c}"))
        promote, err = _carry_mismatch("scan", paths, carry_avals, out_avals[:nc])
        if err is not None:
            raise err
        if all(p is None for p in promote) or attempt:
            break
        init_leaves = _promote_leaves(init_leaves, promote)
    if unroll is True:
        unroll = max(length, 1)
    outs = scan_p.bind(*hoisted, *init_leaves, *xs_leaves, jaxpr=closed, length=length,
                       reverse=bool(reverse), num_consts=len(hoisted), num_carry=nc,
                       linear=(False,) * (len(hoisted) + nc + len(xs_leaves)),
                       unroll=int(unroll) if unroll else 1)
    return tree_unflatten(init_tree, outs[:nc]), tree_unflatten(y_tree, outs[nc:])


def _split_pair_tree(tree):
    """The treedefs of the two halves of a (carry, y) pair's treedef."""
    from ..tree_util import treedef_children
    children = treedef_children(tree)
    return children[0], children[1]


def _scan_params(jaxpr, length, reverse, num_consts, num_carry, linear, unroll):
    return dict(jaxpr=jaxpr, length=length, reverse=reverse, num_consts=num_consts,
                num_carry=num_carry, linear=tuple(linear), unroll=unroll)


def _scan_jvp(primals, tangents, *, jaxpr, length, reverse, num_consts, num_carry, linear,
              unroll):
    nc, nk = num_consts, num_carry
    ny = len(jaxpr.out_avals) - nk
    nz = [not ad.is_zero(t) for t in tangents]
    const_nz, init_nz, xs_nz = _split(nz, [nc, nk])
    carry_nz = list(init_nz)
    # Which carries have nonzero tangents is a fixed point: a carry whose tangent starts at
    # zero may pick one up from the body.
    for _ in range(nk + 1):
        jj, out_nz = jvp_jaxpr(jaxpr, const_nz + carry_nz + xs_nz,
                               instantiate=carry_nz + [False] * ny)
        new = _or(carry_nz, out_nz[:nk])
        if new == carry_nz:
            break
        carry_nz = new
    n = len(primals)
    nct, nkt, nxt = sum(const_nz), sum(carry_nz), sum(xs_nz)
    ys_nz = out_nz[nk:]
    nyt = sum(ys_nz)
    t0 = n
    in_order = (list(range(nc)) + list(range(t0, t0 + nct))
                + list(range(nc, nc + nk)) + list(range(t0 + nct, t0 + nct + nkt))
                + list(range(nc + nk, n)) + list(range(t0 + nct + nkt, t0 + nct + nkt + nxt)))
    o0 = nk + ny
    out_order = (list(range(nk)) + list(range(o0, o0 + nkt)) + list(range(nk, nk + ny))
                 + list(range(o0 + nkt, o0 + nkt + nyt)))
    jj = _permute(jj, in_order, out_order)
    consts, init, xs = _split(primals, [nc, nk])
    ct, it, xt = _split(tangents, [nc, nk])
    ops = (consts + [t for t, z in zip(ct, const_nz) if z]
           + init + [ad.instantiate_zeros(t) for t, z in zip(it, carry_nz) if z]
           + xs + [t for t, z in zip(xt, xs_nz) if z])
    lin = ([False] * nc + [True] * nct + [False] * nk + [True] * nkt
           + [False] * (n - nc - nk) + [True] * nxt)
    outs = scan_p.bind(*ops, **_scan_params(jj, length, reverse, nc + nct, nk + nkt, lin,
                                            unroll))
    carry_out, carry_t, ys, ys_t = _split(outs, [nk, nkt, ny])
    out_avals = _scan_abstract_eval(*[get_aval(p) for p in primals], jaxpr=jaxpr,
                                    length=length, reverse=reverse, num_consts=nc,
                                    num_carry=nk, linear=linear, unroll=unroll)
    ct_it, yt_it = iter(carry_t), iter(ys_t)
    tangents_out = ([next(ct_it) if z else Zero(tangent_aval(a))
                     for z, a in zip(carry_nz, out_avals[:nk])]
                    + [next(yt_it) if z else Zero(tangent_aval(a))
                       for z, a in zip(ys_nz, out_avals[nk:])])
    return carry_out + ys, tangents_out


ad.jvp_rules[scan_p] = _scan_jvp


def _scan_partial_eval(trace, tracers, *, jaxpr, length, reverse, num_consts, num_carry,
                       linear, unroll):
    params = _scan_params(jaxpr, length, reverse, num_consts, num_carry, linear, unroll)
    known = [trace.known_value(t) for t in tracers]
    uk = [not k for k, _ in known]
    if not any(uk):
        return scan_p.bind(*[v for _, v in known], **params)
    if all(uk):
        avals = scan_p.eval_abstract(*[t.aval for t in tracers], **params)
        return trace.record_eqn(scan_p, tracers, params, avals)
    nc, nk = num_consts, num_carry
    ny = len(jaxpr.out_avals) - nk
    const_uk, init_uk, xs_uk = _split(uk, [nc, nk])
    carry_uk = list(init_uk)
    for _ in range(nk + 1):
        jk, ju, out_uk, nres = partial_eval_jaxpr(jaxpr, const_uk + carry_uk + xs_uk,
                                                  instantiate=carry_uk + [False] * ny)
        new = _or(carry_uk, out_uk[:nk])
        if new == carry_uk:
            break
        carry_uk = new
    in_uk = const_uk + carry_uk + xs_uk
    vals = [v for _, v in known]
    k_consts, k_init, k_xs = _split([v for v, u in zip(vals, in_uk) if not u],
                                    [nc - sum(const_uk), nk - sum(carry_uk)])
    nck, nkk = len(k_consts), len(k_init)
    n_known_out = len(jk.out_avals) - nres

    # Where each residual comes from: a loop-invariant value (a const of the known body or
    # one of its constant operands) is passed once; a slice of a known xs is read from xs;
    # anything else is emitted by the known scan as an extra stacked output.
    kj = jk.jaxpr
    constvar_pos = {v: i for i, v in enumerate(kj.constvars)}
    invar_pos = {v: i for i, v in enumerate(kj.invars)}
    res_kind = []
    stacked_vars = []
    for v in kj.outvars[n_known_out:]:
        if v in constvar_pos:
            res_kind.append(("const", jk.consts[constvar_pos[v]]))
        elif v in invar_pos and invar_pos[v] < nck:
            res_kind.append(("const", k_consts[invar_pos[v]]))
        elif v in invar_pos and invar_pos[v] >= nck + nkk:
            res_kind.append(("xs", k_xs[invar_pos[v] - nck - nkk]))
        else:
            res_kind.append(("stacked", len(stacked_vars)))
            stacked_vars.append(v)
    known_scan = ClosedJaxpr(Jaxpr(kj.constvars, kj.invars,
                                   kj.outvars[:n_known_out] + stacked_vars, kj.eqns),
                             jk.consts)
    k_outs = scan_p.bind(*k_consts, *k_init, *k_xs, **_scan_params(
        known_scan, length, reverse, nck, nkk, [False] * len(kj.invars), unroll))
    k_carry, k_ys, stacked = _split(k_outs, [nkk, n_known_out - nkk])

    # The unknown scan: [const residuals, unknown consts | unknown carries | xs residuals,
    # unknown xs] -> unknown outputs.
    const_res = [i for i, (k, _) in enumerate(res_kind) if k == "const"]
    xs_res = [i for i, (k, _) in enumerate(res_kind) if k != "const"]
    nuc, nuk = sum(const_uk), sum(carry_uk)
    in_order = (const_res + list(range(nres, nres + nuc))
                + list(range(nres + nuc, nres + nuc + nuk)) + xs_res
                + list(range(nres + nuc + nuk, len(ju.in_avals))))
    unknown_scan = _permute(ju, in_order)

    def res_value(i):
        kind, x = res_kind[i]
        return stacked[x] if kind == "stacked" else x

    uk_tracers = [t for t, u in zip(tracers, in_uk) if u]
    u_consts, u_init, u_xs = _split(uk_tracers, [nuc, nuk])
    ops = ([trace.full_raise(res_value(i)) for i in const_res] + u_consts + u_init
           + [trace.full_raise(res_value(i)) for i in xs_res] + u_xs)
    lin = ([False] * len(const_res) + [True] * (nuc + nuk) + [False] * len(xs_res)
           + [True] * len(u_xs))
    u_params = _scan_params(unknown_scan, length, reverse, len(const_res) + nuc, nuk, lin,
                            unroll)
    u_avals = scan_p.eval_abstract(*[t.aval for t in ops], **u_params)
    u_outs = trace.record_eqn(scan_p, ops, u_params, u_avals)
    u_carry, u_ys = _split(u_outs, [nuk])
    kc, kyi, uc, uyi = iter(k_carry), iter(k_ys), iter(u_carry), iter(u_ys)
    out = [next(uc) if u else next(kc) for u in carry_uk]
    out += [next(uyi) if u else next(kyi) for u in out_uk[nk:]]
    return out


core.partial_eval_rules[scan_p] = _pe_rule(_scan_partial_eval)


def _scan_transpose(cts, *args, jaxpr, length, reverse, num_consts, num_carry, linear, unroll):
    from .elementwise import add
    nc, nk = num_consts, num_carry
    consts, init, xs = _split(args, [nc, nk])
    ct_carry, ct_ys = _split(cts, [nk])
    const_lin = [is_undefined_primal(c) for c in consts]
    xs_lin = [is_undefined_primal(x) for x in xs]
    # The carries of a linear scan are linear (an initial value that is a known constant is
    # a zero tangent instantiated by the JVP rule); its other operands are residuals.
    res_consts = [c for c, lin in zip(consts, const_lin) if not lin]
    res_xs = [x for x, lin in zip(xs, xs_lin) if not lin]
    lin_const_avals = [tangent_aval(c.aval) for c, lin in zip(consts, const_lin) if lin]
    body_t = transpose_jaxpr(jaxpr, const_lin + [True] * nk + xs_lin)
    n_rc, n_lc, n_rx = len(res_consts), len(lin_const_avals), len(res_xs)
    carry_avals = [tangent_aval(a) for a in jaxpr.in_avals[nc:nc + nk]]
    y_avals = [tangent_aval(a) for a in jaxpr.out_avals[nk:]]

    def body(*a):
        rc, acc, ctc, rx, cty = _split(a, [n_rc, n_lc, nk, n_rx])
        outs = core.eval_jaxpr(body_t.jaxpr, body_t.consts, *rc, *rx, *ctc, *cty)
        ct_lc, ct_c, ct_lx = _split(outs, [n_lc, nk])
        return [add(x, y) for x, y in zip(acc, ct_lc)] + ct_c + ct_lx

    rx_avals = [get_aval(x) for x in res_xs]
    rx_avals = [ShapedArray(a.shape[1:], a.dtype, a.weak_type) for a in rx_avals]
    body_closed = _trace_rule(body, [get_aval(c) for c in res_consts] + lin_const_avals
                              + carry_avals + rx_avals + y_avals)
    ops = (res_consts + [_zeros(a) for a in lin_const_avals]
           + [ad.instantiate_zeros(c) for c in ct_carry] + res_xs
           + [ad.instantiate_zeros(c) for c in ct_ys])
    lin = [False] * n_rc + [True] * (n_lc + nk) + [False] * n_rx + [True] * len(ct_ys)
    outs = scan_p.bind(*ops, **_scan_params(body_closed, length, not reverse, n_rc,
                                            n_lc + nk, lin, unroll))
    ct_consts, ct_init, ct_xs = _split(outs, [n_lc, nk])
    cc, cx = iter(ct_consts), iter(ct_xs)
    return ([next(cc) if lin else None for lin in const_lin]
            + [c if is_undefined_primal(x) else None for c, x in zip(ct_init, init)]
            + [next(cx) if lin else None for lin in xs_lin])


transpose_rules[scan_p] = _scan_transpose


def _scan_batch(axis_data, vals, dims, *, jaxpr, length, reverse, num_consts, num_carry,
                linear, unroll):
    params = _scan_params(jaxpr, length, reverse, num_consts, num_carry, linear, unroll)
    if all(d is None for d in dims):
        return scan_p.bind(*vals, **params), [None] * len(jaxpr.out_avals)
    size, name = axis_data.size, axis_data.name
    nc, nk = num_consts, num_carry
    ny = len(jaxpr.out_avals) - nk
    consts, init, xs = _split(vals, [nc, nk])
    const_dims, init_dims, xs_dims = _split(dims, [nc, nk])
    # Inside the body a batched slice has its batch dim first; in the operand it sits
    # right after the scanned axis.
    x_in = [None if d is None else 0 for d in xs_dims]
    carry_b = [d is not None for d in init_dims]
    for _ in range(nk + 1):
        c_dims = [0 if b else None for b in carry_b]
        _, out_dims = batching.batch_jaxpr(jaxpr, size, const_dims + c_dims + x_in,
                                           c_dims + [None] * ny, name)
        new = _or(carry_b, [d is not None for d in out_dims[:nk]])
        if new == carry_b:
            break
        carry_b = new
    ys_b = [d is not None for d in out_dims[nk:]]
    c_dims = [0 if b else None for b in carry_b]
    bj, _ = batching.batch_jaxpr(jaxpr, size, const_dims + c_dims + x_in,
                                 c_dims + [0 if b else None for b in ys_b], name)
    new_init = [batching.bdim_at_front(v, d, size) if b else v
                for v, d, b in zip(init, init_dims, carry_b)]
    new_xs = [x if d is None else batching.moveaxis(x, d, 1) for x, d in zip(xs, xs_dims)]
    outs = scan_p.bind(*consts, *new_init, *new_xs, **dict(params, jaxpr=bj))
    return outs, c_dims + [1 if b else None for b in ys_b]


batching.axis_batching_rules[scan_p] = _scan_batch


# ---------------------------------------------------------------------------------------------
# cond and switch


def _cond_impl(index, *ops, branches):
    i = int(np.clip(int(index), 0, len(branches) - 1))
    b = branches[i]
    return _fit_dtypes(core.eval_jaxpr(b.jaxpr, b.consts, *ops), b.out_avals)


def _cond_abstract_eval(index, *ops, branches):
    if index.shape != () or not dtypes.is_integer(index.dtype):
        raise TypeError(f"cond: the branch index must be an integer scalar, got "
                        f"{index.str_short()}")
    if not branches:
        raise TypeError("cond: needs at least one branch")
    out0 = branches[0].out_avals
    for k, b in enumerate(branches):
        if len(b.in_avals) != len(ops):
            raise TypeError(f"cond: branch {k} takes {len(b.in_avals)} operands, got "
                            f"{len(ops)}")
        _check_same_types(ops, b.in_avals, lambda i, got, want: (
            f"cond: operand {i} is {got} but branch {k} expects {want}"))
        outs = b.out_avals
        if len(outs) != len(out0) or any(not x.same_type(y) for x, y in zip(outs, out0)):
            raise TypeError(f"cond: branch {k} returns {_avals_str(outs)} but branch 0 returns "
                            f"{_avals_str(out0)}")
    return [ShapedArray(a.shape, a.dtype, all(b.out_avals[i].weak_type for b in branches))
            for i, a in enumerate(out0)]


cond_p = Primitive("cond")
cond_p.multiple_results = True
cond_p.def_impl(_cond_impl)
cond_p.def_abstract_eval(_cond_abstract_eval)


def cond(pred, true_fun, false_fun, *operands):
    """``true_fun(*operands)`` if ``pred`` else ``false_fun(*operands)``, inside the IR.

    ``pred`` is a boolean (or numeric) scalar. Both branches take the same operands (pytrees)
    and must return values of identical structure and types. Eagerly, with a concrete
    ``pred``, this is a plain Python ``if``.

    >>> import functrax, functrax.numpy as fnp
    >>> f = functrax.vmap(lambda x: cond(x > 0, fnp.sin, fnp.cos, x))
    >>> f(fnp.array([0.0, 1.0])).round(3).tolist()
    [1.0, 0.841]
    """
    if not callable(true_fun) or not callable(false_fun):
        raise _locate(TypeError("cond: true_fun and false_fun must be callable; the signature "
                                "is cond(pred, true_fun, false_fun, *operands)"))
    p_aval = get_aval(_check_operand(pred, "cond", "pred"))
    if p_aval.shape != ():
        raise _locate(TypeError(f"cond: pred must be a scalar, got {p_aval.str_short()}; for "
                                f"an elementwise choice use lax.select_n or fnp.where"))
    if not (dtypes.is_bool(p_aval.dtype) or dtypes.is_integer(p_aval.dtype)
            or dtypes.is_float(p_aval.dtype)):
        raise _locate(TypeError(f"cond: pred must be boolean or a number, got "
                                f"{p_aval.str_short()}"))
    if _is_concrete_eager(pred):
        return _eager_result(true_fun(*operands) if bool(np.asarray(pred))
                             else false_fun(*operands))
    from .elementwise import ne
    from .structural import convert_element_type
    if not dtypes.is_bool(p_aval.dtype):
        pred = ne(pred, 0)
    index = convert_element_type(pred, _int32)
    return _bind_cond("cond", index, (false_fun, true_fun), ("false_fun", "true_fun"),
                      operands)


def switch(index, branches, *operands):
    """``branches[index](*operands)`` with ``index`` clamped to ``[0, len(branches) - 1]``.

    >>> from functrax import lax
    >>> lax.switch(5, [lambda x: x, lambda x: 2 * x, lambda x: 3 * x], 1.0)
    Array(3.)
    """
    branches = tuple(branches)
    if not branches or not all(callable(b) for b in branches):
        raise _locate(TypeError("switch: branches must be a non-empty sequence of callables"))
    i_aval = get_aval(_check_operand(index, "switch", "index"))
    if i_aval.shape != () or not dtypes.is_integer(i_aval.dtype):
        raise _locate(TypeError(f"switch: index must be an integer scalar, got "
                                f"{i_aval.str_short()}"))
    n = len(branches)
    if _is_concrete_eager(index):
        return _eager_result(branches[int(np.clip(int(index), 0, n - 1))](*operands))
    if n == 1:
        return branches[0](*operands)
    from .elementwise import max as lax_max, min as lax_min
    from .structural import convert_element_type
    index = lax_min(lax_max(convert_element_type(index, _int32), np.int32(0)), np.int32(n - 1))
    return _bind_cond("switch", index, branches, tuple(f"branch {k}" for k in range(n)),
                      operands)


def _bind_cond(fname, index, funs, names, operands):
    leaves, in_tree = tree_flatten(operands)
    leaves = [_check_operand(x, fname, "the operands") for x in leaves]
    avals = [get_aval(x) for x in leaves]
    traced = [_trace_user_fun(f, in_tree, avals) for f in funs]
    out_tree, paths = traced[0][2], traced[0][4]
    for (_, _, tree, _, _), nm in zip(traced[1:], names[1:]):
        if tree != out_tree:
            raise _locate(TypeError(f"{fname}: {names[0]} and {nm} must return the same tree "
                                    f"structure:\n  {names[0]}  {out_tree}\n  {nm}  {tree}"))
    # A weakly typed output (a Python number) adopts the dtype the other branches agree on.
    n_out = len(traced[0][3])
    target = [None] * n_out
    for i in range(n_out):
        avs = [t[3][i] for t in traced]
        if all(a.same_type(avs[0]) for a in avs):
            continue
        strong = {a.dtype for a in avs if not a.weak_type}
        if len({a.shape for a in avs}) == 1 and len(strong) == 1:
            target[i] = strong.pop()
            continue
        k = next(k for k, a in enumerate(avs) if not a.same_type(avs[0]))
        raise _locate(TypeError(
            f"{fname}: the branches must return values of identical types, but output"
            f"{paths[i]} is {_type_str(avs[0])} from {names[0]} and {_type_str(avs[k])} "
            f"from {names[k]}"))
    if any(t is not None for t in target):
        traced = [_retrace_cast(f, in_tree, avals, target, t)
                  for f, t in zip(funs, traced)]
    hoisted_all = [h for t in traced for h in t[1]]
    h_avals = [get_aval(h) for h in hoisted_all]
    branches, start = [], 0
    for t in traced:
        closed, h = t[0], t[1]
        before, after = h_avals[:start], h_avals[start + len(h):]
        closed = _add_unused_invars(closed, before, 0)
        closed = _add_unused_invars(closed, after, len(before) + len(h))
        branches.append(closed)
        start += len(h)
    outs = cond_p.bind(index, *hoisted_all, *leaves, branches=tuple(branches))
    return tree_unflatten(out_tree, outs)


def _retrace_cast(fun, in_tree, avals, target, traced):
    from .structural import convert_element_type
    if all(t is None or a.dtype == t for a, t in zip(traced[3], target)):
        return traced

    def cast_fun(*args):
        leaves, tree = tree_flatten(fun(*args))
        leaves = [x if t is None else convert_element_type(x, t)
                  for x, t in zip(leaves, target)]
        return tree_unflatten(tree, leaves)
    return _trace_user_fun(cast_fun, in_tree, avals)


def _cond_jvp(primals, tangents, *, branches):
    index, *ops = primals
    ts = tangents[1:]
    nz = [not ad.is_zero(t) for t in ts]
    n_out = len(branches[0].out_avals)
    out_nz = [False] * n_out
    for b in branches:
        out_nz = _or(out_nz, jvp_jaxpr(b, nz, False)[1])
    new_branches = tuple(jvp_jaxpr(b, nz, out_nz)[0] for b in branches)
    outs = cond_p.bind(index, *ops, *[t for t, z in zip(ts, nz) if z], branches=new_branches)
    primal_out, t_out = outs[:n_out], iter(outs[n_out:])
    return primal_out, [next(t_out) if z else Zero(tangent_aval(a))
                        for z, a in zip(out_nz, branches[0].out_avals)]


ad.jvp_rules[cond_p] = _cond_jvp


def _cond_partial_eval(trace, tracers, *, branches):
    known = [trace.known_value(t) for t in tracers]
    uk = [not k for k, _ in known]
    if not any(uk):
        return cond_p.bind(*[v for _, v in known], branches=branches)
    if uk[0] or all(uk[1:]):
        # An unknown index (never the case under linearize, where indices are primal) or
        # nothing known to split off: stage the whole cond.
        avals = cond_p.eval_abstract(*[t.aval for t in tracers], branches=branches)
        return trace.record_eqn(cond_p, tracers, dict(branches=branches), avals)
    ops_uk = uk[1:]
    n_out = len(branches[0].out_avals)
    out_uk = [False] * n_out
    for b in branches:
        out_uk = _or(out_uk, partial_eval_jaxpr(b, ops_uk, instantiate=False)[2])
    splits = [partial_eval_jaxpr(b, ops_uk, instantiate=out_uk) for b in branches]
    res_avals = [s[0].out_avals[len(s[0].out_avals) - s[3]:] for s in splits]
    all_res = [a for r in res_avals for a in r]
    offsets = np.cumsum([0] + [len(r) for r in res_avals]).tolist()
    known_ops = [v for (_, v), u in zip(known[1:], ops_uk) if not u]
    k_avals = [get_aval(v) for v in known_ops]

    def known_branch(k):
        jk, nres = splits[k][0], splits[k][3]

        def fun(*args):
            outs = core.eval_jaxpr(jk.jaxpr, jk.consts, *args)
            n_kout = len(outs) - nres
            res = ([_zeros(a) for a in all_res[:offsets[k]]] + outs[n_kout:]
                   + [_zeros(a) for a in all_res[offsets[k + 1]:]])
            return outs[:n_kout] + res
        return _trace_rule(fun, k_avals)

    def unknown_branch(k):
        ju = splits[k][1]
        # The unknown branch k reads its own residuals out of the union.
        padded = _add_unused_invars(ju, all_res[:offsets[k]], 0)
        return _add_unused_invars(padded, all_res[offsets[k + 1]:], offsets[k + 1])

    k_branches = tuple(known_branch(k) for k in range(len(branches)))
    k_outs = cond_p.bind(known[0][1], *known_ops, branches=k_branches)
    n_kout = n_out - sum(out_uk)
    k_vals, residuals = k_outs[:n_kout], k_outs[n_kout:]
    u_branches = tuple(unknown_branch(k) for k in range(len(branches)))
    ops = ([tracers[0]] + [trace.full_raise(r) for r in residuals]
           + [t for t, u in zip(tracers[1:], ops_uk) if u])
    u_avals = cond_p.eval_abstract(*[t.aval for t in ops], branches=u_branches)
    u_vals = trace.record_eqn(cond_p, ops, dict(branches=u_branches), u_avals)
    ki, ui = iter(k_vals), iter(u_vals)
    return [next(ui) if u else next(ki) for u in out_uk]


core.partial_eval_rules[cond_p] = _pe_rule(_cond_partial_eval)


def _cond_transpose(cts, index, *ops, branches):
    if is_undefined_primal(index):
        raise ValueError("cond: not linear in the branch index")
    lin = [is_undefined_primal(x) for x in ops]
    res = [x for x, l_ in zip(ops, lin) if not l_]
    cts = [ad.instantiate_zeros(c) for c in cts]
    new_branches = tuple(transpose_jaxpr(b, lin) for b in branches)
    outs = iter(cond_p.bind(index, *res, *cts, branches=new_branches))
    return [None] + [next(outs) if l_ else None for l_ in lin]


transpose_rules[cond_p] = _cond_transpose


def _cond_batch(axis_data, vals, dims, *, branches):
    if all(d is None for d in dims):
        return cond_p.bind(*vals, branches=branches), [None] * len(branches[0].out_avals)
    size, name = axis_data.size, axis_data.name
    index, *ops = vals
    idx_dim, *op_dims = dims
    n_out = len(branches[0].out_avals)
    if idx_dim is None:
        out_b = [False] * n_out
        for b in branches:
            _, od = batching.batch_jaxpr(b, size, op_dims, [None] * n_out, name)
            out_b = _or(out_b, [d is not None for d in od])
        dst = [0 if b else None for b in out_b]
        new_branches = tuple(batching.batch_jaxpr(b, size, op_dims, dst, name)[0]
                             for b in branches)
        return cond_p.bind(index, *ops, branches=new_branches), dst
    # Members take different branches: run every branch on the whole batch and select.
    from .elementwise import select_n
    from .structural import reshape
    results = []
    for b in branches:
        bj, _ = batching.batch_jaxpr(b, size, op_dims, [0] * n_out, name)
        results.append(core.eval_jaxpr(bj.jaxpr, bj.consts, *ops))
    idx = batching.moveaxis(index, idx_dim, 0)
    outs = []
    for j in range(n_out):
        cases = [r[j] for r in results]
        nd = get_aval(cases[0]).ndim
        which = idx if nd == 1 else reshape(idx, (size,) + (1,) * (nd - 1))
        outs.append(select_n(which, *cases))
    return outs, [0] * n_out


batching.axis_batching_rules[cond_p] = _cond_batch


# ---------------------------------------------------------------------------------------------
# while_loop


def _while_impl(*args, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, max_steps):
    cc, bc, carry = _split(args, [cond_nconsts, body_nconsts])
    cj, bj = cond_jaxpr, body_jaxpr
    carry_avals = bj.in_avals[body_nconsts:]
    steps = 0
    while max_steps is None or steps < max_steps:
        pred, = core.eval_jaxpr(cj.jaxpr, cj.consts, *cc, *carry)
        if not bool(pred):
            break
        carry = _fit_dtypes(core.eval_jaxpr(bj.jaxpr, bj.consts, *bc, *carry), carry_avals)
        steps += 1
    return list(carry)


def _while_abstract_eval(*avals, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts,
                         max_steps):
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 0):
        raise TypeError(f"while_loop: max_steps must be None or a non-negative int, got "
                        f"{max_steps!r}")
    cc, bc, carry = _split(avals, [cond_nconsts, body_nconsts])
    if len(cond_jaxpr.in_avals) != cond_nconsts + len(carry) or \
            len(body_jaxpr.in_avals) != body_nconsts + len(carry):
        raise TypeError("while_loop: operand counts do not match the cond and body jaxprs")
    _check_same_types(cc + carry, cond_jaxpr.in_avals, lambda i, got, want: (
        f"while_loop: cond_fun input {i} is {got} but the jaxpr expects {want}"))
    outs = cond_jaxpr.out_avals
    if len(outs) != 1 or outs[0].shape != () or not dtypes.is_bool(outs[0].dtype):
        raise TypeError(f"while_loop: cond_fun must return a boolean scalar, got "
                        f"{_avals_str(outs)}")
    _check_same_types(bc + carry, body_jaxpr.in_avals, lambda i, got, want: (
        f"while_loop: body_fun input {i} is {got} but the jaxpr expects {want}"))
    b_out = body_jaxpr.out_avals
    if len(b_out) != len(carry) or any(not a.same_type(b) for a, b in zip(b_out, carry)):
        raise TypeError(f"while_loop: body_fun returns {_avals_str(b_out)} for a carry of "
                        f"{_avals_str(carry)}")
    return list(body_jaxpr.in_avals[body_nconsts:])


while_p = Primitive("while")
while_p.multiple_results = True
while_p.def_impl(_while_impl)
while_p.def_abstract_eval(_while_abstract_eval)


def while_loop(cond_fun, body_fun, init_val, max_steps=None):
    """``val = init_val; while cond_fun(val): val = body_fun(val)``, inside the IR.

    ``val`` is a pytree whose leaves keep their shapes and dtypes. ``max_steps`` (an int)
    bounds the number of iterations: the loop also stops after ``max_steps`` steps, and
    reverse-mode differentiation (``grad``, ``vjp``) becomes possible (beyond JAX). Without it
    the loop supports forward mode (``jvp``) only.

    >>> from functrax import lax
    >>> lax.while_loop(lambda v: v < 10, lambda v: v * 2, 1)
    Array(16)
    """
    if max_steps is not None:
        max_steps = int(core.concrete_or_error(max_steps, "while_loop: max_steps must be "
                                               "static"))
        if max_steps < 0:
            raise _locate(ValueError(f"while_loop: max_steps must be non-negative, got "
                                     f"{max_steps}"))
    with_path, tree = tree_flatten_with_path(init_val)
    paths = [keystr(p) for p, _ in with_path]
    leaves = [_check_operand(x, "while_loop", "init_val") for _, x in with_path]
    _, args_tree = tree_flatten((init_val,))
    for attempt in range(2):
        avals = [get_aval(x) for x in leaves]
        cj, c_h, _, c_out, _ = _trace_user_fun(cond_fun, args_tree, avals)
        if len(c_out) != 1 or c_out[0].shape != () or not dtypes.is_bool(c_out[0].dtype):
            raise _locate(TypeError(f"while_loop: cond_fun must return a boolean scalar, got "
                                    f"{_avals_str(c_out)}"))
        bj, b_h, b_tree, b_out, _ = _trace_user_fun(body_fun, args_tree, avals)
        if b_tree != tree:
            raise _locate(TypeError(f"while_loop: body_fun must return a value with the same "
                                    f"structure as init_val:\n  init_val  {tree}\n  body_fun  "
                                    f"{b_tree}"))
        promote, err = _carry_mismatch("while_loop", paths, avals, b_out)
        if err is not None:
            raise err
        if all(p is None for p in promote) or attempt:
            break
        leaves = _promote_leaves(leaves, promote)
    outs = while_p.bind(*c_h, *b_h, *leaves, cond_jaxpr=cj, body_jaxpr=bj,
                        cond_nconsts=len(c_h), body_nconsts=len(b_h), max_steps=max_steps)
    return tree_unflatten(tree, outs)


def fori_loop(lower, upper, body_fun, init_val):
    """``val = init_val; for i in range(lower, upper): val = body_fun(i, val)``.

    With concrete bounds the loop is a ``scan`` (so reverse mode works); with traced bounds
    it is a ``while_loop`` (forward mode only).

    >>> from functrax import lax
    >>> lax.fori_loop(1, 4, lambda i, v: v * i, 1.0)
    Array(6.)
    """
    if not isinstance(lower, Tracer) and not isinstance(upper, Tracer):
        lo, hi = int(np.asarray(lower)), int(np.asarray(upper))

        def step(carry, _):
            i, val = carry
            return (i + 1, body_fun(i, val)), None

        (_, out), _ = scan(step, (lower, init_val), None, length=max(hi - lo, 0))
        return out
    from .elementwise import add, lt
    from .structural import convert_element_type
    dtype = dtypes.promote_avals_dtype([get_aval(lower), get_aval(upper)])[0]
    lower = convert_element_type(lower, dtype, get_aval(lower).weak_type)
    upper = convert_element_type(upper, dtype, get_aval(upper).weak_type)
    _, out = while_loop(lambda c: lt(c[0], upper),
                        lambda c: (add(c[0], 1), body_fun(c[0], c[1])), (lower, init_val))
    return out


def _while_params(cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, max_steps):
    return dict(cond_jaxpr=cond_jaxpr, body_jaxpr=body_jaxpr, cond_nconsts=cond_nconsts,
                body_nconsts=body_nconsts, max_steps=max_steps)


def _while_jvp(primals, tangents, *, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts,
               max_steps):
    cn, bn = cond_nconsts, body_nconsts
    cc, bc, init = _split(primals, [cn, bn])
    _, bt, it = _split(tangents, [cn, bn])
    bnz = [not ad.is_zero(t) for t in bt]
    carry_nz = [not ad.is_zero(t) for t in it]
    nk = len(init)
    for _ in range(nk + 1):
        jb, out_nz = jvp_jaxpr(body_jaxpr, bnz + carry_nz, instantiate=carry_nz)
        new = _or(carry_nz, out_nz)
        if new == carry_nz:
            break
        carry_nz = new
    nbt, nkt = sum(bnz), sum(carry_nz)
    t0 = bn + nk
    jb = _permute(jb, list(range(bn)) + list(range(t0, t0 + nbt)) + list(range(bn, bn + nk))
                  + list(range(t0 + nbt, t0 + nbt + nkt)))
    t_avals = [tangent_aval(a) for a, z in zip(body_jaxpr.in_avals[bn:], carry_nz) if z]
    cj = _add_unused_invars(cond_jaxpr, t_avals, len(cond_jaxpr.in_avals))
    ops = (cc + bc + [t for t, z in zip(bt, bnz) if z] + init
           + [ad.instantiate_zeros(t) for t, z in zip(it, carry_nz) if z])
    outs = while_p.bind(*ops, **_while_params(cj, jb, cn, bn + nbt, max_steps))
    p_out, t_out = outs[:nk], iter(outs[nk:])
    return p_out, [next(t_out) if z else Zero(tangent_aval(a))
                   for z, a in zip(carry_nz, body_jaxpr.in_avals[bn:])]


ad.jvp_rules[while_p] = _while_jvp


def _while_as_scan_step(cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts):
    """One step of a bounded while loop as a scan body: ``[cond consts, body consts, carry]
    -> carry``, applying the body while the predicate holds and the identity afterwards.

    The body is checkpointed (nothing saved inside it): reverse mode then stores one carry per
    step and recomputes the body's intermediates on the way back, so memory is proportional
    to the steps times the carry, not to everything the body computes."""
    from ..remat import checkpoint, checkpoint_policies
    from .structural import convert_element_type
    cn, bn = cond_nconsts, body_nconsts
    b_avals = body_jaxpr.in_avals
    identity = _trace_rule(lambda *a: list(a[bn:]), b_avals)
    body_fn = checkpoint(lambda *a: core.eval_jaxpr(body_jaxpr.jaxpr, body_jaxpr.consts, *a),
                         policy=checkpoint_policies.nothing_saveable)
    body_jaxpr = _trace_rule(lambda *a: list(body_fn(*a)), b_avals)

    def step(*args):
        cc, bc, carry = _split(args, [cn, bn])
        pred, = core.eval_jaxpr(cond_jaxpr.jaxpr, cond_jaxpr.consts, *cc, *carry)
        idx = convert_element_type(pred, _int32)
        return cond_p.bind(idx, *bc, *carry, branches=(identity, body_jaxpr))

    return _trace_rule(step, list(cond_jaxpr.in_avals[:cn]) + list(b_avals))


def _while_partial_eval(trace, tracers, *, cond_jaxpr, body_jaxpr, cond_nconsts,
                        body_nconsts, max_steps):
    params = _while_params(cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, max_steps)
    known = [trace.known_value(t) for t in tracers]
    uk = [not k for k, _ in known]
    if not any(uk):
        return while_p.bind(*[v for _, v in known], **params)
    cn, bn = cond_nconsts, body_nconsts
    nk = len(tracers) - cn - bn
    if max_steps is not None:
        # Bounded: a scan of max_steps steps, which partial evaluation (and so reverse mode)
        # knows how to split.
        step = _while_as_scan_step(cond_jaxpr, body_jaxpr, cn, bn)
        return scan_p.bind(*tracers, **_scan_params(step, max_steps, False, cn + bn, nk,
                                                    [False] * len(tracers), 1))
    cc_uk, bc_uk, init_uk = _split(uk, [cn, bn])
    carry_uk = list(init_uk)
    for _ in range(nk + 1):
        out_uk = partial_eval_jaxpr(body_jaxpr, bc_uk + carry_uk, instantiate=carry_uk)[2]
        new = _or(carry_uk, out_uk)
        if new == carry_uk:
            break
        carry_uk = new
    cond_uk = partial_eval_jaxpr(cond_jaxpr, cc_uk + carry_uk)[2][0]
    avals = while_p.eval_abstract(*[t.aval for t in tracers], **params)
    staged = trace.record_eqn(while_p, tracers, params, avals)
    if cond_uk or all(carry_uk):
        return staged
    # Unbounded loops are forward-mode only: the known carries run now in a loop of their
    # own, while the staged loop recomputes them alongside the unknown ones.
    keep_k = [not u for u in carry_uk]
    cj, _ = dce_closed_jaxpr(cond_jaxpr)
    cj = _drop_invars(cj, [not u for u in cc_uk] + keep_k)
    bj, _ = dce_closed_jaxpr(body_jaxpr, keep_k)
    bj = _drop_invars(bj, [not u for u in bc_uk] + keep_k)
    vals = [v for _, v in known]
    cc, bc, init = _split(vals, [cn, bn])
    k_cc = [v for v, u in zip(cc, cc_uk) if not u]
    k_bc = [v for v, u in zip(bc, bc_uk) if not u]
    k_init = [v for v, u in zip(init, carry_uk) if not u]
    k_outs = iter(while_p.bind(*k_cc, *k_bc, *k_init, **_while_params(
        cj, bj, len(k_cc), len(k_bc), None)))
    return [s if u else next(k_outs) for s, u in zip(staged, carry_uk)]


core.partial_eval_rules[while_p] = _pe_rule(_while_partial_eval)


def _while_transpose(cts, *args, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts,
                     max_steps):
    raise _locate(ValueError(
        "Reverse-mode differentiation (grad, vjp) of lax.while_loop needs a bound on its "
        "number of iterations: pass max_steps=n to lax.while_loop (memory grows with n), or "
        "write the loop with lax.fori_loop / lax.scan with a static trip count. Forward "
        "mode (jvp, jacfwd) works without a bound."))


transpose_rules[while_p] = _while_transpose


def _while_batch(axis_data, vals, dims, *, cond_jaxpr, body_jaxpr, cond_nconsts,
                 body_nconsts, max_steps):
    params = _while_params(cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts, max_steps)
    nk = len(vals) - cond_nconsts - body_nconsts
    if all(d is None for d in dims):
        return while_p.bind(*vals, **params), [None] * nk
    size, name = axis_data.size, axis_data.name
    cn, bn = cond_nconsts, body_nconsts
    cc, bc, init = _split(vals, [cn, bn])
    cc_d, bc_d, init_d = _split(dims, [cn, bn])
    carry_b = [d is not None for d in init_d]
    pred_b = False
    for _ in range(nk + 2):
        c_dims = [0 if b else None for b in carry_b]
        _, od = batching.batch_jaxpr(body_jaxpr, size, bc_d + c_dims, c_dims, name)
        new = _or(carry_b, [d is not None for d in od])
        _, pd = batching.batch_jaxpr(cond_jaxpr, size, cc_d + c_dims, [None], name)
        pred_b = pd[0] is not None
        if pred_b:
            # Members finish at different steps: every carry is selected per member.
            new = [True] * nk
        if new == carry_b:
            break
        carry_b = new
    c_dims = [0 if b else None for b in carry_b]
    new_init = [batching.bdim_at_front(v, d, size) if b else v
                for v, d, b in zip(init, init_d, carry_b)]
    bj, _ = batching.batch_jaxpr(body_jaxpr, size, bc_d + c_dims, c_dims, name)
    if not pred_b:
        cj, _ = batching.batch_jaxpr(cond_jaxpr, size, cc_d + c_dims, [None], name)
        outs = while_p.bind(*cc, *bc, *new_init, **dict(params, cond_jaxpr=cj, body_jaxpr=bj))
        return outs, c_dims
    from .elementwise import ne, select_n
    from .reductions import reduce_max
    from .structural import convert_element_type, reshape
    cj_b, _ = batching.batch_jaxpr(cond_jaxpr, size, cc_d + c_dims, [0], name)
    c_avals = cj_b.in_avals

    def any_active(*args):
        pred, = core.eval_jaxpr(cj_b.jaxpr, cj_b.consts, *args)
        return [ne(reduce_max(convert_element_type(pred, _int32), axes=(0,)), np.int32(0))]

    def frozen_body(*args):
        ccv, bcv, carry = _split(args, [cn, bn])
        pred, = core.eval_jaxpr(cj_b.jaxpr, cj_b.consts, *ccv, *carry)
        new = core.eval_jaxpr(bj.jaxpr, bj.consts, *bcv, *carry)
        out = []
        for old, nw in zip(carry, new):
            nd = get_aval(old).ndim
            which = pred if nd == 1 else reshape(pred, (size,) + (1,) * (nd - 1))
            out.append(select_n(which, old, nw))
        return out

    new_cond = _trace_rule(any_active, c_avals)
    new_body = _trace_rule(frozen_body, list(c_avals[:cn]) + list(bj.in_avals))
    outs = while_p.bind(*cc, *cc, *bc, *new_init, **_while_params(
        new_cond, new_body, cn, cn + bn, max_steps))
    return outs, c_dims


batching.axis_batching_rules[while_p] = _while_batch


# ---------------------------------------------------------------------------------------------
# map


def map(f, xs, batch_size=None):  # noqa: A001 - lax's name
    """``stack([f(x) for x in xs])`` over the leading axis of the pytree ``xs``, as a scan
    (one slice at a time, so memory stays that of one application). ``batch_size`` maps
    ``vmap(f)`` over chunks of that many slices instead (the remainder in a last call).

    >>> from functrax import lax
    >>> lax.map(lambda x: x * x, lax.iota('float64', 3)).tolist()
    [0.0, 1.0, 4.0]
    """
    if batch_size is None:
        return scan(lambda c, x: (c, f(x)), (), xs)[1]
    from ..api import vmap
    from .padding import pad
    from .slicing import slice_in_dim
    from .structural import reshape
    from .elementwise import add
    batch_size = int(batch_size)
    if batch_size < 1:
        raise _locate(ValueError(f"map: batch_size must be a positive int, got {batch_size}"))
    leaves = tree_flatten(xs)[0]
    if not leaves:
        raise _locate(ValueError("map: xs has no arrays to map over"))
    n = get_aval(leaves[0]).shape[0]
    if n == 0:
        return scan(lambda c, x: (c, f(x)), (), xs)[1]
    nb, rem = divmod(n, batch_size)
    vf = vmap(f)
    parts = []
    if nb:
        main = tree_map(lambda x: reshape(slice_in_dim(x, 0, nb * batch_size, axis=0),
                                          (nb, batch_size) + get_aval(x).shape[1:]), xs)
        ys = scan(lambda c, x: (c, vf(x)), (), main)[1]
        parts.append(tree_map(lambda y: reshape(y, (nb * batch_size,) + get_aval(y).shape[2:]),
                              ys))
    if rem:
        parts.append(vf(tree_map(lambda x: slice_in_dim(x, nb * batch_size, n, axis=0), xs)))
    if len(parts) == 1:
        return parts[0]

    def concat(a, b):
        # Concatenation along the leading axis as a sum of two zero-padded arrays.
        ra, rb = get_aval(a), get_aval(b)
        zero = np.zeros((), ra.dtype)
        rest = ((0, 0, 0),) * (ra.ndim - 1)
        return add(pad(a, zero, ((0, rb.shape[0], 0),) + rest),
                   pad(b, zero, ((ra.shape[0], 0, 0),) + rest))
    return tree_map(concat, parts[0], parts[1])
