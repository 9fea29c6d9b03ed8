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

Before fusion, ``prepare`` also rewrites ``scan`` equations: accumulating carries are summed
once after the loop (``sink_scan_accumulators``), and work that does not need the carry is
hoisted (``hoist_scan_invariants``): loop-invariant equations run once before the loop,
input-only ones for all steps at once (batched over the stacked xs), output-only ones once
after it on the stacked ys. The kernel-source helpers (``cast_src``, ``literal_src``,
``coalesce``, ...) and the Python loop drivers for control flow (``scan_runner``,
``cond_runner``, ``while_runner``) are shared by the CPU and CUDA back ends.

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
           "sink_scan_accumulators", "hoist_scan_invariants", "splice",
           "prepare", "kernel_can_fuse", "KERNEL_DTYPES", "FLOAT_ONLY",
           "scan_runner", "cond_runner", "while_runner", "dtype_name", "cast_src",
           "literal_src", "select_src", "promoted_dtype", "coalesce", "view_in_loop"]

# Elementwise primitives (by name) a fused kernel may contain, and the reductions that may end
# one. Back ends pass the subset they can generate code for.
ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "rem", "neg", "max", "min", "pow", "integer_pow", "exp", "log",
    "expm1", "log1p", "sin", "cos", "tanh", "sqrt", "logistic", "abs", "sign", "floor", "eq",
    "ne", "lt", "le", "gt", "ge", "and", "or", "not", "select_n", "convert_element_type"})
REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min"})
DEFAULT_FUSIBLE = ELEMENTWISE | REDUCTIONS | {"broadcast_in_dim"}

# The dtypes kernel generators handle, and the operations they compute in floats only.
KERNEL_DTYPES = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float32, np.float64))
FLOAT_ONLY = frozenset({"div", "rem", "pow", "exp", "log", "expm1", "log1p", "sin", "cos",
                        "tanh", "sqrt", "logistic", "floor"})


def kernel_can_fuse(eqn):
    """Whether a generated kernel (CPU or CUDA) can compute ``eqn``: every operand of a
    ``KERNEL_DTYPES`` dtype, float-only operations on floats, arithmetic and reductions not
    on booleans, boolean selects with two cases."""
    avals = [v.aval for v in eqn.invars] + [v.aval for v in eqn.outvars]
    if any(a.dtype not in KERNEL_DTYPES for a in avals):
        return False
    name = eqn.primitive.name
    out_dt = eqn.outvars[0].aval.dtype
    if name in FLOAT_ONLY and out_dt.kind != "f":
        return False
    if name in ("add", "sub", "mul", "neg", "max", "min", "abs", "sign") and out_dt.kind == "b":
        return False
    if name in REDUCTIONS and out_dt.kind == "b":
        return False
    if name == "select_n" and eqn.invars[0].aval.dtype.kind == "b" and len(eqn.invars) != 3:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Source helpers shared by the kernel generators (numba on the CPU, numba-cuda)


def dtype_name(dt):
    """numpy's name of a dtype as an attribute of the numpy module (``bool_`` for bool)."""
    dt = np.dtype(dt)
    return "bool_" if dt == np.bool_ else dt.name


def cast_src(expr, src, dst):
    """Source converting the scalar ``expr`` from dtype ``src`` to ``dst``."""
    src, dst = np.dtype(src), np.dtype(dst)
    if src == dst:
        return expr
    if dst.kind == "b":
        return f"({expr} != 0)"
    return f"_np.{dtype_name(dst)}({expr})"


def literal_src(val, dtype):
    """A source expression for a constant, exact for every float (inf and nan included)."""
    dtype = np.dtype(dtype)
    v = np.asarray(val).astype(dtype)[()]
    if dtype.kind == "f":
        return f"_np.{dtype_name(dtype)}(float.fromhex('{float(v).hex()}'))"
    if dtype.kind == "b":
        return "True" if bool(v) else "False"
    return f"_np.{dtype_name(dtype)}({int(v)})"


def select_src(which, cases, bool_predicate):
    """Source for ``select_n(which, *cases)`` on scalars (cases already cast)."""
    if bool_predicate:
        return f"({cases[1]} if {which} else {cases[0]})"
    expr = cases[-1]
    for i in range(len(cases) - 2, -1, -1):
        expr = f"({cases[i]} if {which} == {i} else {expr})"
    return expr


def promoted_dtype(avals):
    from .. import dtypes
    return dtypes.promote_avals_dtype(avals)[0]


def coalesce(cluster):
    """Merge adjacent dims of a cluster's iteration space that every load and reduction
    treats alike, dropping size-1 dims. Returns (groups, loop_shape) where groups lists the
    original dims of each loop dim (both empty when every dim has size 1)."""
    shape = cluster.shape
    red = [set(e.params["axes"]) for e in cluster.eqns if e.primitive.name in REDUCTIONS]

    def sig(d):
        return (tuple(view[d] == 1 for _, view in cluster.loads),
                tuple(d in r for r in red))

    groups = []
    for d in range(len(shape)):
        if shape[d] == 1:
            continue
        if groups and sig(groups[-1][-1]) == sig(d):
            groups[-1].append(d)
        else:
            groups.append([d])
    return groups, tuple(int(np.prod([shape[d] for d in g], dtype=np.int64)) for g in groups)


def view_in_loop(view, groups):
    """A load's view shape in the coalesced loop dims."""
    return tuple(int(np.prod([view[d] for d in g], dtype=np.int64)) for g in groups)


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


def splice(closed, args, out_eqns, constvars, constvals):
    """Append the equations of ``closed`` applied to the atoms ``args`` to ``out_eqns``, with
    fresh variables (its constants are appended to ``constvars``/``constvals``). Returns the
    atoms holding its outputs."""
    inner = closed.jaxpr
    sub = {}
    for cv, val in zip(inner.constvars, closed.consts):
        nv = Var(cv.aval)
        constvars.append(nv)
        constvals.append(val)
        sub[cv] = nv
    sub.update(zip(inner.invars, args))
    _inline_into(inner.eqns, sub, out_eqns, constvars, constvals, rename=True)
    return [iv if _is_lit(iv) else sub.get(iv, iv) for iv in inner.outvars]


def _inline_into(src_eqns, env, out_eqns, constvars, constvals, rename):
    for eqn in src_eqns:
        invars = [v if _is_lit(v) else env.get(v, v) for v in eqn.invars]
        if eqn.primitive.name in CALL_PRIMITIVES and "jaxpr" in eqn.params:
            results = splice(eqn.params["jaxpr"], invars, out_eqns, constvars, constvals)
            for ov, r in zip(eqn.outvars, results):
                if type(ov) is not core.DropVar:
                    env[ov] = r
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
        add_a = bool(a != 0 or d == 1 and out.aval.weak_type)
        # Exact down to the sign of zero, computed as the equations below will: select(p, 0.0,
        # -0.0) (numpy's copysign(0.0, x), remainder's zero) is not p * -0.0, which is -0.0
        # for both cases, and -0.0 + 0.0 is +0.0.
        for p, want in ((0, a), (1, b)):
            got = dt.type(p) if d == 1 else dt.type(p) * d
            if add_a:
                got = got + a
            if got.tobytes() != want.tobytes():
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
    if add_a:
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


def prepare(jaxpr: Jaxpr, consts):
    """The program-level passes every back end runs before fusion: inline calls, simplify,
    sink scan accumulators and hoist loop-independent scan work (each followed by another
    simplification when it changed something). Returns (jaxpr, consts)."""
    jaxpr, consts = inline_calls(jaxpr, consts)
    jaxpr, consts = simplify(jaxpr, consts)
    n_eqns = len(jaxpr.eqns)
    jaxpr, consts = sink_scan_accumulators(jaxpr, consts)
    if len(jaxpr.eqns) != n_eqns:  # fold the zero initial values of sunk accumulators
        jaxpr, consts = simplify(jaxpr, consts)
    hoisted = hoist_scan_invariants(jaxpr, consts)
    if hoisted[0] is not jaxpr:
        jaxpr, consts = simplify(*hoisted)
    return jaxpr, consts


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


# ---------------------------------------------------------------------------------------------
# Scan bodies: work that does not depend on the carry leaves the loop


def hoist_scan_invariants(jaxpr: Jaxpr, consts):
    """Move the work of ``scan`` bodies that does not need the loop out of it.

    * Loop-invariant equations (reading only the scan's constants) run once before the loop;
      their results enter the body as new constants.
    * Input-only equations (reading the per-step ``xs`` and constants, not the carry) run for
      every step at once before the loop, batched over the stacked ``xs`` (``x_t @ W`` for all
      ``t`` is one large matrix product); their results enter the body as new ``xs``.
    * Output-only equations (reading values the loop stacks anyway, whose results are only
      stacked, never carried) run once after the loop on the stacks (``h_t @ v`` for all ``t``).

    The batched forms come from the batching rules (``batch_jaxpr``), so every primitive with
    a batching rule can move. Broadcasts whose readers all stay in the loop stay with them
    (inside the loop they are free views). Sums ``(a + b) + c`` in the loop, with ``b`` and
    ``c`` computable before it, are regrouped as ``a + (b + c)`` so that ``b + c`` moves too;
    results then match the loop to rounding. Returns (jaxpr, consts); programs without scans
    are returned as they are."""
    if not any(e.primitive.name == "scan" for e in jaxpr.eqns):
        return jaxpr, consts
    constvars, constvals = list(jaxpr.constvars), list(consts)
    env = {}
    eqns = []
    changed = False

    def read(v):
        return v if _is_lit(v) else env.get(v, v)

    for eqn in jaxpr.eqns:
        if env:
            eqn = eqn._replace(invars=[read(v) for v in eqn.invars])
        if eqn.primitive.name == "scan":
            new = _hoist_one(eqn, eqns, constvars, constvals, env)
            if new:
                changed = True
                continue
        eqns.append(eqn)
    if not changed:
        return jaxpr, consts
    return Jaxpr(constvars, jaxpr.invars, [read(v) for v in jaxpr.outvars], eqns), constvals


def _movable(eqn):
    return eqn.primitive not in effectful_primitives and not _has_subjaxpr(eqn)


def _regroup_sums(body, ready):
    """``add(add(a, b), c)`` -> ``add(a, add(b, c))`` where ``b`` and ``c`` are ``ready``
    (computable before the loop) and ``a`` is not, so ``add(b, c)`` can move out. Only for
    float values of one dtype where the inner sum has the outer's shape (no new broadcast)."""
    producer = {}
    uses = {}
    for e in body.eqns:
        for v in e.outvars:
            producer[v] = e
        for v in e.invars:
            if not _is_lit(v):
                uses[v] = uses.get(v, 0) + 1
    for v in body.outvars:
        if not _is_lit(v):
            uses[v] = uses.get(v, 0) + 1
    out, changed = [], False
    replaced = {}
    for e in body.eqns:
        if e.primitive.name == "add" and len(e.invars) == 2:
            new = _regroup_one(e, producer, uses, ready, replaced)
            if new is not None:
                out.extend(new)
                # A later sum reading this one must regroup the rewritten equation (the
                # original's inner sum is gone): ((a + b) + c) + d chains.
                producer[e.outvars[0]] = new[-1]
                changed = True
                continue
        out.append(e)
    if not changed:
        return body
    eqns = [e for e in out if id(e) not in replaced]
    return Jaxpr(body.constvars, body.invars, body.outvars, eqns)


def _regroup_one(e, producer, uses, ready, replaced):
    from .. import lax
    out = e.outvars[0]
    dt = out.aval.dtype
    if dt.kind != "f":
        return None
    for u, c in (e.invars, e.invars[::-1]):
        if _is_lit(u) or not (_is_lit(c) or c in ready) or uses.get(u) != 1:
            continue
        inner = producer.get(u)
        if inner is None or inner.primitive.name != "add" or id(inner) in replaced:
            continue
        if u.aval.shape != out.aval.shape or u.aval.dtype != dt:
            continue
        if not _is_lit(c) and c.aval.dtype != dt:
            continue
        for a, b in (inner.invars, inner.invars[::-1]):
            if _is_lit(b) or b not in ready or (not _is_lit(a) and a in ready):
                continue
            if b.aval.shape != u.aval.shape or b.aval.dtype != dt:
                continue
            t = Var(u.aval)
            replaced[id(inner)] = True
            ready.add(t)
            return [JaxprEqn(lax.add_p, [b, c], {}, [t], inner.source_info),
                    JaxprEqn(lax.add_p, [a, t], {}, [out], e.source_info)]
    return None


def _hoist_one(eqn, eqns, constvars, constvals, env):
    """Hoist out of one scan equation, appending the equations that replace it to ``eqns``.
    Returns whether anything moved (``eqns`` is untouched when not)."""
    from ..interpreters import batching
    p = eqn.params
    closed = p["jaxpr"]
    nc, nk, length = p["num_consts"], p["num_carry"], p["length"]
    if length == 0:
        return False
    body, bconsts = inline_calls(closed.jaxpr, closed.consts)
    body, bconsts = simplify(body, bconsts)
    if len(body.invars) != len(closed.jaxpr.invars):
        return False
    b_in = body.invars
    consts_in, carry_in, xs_in = list(b_in[:nc]), list(b_in[nc:nc + nk]), list(b_in[nc + nk:])
    o_consts, o_init, o_xs = (list(eqn.invars[:nc]), list(eqn.invars[nc:nc + nk]),
                              list(eqn.invars[nc + nk:]))
    invariant = set(consts_in) | set(body.constvars)
    ready = invariant | set(xs_in)
    before = set(ready)
    for e in body.eqns:
        if _movable(e) and all(_is_lit(u) or u in before for u in e.invars):
            before.update(e.outvars)
    body = _regroup_sums(body, before)
    # Classify: 'inv' (constants only) or 'in' (xs and constants) equations, in order.
    kind = {}
    for i, e in enumerate(body.eqns):
        if not _movable(e):
            continue
        ins = [v for v in e.invars if not _is_lit(v)]
        if all(v in invariant for v in ins):
            kind[i] = "inv"
            invariant.update(e.outvars)
        elif all(v in ready for v in ins):
            kind[i] = "in"
            ready.update(e.outvars)
    ready |= invariant
    readers = {}
    for i, e in enumerate(body.eqns):
        for v in e.invars:
            if not _is_lit(v):
                readers.setdefault(v, []).append(i)
    body_outs = {v for v in body.outvars if not _is_lit(v)}
    # Broadcasts read only inside the loop stay there (views, not materialised stacks).
    for i in sorted(kind, reverse=True):
        e = body.eqns[i]
        if e.primitive.name == "broadcast_in_dim" and e.outvars[0] not in body_outs and all(
                j not in kind for j in readers.get(e.outvars[0], [])):
            del kind[i]
    hoisted_vals = {v for i in kind for v in body.eqns[i].outvars}
    inv_vals = {v for i, k in kind.items() if k == "inv" for v in body.eqns[i].outvars}
    remaining = [e for i, e in enumerate(body.eqns) if i not in kind]
    needed = []          # hoisted values read by the loop (or returned by it)
    seen = set()
    for e in remaining:
        for v in e.invars:
            if not _is_lit(v) and v in hoisted_vals and v not in seen:
                seen.add(v)
                needed.append(v)
    ys = body.outvars[nk:]
    # A y that is an input-only value needs no loop: its stack is the batched value itself.
    y_direct = {j for j, v in enumerate(ys) if not _is_lit(v) and v in hoisted_vals and
                v not in inv_vals}
    for j, v in enumerate(body.outvars):
        if _is_lit(v) or v not in hoisted_vals or v in seen:
            continue
        if j >= nk and (j - nk) in y_direct:
            continue
        seen.add(v)
        needed.append(v)
    direct_vals = [ys[j] for j in sorted(y_direct) if ys[j] not in seen]
    pre_out = needed + [v for v in dict.fromkeys(direct_vals)]
    new_eqns = []
    moved = bool(kind)
    if pre_out:
        sub = Jaxpr(list(body.constvars), consts_in + xs_in, pre_out,
                    [body.eqns[i] for i in sorted(kind)])
        sub_closed = core.ClosedJaxpr(sub, bconsts)
        dsts = [None if v in inv_vals else 0 for v in pre_out]
        if any(d == 0 for d in dsts):
            sub_closed, _ = batching.batch_jaxpr(sub_closed, length,
                                                 [None] * nc + [0] * len(xs_in), dsts)
        pre_res = dict(zip(pre_out, splice(sub_closed, o_consts + o_xs, new_eqns, constvars,
                                           constvals)))
    else:
        pre_res = {}
    new_consts = [v for v in needed if v in inv_vals]
    new_xs = [v for v in needed if v not in inv_vals]
    # The loop that is left.
    outvars = list(body.outvars)
    y_keep = [j for j in range(len(ys)) if j not in y_direct]
    y_outer = {}         # index of a y -> atom holding its stack after the rewrite
    for j in y_direct:
        y_outer[j] = pre_res[ys[j]]
    loop_b = Jaxpr(list(body.constvars), consts_in + new_consts + carry_in + xs_in + new_xs,
                   outvars[:nk] + [ys[j] for j in y_keep], remaining)
    loop_consts = o_consts + [pre_res[v] for v in new_consts]
    loop_xs = o_xs + [pre_res[v] for v in new_xs]
    loop_outvars = list(eqn.outvars[:nk]) + [eqn.outvars[nk + j] for j in y_keep]
    # Output-only equations move after the loop.
    loop_b, loop_consts, loop_xs, loop_outvars, post = _sink_outputs(
        loop_b, bconsts, len(loop_consts), nk, length, loop_consts, loop_xs, loop_outvars,
        constvars, constvals)
    if post is not None:
        moved = True
    if not moved:
        return False
    # Inputs the loop no longer reads are dropped.
    loop_b, _ = dce_jaxpr(loop_b)
    bconsts_kept = [c for v, c in zip(body.constvars, bconsts) if v in set(loop_b.constvars)]
    read_vars = {v for e in loop_b.eqns for v in e.invars if not _is_lit(v)}
    read_vars.update(v for v in loop_b.outvars if not _is_lit(v))
    nc2 = len(loop_consts)
    b_in = loop_b.invars
    keep_c = [i for i in range(nc2) if b_in[i] in read_vars]
    keep_x = [i for i in range(len(loop_xs)) if b_in[nc2 + nk + i] in read_vars]
    final_in = [b_in[i] for i in keep_c] + list(b_in[nc2:nc2 + nk]) + \
        [b_in[nc2 + nk + i] for i in keep_x]
    loop_b = Jaxpr(loop_b.constvars, final_in, loop_b.outvars, loop_b.eqns)
    linear = tuple(p.get("linear", (False,) * len(eqn.invars)))
    lin_c = list(linear[:nc]) + [False] * (nc2 - nc)
    lin_x = list(linear[nc + nk:]) + [False] * (len(loop_xs) - len(o_xs))
    new_linear = tuple(lin_c[i] for i in keep_c) + tuple(linear[nc:nc + nk]) + \
        tuple(lin_x[i] for i in keep_x)
    params = dict(p, jaxpr=core.ClosedJaxpr(loop_b, bconsts_kept), num_consts=len(keep_c),
                  linear=new_linear)
    invars = [loop_consts[i] for i in keep_c] + o_init + [loop_xs[i] for i in keep_x]
    eqns.extend(new_eqns)
    eqns.append(eqn._replace(invars=invars, outvars=loop_outvars, params=params))
    if post is not None:
        post_eqns, post_map = post
        eqns.extend(post_eqns)
        env.update(post_map)
    for j, atom in y_outer.items():
        ov = eqn.outvars[nk + j]
        if type(ov) is not core.DropVar:
            env[ov] = atom
    return True


# Equations that are cheap per element: not worth a per-step copy of their operands.
_LAYOUT_ONLY = ELEMENTWISE | {"broadcast_in_dim", "reshape", "transpose", "squeeze",
                              "expand_dims", "slice", "concatenate", "pad", "iota"}


def _output_only(body, stacked, unbatched, carry_out, loop_values):
    """Indices of the equations of ``body`` that can run after the loop: their inputs are
    stacked (or, with ``loop_values``, any value of the loop, to be stacked), constants, or
    results of such equations; their results are only stacked or read by such equations."""
    nc_vars = set(body.invars) - unbatched - set(stacked)
    avail = set(stacked) | unbatched
    if loop_values:
        avail |= nc_vars | {v for e in body.eqns for v in e.outvars}
    cand = []
    for i, e in enumerate(body.eqns):
        if not _movable(e):
            continue
        ins = [v for v in e.invars if not _is_lit(v)]
        if all(v in avail for v in ins) and any(v not in unbatched for v in ins):
            cand.append(i)
            avail.update(e.outvars)
    cand = set(cand)
    readers = {}
    for i, e in enumerate(body.eqns):
        for v in e.invars:
            if not _is_lit(v):
                readers.setdefault(v, set()).add(i)
    producer = {v: i for i, e in enumerate(body.eqns) for v in e.outvars}
    changed = True
    while changed:
        changed = False
        for i in sorted(cand):
            e = body.eqns[i]
            bad = any(v in carry_out or (readers.get(v, set()) - cand) for v in e.outvars)
            if not loop_values:
                bad = bad or any(not _is_lit(v) and v in producer and producer[v] not in cand
                                 and v not in stacked for v in e.invars)
            if bad:
                cand.discard(i)
                changed = True
    return cand


def _sink_outputs(body, bconsts, nc, nk, length, o_consts, o_xs, o_outvars, constvars,
                  constvals):
    """The output-only part of ``body`` (see ``hoist_scan_invariants``) as equations after the
    loop. Returns (body, consts, xs, outvars, post) with post = None when nothing moves, else
    (equations to run after the scan, {outer var: atom} for the ys they compute)."""
    from ..interpreters import batching
    b_in = body.invars
    consts_in, xs_in = b_in[:nc], b_in[nc + nk:]
    ys = body.outvars[nk:]
    carry_out = {v for v in body.outvars[:nk] if not _is_lit(v)}
    # Values whose stack exists outside the loop: xs, and ys.
    stacked = {}
    for v, o in zip(xs_in, o_xs):
        stacked.setdefault(v, ("x", o))
    for j, v in enumerate(ys):
        if not _is_lit(v):
            stacked.setdefault(v, ("y", j))
    unbatched = set(consts_in) | set(body.constvars)
    cand = _output_only(body, stacked, unbatched, carry_out, loop_values=True)
    new_stacks = {v for i in cand for v in body.eqns[i].invars
                  if not _is_lit(v) and v not in stacked and v not in unbatched} - \
        {v for i in cand for v in body.eqns[i].outvars}
    # Stacking a loop value costs a copy per step: worth it to move a product or a
    # reduction, not for elementwise work alone.
    if new_stacks and not any(body.eqns[i].primitive.name not in _LAYOUT_ONLY for i in cand):
        cand = _output_only(body, stacked, unbatched, carry_out, loop_values=False)
        new_stacks = set()
    if not cand:
        return body, o_consts, o_xs, o_outvars, None
    post_vals = {v for i in cand for v in body.eqns[i].outvars}
    y_post = [j for j, v in enumerate(ys) if not _is_lit(v) and v in post_vals]
    if not y_post:
        return body, o_consts, o_xs, o_outvars, None
    o_outvars = list(o_outvars)
    new_stacks = [v for v in dict.fromkeys(v for i in sorted(cand) for v in body.eqns[i].invars)
                  if v in new_stacks]
    for v in new_stacks:
        stacked[v] = ("y", len(ys))
        ys = ys + [v]
        o_outvars.append(Var(core.ShapedArray((length,) + tuple(v.aval.shape), v.aval.dtype)))
    body = Jaxpr(body.constvars, body.invars, list(body.outvars) + new_stacks, body.eqns)
    outs = list(dict.fromkeys(ys[j] for j in y_post))
    ins = []
    for i in sorted(cand):
        for v in body.eqns[i].invars:
            if not _is_lit(v) and v not in post_vals and v not in ins:
                ins.append(v)
    in_dims = [None if v in unbatched and v not in stacked else 0 for v in ins]
    # Outer atoms for the inputs: constants, stacked xs, or the loop's own stacked ys (given
    # an outer variable when the original program dropped them).
    args = []
    for v, d in zip(ins, in_dims):
        if d is None:
            if v in body.constvars:
                nv = Var(v.aval)
                constvars.append(nv)
                constvals.append(bconsts[body.constvars.index(v)])
                args.append(nv)
            else:
                args.append(o_consts[consts_in.index(v)])
            continue
        kind, ref = stacked[v]
        if kind == "x":
            args.append(ref)
        else:
            ov = o_outvars[nk + ref]
            if type(ov) is core.DropVar:
                ov = Var(ov.aval)
                o_outvars[nk + ref] = ov
            args.append(ov)
    sub = Jaxpr([], ins, outs, [body.eqns[i] for i in sorted(cand)])
    sub_closed, _ = batching.batch_jaxpr(core.ClosedJaxpr(sub, []), length, in_dims,
                                         [0] * len(outs))
    post_eqns = []
    res = dict(zip(outs, splice(sub_closed, args, post_eqns, constvars, constvals)))
    post_map = {}
    for j in y_post:
        ov = o_outvars[nk + j]
        if type(ov) is not core.DropVar:
            post_map[ov] = res[ys[j]]
    keep = [j for j in range(len(ys)) if j not in set(y_post)]
    new_body = Jaxpr(body.constvars, body.invars, body.outvars[:nk] + [ys[j] for j in keep],
                     [e for i, e in enumerate(body.eqns) if i not in cand])
    new_outvars = o_outvars[:nk] + [o_outvars[nk + j] for j in keep]
    return new_body, o_consts, o_xs, new_outvars, (post_eqns, post_map)


# ---------------------------------------------------------------------------------------------
# Control flow run from Python: the loops every back end shares, around lowered bodies


def _same(x):
    return x


def scan_runner(eqn, body, fit, asarray, empty, plain=_same, wrap=None):
    """A callable running the ``scan`` equation ``eqn`` as a Python loop over ``body`` (its
    lowered body). Back-end hooks: ``fit(outs, avals)`` gives carries their declared dtypes,
    ``asarray`` brings an xs operand to the back end, ``empty(shape, dtype)`` allocates a ys
    stack, ``plain`` unwraps loop state, ``wrap`` (if given) wraps each finished stack."""
    p = eqn.params
    closed = p["jaxpr"]
    nc, nk, length, reverse = p["num_consts"], p["num_carry"], p["length"], p["reverse"]
    carry_avals = closed.in_avals[nc:nc + nk]
    y_avals = closed.out_avals[nk:]

    def run(*args):
        consts, carry = args[:nc], list(args[nc:nc + nk])
        xs = [asarray(x) for x in args[nc + nk:]]
        ys = [empty((length,) + tuple(a.shape), a.dtype) for a in y_avals]
        for i in (range(length - 1, -1, -1) if reverse else range(length)):
            outs = body(*consts, *carry, *[x[i] for x in xs])
            carry = [plain(c) for c in fit(outs[:nk], carry_avals)]
            for buf, y in zip(ys, outs[nk:]):
                buf[i] = plain(y)
        return carry + ([wrap(y) for y in ys] if wrap is not None else ys)
    return run


def cond_runner(eqn, subs, fit):
    """A callable running the ``cond`` equation ``eqn`` with its lowered branches ``subs``
    (an out-of-range index is clamped, as in ``lax.switch``)."""
    branches = eqn.params["branches"]
    avals = [b.out_avals for b in branches]
    last = len(branches) - 1

    def run(index, *ops):
        i = int(index)  # one scalar to the host picks the branch
        i = 0 if i < 0 else (last if i > last else i)
        return fit(subs[i](*ops), avals[i])
    return run


def while_runner(eqn, cond, body, fit, plain=_same):
    """A callable running the ``while`` equation ``eqn`` with its lowered predicate ``cond``
    and body ``body`` (at most ``max_steps`` iterations when that is set)."""
    p = eqn.params
    cn, bn, max_steps = p["cond_nconsts"], p["body_nconsts"], p["max_steps"]
    carry_avals = p["body_jaxpr"].in_avals[bn:]

    def run(*args):
        cc, bc, carry = args[:cn], args[cn:cn + bn], list(args[cn + bn:])
        steps = 0
        while max_steps is None or steps < max_steps:
            if not bool(cond(*cc, *carry)[0]):  # the predicate is the one host round trip
                break
            carry = [plain(c) for c in fit(body(*bc, *carry), carry_avals)]
            steps += 1
        return carry
    return run
