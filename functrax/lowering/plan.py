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
           "ELEMENTWISE", "REDUCTIONS", "DEFAULT_FUSIBLE", "FOLD_MAX_SIZE", "CALL_PRIMITIVES",
           "sink_scan_accumulators"]

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
# Constant arrays up to this size are checked for being one repeated value.
SPLAT_SCAN_MAX = 1 << 22


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


# ---------------------------------------------------------------------------------------------
# Simplification


def _scalar_of(v, known, splats):
    """The scalar a value is made of, when it is a literal, a one-element constant or a
    broadcast of one; else None."""
    if _is_lit(v):
        return v.val
    s = splats.get(v)
    if s is not None:
        return s
    val = known.get(v)
    if val is None:
        return None
    arr = np.asarray(val)
    if arr.size == 1:
        return arr.reshape(())[()]
    # A constant array of one repeated value (AD's broadcast ones, computed eagerly) counts as
    # a splat; the check is one pass over a constant, once per lowering.
    if 0 < arr.size <= SPLAT_SCAN_MAX and arr.dtype.kind in "biuf":
        first = arr.reshape(-1)[0]
        if np.all(arr == first):
            splats[v] = first
            return first
    return None


def _is_const(x, c):
    if x is None:
        return False
    try:
        return bool(np.asarray(x) == c) and not isinstance(x, (bool, np.bool_))
    except Exception:
        return False


def _same_type(a, b):
    return a.shape == b.shape and a.dtype == b.dtype


def _params_key(params):
    try:
        key = tuple(sorted(params.items()))
        hash(key)
        return key
    except TypeError:
        return None


def _operand_key(v):
    if _is_lit(v):
        val = v.val
        return ("lit", type(val), np.asarray(val).dtype.str, repr(val), v.aval.weak_type)
    return v


_COMMUTATIVE = frozenset({"add", "mul", "max", "min", "eq", "ne", "and", "or"})


def _order_key(k):
    return (1, repr(k)) if isinstance(k, tuple) else (0, id(k))


def _has_subjaxpr(eqn):
    return any(True for _ in core.subjaxprs_of_eqn(eqn))


def _identity_of(eqn, invars, known, splats):
    """If ``eqn`` computes one of its operands unchanged, that operand; else None."""
    name = eqn.primitive.name
    out = eqn.outvars[0].aval if eqn.outvars else None
    if name in ("mul", "add", "sub", "div") and len(invars) == 2:
        x, y = invars
        sx, sy = _scalar_of(x, known, splats), _scalar_of(y, known, splats)
        unit = 1 if name in ("mul", "div") else 0
        if _is_const(sy, unit) and _same_type(x.aval, out):
            return x
        if name in ("mul", "add") and _is_const(sx, unit) and _same_type(y.aval, out):
            return y
    elif name == "convert_element_type":
        x = invars[0]
        if x.aval.dtype == out.dtype:
            return x
    elif name in ("broadcast_in_dim", "reshape", "transpose"):
        x = invars[0]
        if x.aval.shape == out.shape and (name != "transpose" or
                                          tuple(eqn.params["permutation"]) ==
                                          tuple(range(len(out.shape)))):
            return x
    return None


def _swap_dot(dot, perm):
    """``transpose(dot_general(a, b), perm)`` as ``dot_general(b, a)`` when ``perm`` just
    swaps the two operands' free dims (what AD's transpose of a matmul produces); else None.
    BLAS takes transposed operands for free, a transposed result would be a strided view."""
    (lc, rc), (lb, rb) = dot.params["dimension_numbers"]
    a, b = dot.invars
    nb = len(lb)
    nl = len(a.aval.shape) - len(lc) - nb
    nr = len(b.aval.shape) - len(rc) - nb
    want = tuple(range(nb)) + tuple(range(nb + nl, nb + nl + nr)) + tuple(range(nb, nb + nl))
    if tuple(perm) != want:
        return None
    params = dict(dot.params, dimension_numbers=((tuple(rc), tuple(lc)), (tuple(rb), tuple(lb))))
    return dot._replace(invars=[b, a], params=params)


def _select_as_arithmetic(eqn, invars, known, splats):
    """``select_n(p, a, b)`` with scalar cases ``a``, ``b`` as ``a + float(p) * (b - a)``,
    when that is exact in the output dtype (as for AD's 0/1 and 1/2 masks). A select with a
    data-dependent mask is a branchy loop in numpy; the arithmetic form is a vector loop."""
    from .. import lax
    out = eqn.outvars[0]
    dt = out.aval.dtype
    if dt.kind != "f":
        return None
    a, b = (_scalar_of(v, known, splats) for v in invars[1:])
    if a is None or b is None:
        return None
    a, b = np.asarray(a).astype(dt)[()], np.asarray(b).astype(dt)[()]
    with np.errstate(all="ignore"):
        d = (b - a).astype(dt)
        if not (np.isfinite(a) and np.isfinite(d) and a + d == b and a + d * dt.type(0) == a):
            return None
    src = eqn.source_info
    eqns = []
    mask = Var(out.aval.update(weak_type=False))
    eqns.append(JaxprEqn(lax.convert_element_type_p, [invars[0]],
                         dict(new_dtype=dt, weak_type=False), [mask], src))
    cur = mask
    if d != 1:
        nv = Var(out.aval)
        eqns.append(JaxprEqn(lax.mul_p, [cur, Literal(d, core.ShapedArray((), dt))], {}, [nv],
                             src))
        cur = nv
    if a != 0 or cur is mask and out.aval.weak_type:
        nv = Var(out.aval)
        eqns.append(JaxprEqn(lax.add_p, [cur, Literal(a, core.ShapedArray((), dt))], {}, [nv],
                             src))
        cur = nv
    eqns[-1] = eqns[-1]._replace(outvars=[out])
    return eqns


def simplify(jaxpr: Jaxpr, consts):
    """Constant folding, algebraic no-ops, CSE and DCE. Returns (jaxpr, consts).

    The result computes the same outputs for the same inputs; its outvars may be literals or
    input variables when a whole computation folded away."""
    known = {v: c for v, c in zip(jaxpr.constvars, consts)}
    splats = {}      # var -> scalar: values that are a broadcast of one scalar
    negs = {}        # var -> operand of the neg that produced it
    env = {}         # var -> replacement (var or Literal)
    cse = {}
    new_eqns = []
    folded = {}      # var -> folded (non-scalar) constant value

    uses = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not _is_lit(v):
                uses[v] = uses.get(v, 0) + 1
    for v in jaxpr.outvars:
        if not _is_lit(v):
            uses[v] = uses.get(v, 0) + 2
    dots = {}        # outvar of a dot_general -> its equation

    def read(v):
        if _is_lit(v):
            return v
        while v in env:
            v = env[v]
            if _is_lit(v):
                return v
        return v

    for eqn in jaxpr.eqns:
        invars = [read(v) for v in eqn.invars]
        prim = eqn.primitive
        effectful = prim in effectful_primitives
        sub = _has_subjaxpr(eqn)
        # 1. Constant folding.
        if not effectful and not sub and all(
                _is_lit(v) or v in known for v in invars) and _foldable_size(eqn, invars):
            try:
                vals = [v.val if _is_lit(v) else known[v] for v in invars]
                out = prim.impl(*vals, **eqn.params)
            except Exception:
                out = None
            if out is not None:
                outs = out if prim.multiple_results else [out]
                for v, o in zip(eqn.outvars, outs):
                    o = np.asarray(o)
                    if o.dtype != v.aval.dtype:
                        o = o.astype(v.aval.dtype)
                    if o.ndim == 0:
                        env[v] = Literal(o[()], v.aval)
                    else:
                        known[v] = o
                        folded[v] = o
                continue
        # 2. Algebraic no-ops.
        if not effectful and len(eqn.outvars) == 1:
            ident = _identity_of(eqn, invars, known, splats)
            if ident is None and prim.name == "neg" and not _is_lit(invars[0]) and \
                    invars[0] in negs:
                ident = negs[invars[0]]
            if ident is not None:
                env[eqn.outvars[0]] = ident
                continue
        # 3. Common subexpressions.
        if not effectful:
            pkey = _params_key(eqn.params)
            if pkey is not None:
                okeys = tuple(_operand_key(v) for v in invars)
                if prim.name in _COMMUTATIVE and len(okeys) == 2:
                    # x*y and y*x are one value (AD's product rule emits both orders).
                    okeys = tuple(sorted(okeys, key=_order_key))
                key = (prim, okeys, pkey)
                prev = cse.get(key)
                if prev is not None:
                    for v, p in zip(eqn.outvars, prev):
                        env[v] = p
                    continue
                cse[key] = eqn.outvars
        if prim.name == "select_n" and len(invars) == 3 and \
                invars[0].aval.dtype == np.bool_ and not effectful:
            rewritten = _select_as_arithmetic(eqn, invars, known, splats)
            if rewritten is not None:
                new_eqns.extend(rewritten)
                continue
        if prim.name == "transpose" and not _is_lit(invars[0]) and invars[0] in dots and \
                uses.get(invars[0], 0) == 1:
            swapped = _swap_dot(dots[invars[0]], eqn.params["permutation"])
            if swapped is not None:
                eqn = swapped._replace(outvars=eqn.outvars, source_info=eqn.source_info)
                invars = list(eqn.invars)
                prim = eqn.primitive
        if prim.name == "dot_general":
            dots[eqn.outvars[0]] = eqn._replace(invars=invars)
        if prim.name == "broadcast_in_dim":
            s = _scalar_of(invars[0], known, splats)
            if s is not None:
                splats[eqn.outvars[0]] = s
        elif prim.name == "neg":
            negs[eqn.outvars[0]] = invars[0]
        new_eqns.append(eqn._replace(invars=invars) if invars != eqn.invars else eqn)

    outvars = [read(v) for v in jaxpr.outvars]
    # Folded arrays that survive become constants of the program.
    constvars = list(jaxpr.constvars) + list(folded)
    constvals = list(consts) + list(folded.values())
    out = Jaxpr(constvars, jaxpr.invars, [v for v in outvars], new_eqns)
    out, _ = _dce_keep_literals(out)
    keep = set(out.constvars)
    constvals = [c for v, c in zip(constvars, constvals) if v in keep]
    return out, constvals


def _foldable_size(eqn, invars):
    """Fold small results, and results no larger than the biggest constant operand (a
    product with AD's identity seed, say): folding those never grows the program."""
    out = sum(v.aval.size for v in eqn.outvars)
    if out <= FOLD_MAX_SIZE:
        return True
    biggest = max((v.aval.size for v in invars if not _is_lit(v)), default=0)
    return out <= biggest and eqn.primitive.name in _FOLD_BIG


# Primitives worth evaluating at lowering time on big constants (one evaluation replaces
# one per call); elementwise chains on big constants are left to the kernels.
_FOLD_BIG = frozenset({"dot_general", "transpose", "reshape", "convert_element_type",
                       "broadcast_in_dim", "neg", "mul", "add", "sub"})


def _dce_keep_literals(jaxpr):
    # dce_jaxpr skips literal outvars when collecting the live set, which is what we want.
    return dce_jaxpr(jaxpr)


# ---------------------------------------------------------------------------------------------
# Fusion


class OpStep:
    """One equation run by its back end's library call or the primitive's impl."""

    __slots__ = ("eqn",)

    def __init__(self, eqn):
        self.eqn = eqn

    @property
    def invars(self):
        return [v for v in self.eqn.invars if not _is_lit(v)]

    @property
    def outvars(self):
        return list(self.eqn.outvars)

    def __repr__(self):
        return f"OpStep({self.eqn.primitive})"


class Cluster:
    """Equations fused into one kernel over the iteration shape ``shape``.

    After ``finalize``: ``loads`` lists (operand, view_shape) pairs: an external operand (a var
    or a Literal) seen through a rank-``len(shape)`` view in which broadcast dims have size 1;
    ``outputs`` the values that escape (full-shape values and reduction results), and
    ``alias`` maps a value computed by a broadcast to the load it reads."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.items = []            # (program index, eqn)
        self.reduce_outs = set()
        self.defined = set()
        self.sealed = False
        self.loads = []
        self.load_of = {}          # (operand key, view_shape) -> load index
        self.value_load = {}       # var -> load index (broadcast results)
        self.outputs = []

    @property
    def eqns(self):
        return [e for _, e in self.items]

    def add(self, idx, eqn):
        self.items.append((idx, eqn))
        for v in eqn.outvars:
            self.defined.add(v)
            if eqn.primitive.name in REDUCTIONS:
                self.reduce_outs.add(v)

    def absorb(self, other):
        self.items = sorted(self.items + other.items, key=lambda t: t[0])
        self.reduce_outs |= other.reduce_outs
        self.defined |= other.defined

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def _load(self, operand, view):
        key = (_operand_key(operand), view)
        i = self.load_of.get(key)
        if i is None:
            i = len(self.loads)
            self.loads.append((operand, view))
            self.load_of[key] = i
        return i

    def operand_ref(self, v, view=None):
        """How an equation of the cluster reads operand ``v``: ("val", var) for a value
        computed in the cluster, ("load", i) for an external operand."""
        if not _is_lit(v) and v in self.defined:
            if v in self.value_load:
                return ("load", self.value_load[v])
            return ("val", v)
        if view is None:
            shp = v.aval.shape
            view = (1,) * (len(self.shape) - len(shp)) + tuple(shp)
        return ("load", self._load(v, view))

    def finalize(self, escaping):
        n = len(self.shape)
        for _, eqn in self.items:
            if eqn.primitive.name == "broadcast_in_dim":
                x = eqn.invars[0]
                if not _is_lit(x) and x in self.defined:
                    continue
                expanded = [1] * n
                for src, dst in enumerate(eqn.params["broadcast_dimensions"]):
                    expanded[dst] = x.aval.shape[src]
                self.value_load[eqn.outvars[0]] = self._load(x, tuple(expanded))
        for _, eqn in self.items:
            if eqn.primitive.name == "broadcast_in_dim" and eqn.outvars[0] in self.value_load:
                continue
            for v in eqn.invars:
                self.operand_ref(v)
        self.outputs = [v for _, e in self.items for v in e.outvars
                        if v in escaping and type(v) is not core.DropVar]

    def __repr__(self):
        return (f"Cluster(shape={self.shape}, ops={[str(e.primitive) for e in self.eqns]}, "
                f"outputs={len(self.outputs)})")


def _iteration_shape(eqn):
    if eqn.primitive.name in REDUCTIONS:
        return eqn.invars[0].aval.shape
    return eqn.outvars[0].aval.shape


def fuse(jaxpr: Jaxpr, fusible, can_fuse=None):
    """Group the equations of ``jaxpr`` into steps (``Cluster`` and ``OpStep``), in an order
    that respects every data dependence.

    ``fusible``: primitive names that may join a cluster; ``can_fuse(eqn)`` an optional extra
    check by the back end (dtypes it supports, ...)."""
    steps = []
    open_clusters = []
    producer = {}

    def seal(c):
        if not c.sealed:
            c.sealed = True
            open_clusters.remove(c)
            steps.append(c)

    for idx, eqn in enumerate(jaxpr.eqns):
        name = eqn.primitive.name
        ok = (name in fusible and len(eqn.outvars) == 1 and not _has_subjaxpr(eqn)
              and (can_fuse is None or can_fuse(eqn)))
        if ok:
            shape = _iteration_shape(eqn)
            if len(shape) == 0 or 0 in shape:
                ok = False
        if not ok:
            for v in eqn.invars:
                c = producer.get(v) if not _is_lit(v) else None
                if c is not None and not c.sealed:
                    seal(c)
            steps.append(OpStep(eqn))
            continue
        joinable = []
        for v in eqn.invars:
            if _is_lit(v):
                continue
            c = producer.get(v)
            if c is None or c.sealed:
                continue
            if c.shape == shape and v not in c.reduce_outs and name != "broadcast_in_dim":
                if c not in joinable:
                    joinable.append(c)
            else:
                seal(c)
        joinable = [c for c in joinable if not c.sealed]
        if joinable:
            target = joinable[0]
            for other in joinable[1:]:
                target.absorb(other)
                other.sealed = True
                open_clusters.remove(other)
                for v in other.defined:
                    producer[v] = target
        else:
            target = next((c for c in open_clusters if c.shape == shape), None)
            if target is None:
                target = Cluster(shape)
                open_clusters.append(target)
        target.add(idx, eqn)
        for v in eqn.outvars:
            producer[v] = target
    for c in list(open_clusters):
        seal(c)

    # Values that leave their cluster: used by another step or returned.
    escaping = {v for v in jaxpr.outvars if not _is_lit(v)}
    for s in steps:
        if isinstance(s, OpStep):
            escaping.update(s.invars)
    for s in steps:
        if isinstance(s, Cluster):
            for _, e in s.items:
                for v in e.invars:
                    if not _is_lit(v) and v not in s.defined:
                        escaping.add(v)
    for s in steps:
        if isinstance(s, Cluster):
            s.finalize(escaping)
    return steps


def last_uses(steps, outvars):
    """var -> index of the last step reading it (len(steps) for program outputs)."""
    last = {}
    for i, s in enumerate(steps):
        if isinstance(s, OpStep):
            ins = s.invars
        else:
            ins = [op for op, _ in s.loads if not _is_lit(op)]
        for v in ins:
            last[v] = i
    for v in outvars:
        if not _is_lit(v):
            last[v] = len(steps)
    return last


# ---------------------------------------------------------------------------------------------
# Scan accumulators


def sink_scan_accumulators(jaxpr: Jaxpr, consts):
    """Move the accumulations of ``scan`` bodies out of the loop.

    A carry ``c`` that a body only ever updates as ``c + d`` (the gradient of a weight shared
    by every step is the typical one) ends as ``init + sum_t d_t``. When ``d`` is a
    ``dot_general`` of two per-step values, the sum over steps is one ``dot_general`` of their
    stacks contracting the step axis too (one large GEMM instead of ``length`` small ones);
    when ``d`` is a ``reduce_sum`` or anything else, its operand is stacked and reduced once
    after the loop. The per-step values become extra stacked outputs of the scan (or are the
    scan's own ``xs``). Returns (jaxpr, consts); programs without such scans are unchanged.
    The sum is taken in a different order than the loop's, so results match to rounding."""
    if not any(e.primitive.name == "scan" for e in jaxpr.eqns):
        return jaxpr, consts
    eqns = []
    changed = False
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            new = _sink_one(eqn)
            if new is not None:
                eqns.extend(new)
                changed = True
                continue
        eqns.append(eqn)
    if not changed:
        return jaxpr, consts
    return Jaxpr(jaxpr.constvars, jaxpr.invars, jaxpr.outvars, eqns), consts


def _sink_one(eqn):
    from .. import lax
    p = eqn.params
    closed = p["jaxpr"]
    body, bconsts = inline_calls(closed.jaxpr, closed.consts)
    body, bconsts = simplify(body, bconsts)
    nc, nk, length = p["num_consts"], p["num_carry"], p["length"]
    if length == 0 or len(body.invars) != len(closed.jaxpr.invars):
        return None
    b_in = body.invars
    consts_in, carry_in, xs_in = b_in[:nc], b_in[nc:nc + nk], b_in[nc + nk:]
    carry_out = body.outvars[:nk]
    uses = {}
    for e in body.eqns:
        for v in e.invars:
            if not _is_lit(v):
                uses.setdefault(v, []).append(e)
    out_count = {}
    for v in body.outvars:
        if not _is_lit(v):
            out_count[v] = out_count.get(v, 0) + 1
    producer = {v: e for e in body.eqns for v in e.outvars}
    invariant = set(consts_in) | set(body.constvars)
    # Loop-invariant values: computed from consts only.
    for e in body.eqns:
        if all(_is_lit(v) or v in invariant for v in e.invars):
            invariant.update(e.outvars)
    sinks = {}  # carry index -> (add eqn, term var)
    for j, (cin, cout) in enumerate(zip(carry_in, carry_out)):
        if _is_lit(cout) or cin.aval.dtype.kind not in "fc":
            continue
        u = uses.get(cin, [])
        if len(u) != 1 or out_count.get(cin, 0) or out_count.get(cout, 0) != 1:
            continue
        e = u[0]
        if e.primitive.name != "add" or e.outvars[0] is not cout or cout in uses:
            continue
        d = e.invars[1] if e.invars[0] is cin else e.invars[0]
        if _is_lit(d) or d is cin or d.aval.shape != cin.aval.shape or \
                d.aval.dtype != cin.aval.dtype or d in invariant:
            continue
        sinks[j] = (e, d)
    if not sinks:
        return None
    new_ys = []        # body vars stacked as extra outputs
    stacked = {}       # body var -> outer var holding its stack

    def stack_of(v):
        if v in stacked:
            return stacked[v]
        if v in xs_in:
            outer = eqn.invars[nc + nk + xs_in.index(v)]
            if _is_lit(outer):
                return None
        else:
            outer = Var(core.ShapedArray((length,) + tuple(v.aval.shape), v.aval.dtype))
            new_ys.append((v, outer))
        stacked[v] = outer
        return outer

    post = []
    src = eqn.source_info
    drop = set()
    for j, (add_eqn, d) in sinks.items():
        outer_out = eqn.outvars[j]
        init = eqn.invars[nc + j]
        drop.add(j)
        if type(outer_out) is core.DropVar:
            continue
        total = Var(d.aval.update(weak_type=False) if hasattr(d.aval, "update") else d.aval)
        pe = producer.get(d)
        done = False
        if pe is not None and pe.primitive.name == "dot_general" and \
                len(uses.get(d, [])) == 1 and d not in out_count:
            a, b = pe.invars
            (lc, rc), (lb, rb) = pe.params["dimension_numbers"]
            if not lb and not _is_lit(a) and not _is_lit(b) and \
                    a not in invariant and b not in invariant:
                sa, sb = stack_of(a), stack_of(b)
                if sa is not None and sb is not None:
                    dn = (((0,) + tuple(c + 1 for c in lc), (0,) + tuple(c + 1 for c in rc)),
                          ((), ()))
                    post.append(JaxprEqn(pe.primitive, [sa, sb],
                                         dict(pe.params, dimension_numbers=dn), [total], src))
                    done = True
        if not done and pe is not None and pe.primitive.name == "reduce_sum" and \
                len(uses.get(d, [])) == 1 and d not in out_count and \
                not _is_lit(pe.invars[0]) and pe.invars[0] not in invariant:
            sx = stack_of(pe.invars[0])
            if sx is not None:
                axes = (0,) + tuple(a + 1 for a in pe.params["axes"])
                post.append(JaxprEqn(pe.primitive, [sx], dict(axes=axes), [total], src))
                done = True
        if not done:
            sd = stack_of(d)
            if sd is None:
                return None
            post.append(JaxprEqn(lax.reduce_sum_p, [sd], dict(axes=(0,)), [total], src))
        post.append(JaxprEqn(lax.add_p, [init, total], {}, [outer_out], src))
    keep = [j for j in range(nk) if j not in drop]
    dropped_adds = {id(sinks[j][0]) for j in drop}
    new_body_eqns = [e for e in body.eqns if id(e) not in dropped_adds]
    new_invars = list(consts_in) + [carry_in[j] for j in keep] + list(xs_in)
    new_outvars = [carry_out[j] for j in keep] + list(body.outvars[nk:]) + \
        [v for v, _ in new_ys]
    nb = Jaxpr(body.constvars, new_invars, new_outvars, new_body_eqns)
    nb, _ = dce_jaxpr(nb)
    linear = tuple(p.get("linear", (False,) * len(eqn.invars)))
    new_linear = linear[:nc] + tuple(linear[nc + j] for j in keep) + linear[nc + nk:]
    params = dict(p, jaxpr=core.ClosedJaxpr(nb, bconsts), num_carry=len(keep),
                  linear=new_linear)
    invars = list(eqn.invars[:nc]) + [eqn.invars[nc + j] for j in keep] + \
        list(eqn.invars[nc + nk:])
    outvars = [eqn.outvars[j] for j in keep] + list(eqn.outvars[nk:]) + \
        [o for _, o in new_ys]
    return [eqn._replace(invars=invars, outvars=outvars, params=params)] + post
