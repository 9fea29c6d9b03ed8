"""The CPU back end: a jaxpr becomes one generated Python driver calling fused kernels.

``lower(closed_jaxpr)`` runs the shared passes of ``plan.py`` and then, for each step:

* a ``Cluster`` of elementwise work is generated as one kernel, in one of two styles chosen
  from its contents and size:
  - **numba**: a loop nest compiled by ``numba.njit`` (``parallel=True`` with ``prange`` on the
    outer loop when the work is large and numba has threads). Broadcast operands are indexed
    through size-1 views (no materialised broadcast), adjacent dims with the same broadcast
    pattern are merged into one loop, reductions accumulate in registers when their axes are
    innermost. Used for arithmetic (no transcendental functions).
  - **blocked**: a chain of numpy ufuncs with ``out=`` buffers run block by block (blocks
    small enough to stay in L2). numba's ``sin``/``exp``/``tanh`` are scalar libm calls here,
    much slower than numpy's SIMD loops, so transcendental-heavy clusters go this way.
  Small clusters, and transcendental ones the blocked style cannot take (broadcast operands,
  partial reductions), run as plain impl calls: fusion must never lose to numpy.
* every other equation calls its primitive's numpy impl (``dot_general`` is numpy's BLAS).

numba kernels are written to module files in the cache dir (``cache.py``) and compiled with
``cache=True``, so a second process loads them from disk; equal clusters share one kernel.
numba itself is imported only when a program has a cluster large enough to need it.

>>> import functrax, functrax.numpy as fnp
>>> from functrax.lowering import numba_cpu
>>> exe = numba_cpu.lower(functrax.make_jaxpr(lambda x: x * 2.0 + 1.0)(fnp.ones(3)))
>>> exe(fnp.ones(3))[0].tolist()
[3.0, 3.0, 3.0]
"""
from __future__ import annotations

import functools
import os
import re
import time

import numpy as np

from .. import core
from ..core import Literal
from . import cache, plan
from .plan import OpStep

__all__ = ["lower", "Executable", "counters", "NUMBA_MIN_SIZE", "NUMBA_MIN_OPS",
           "BLOCKED_MIN_SIZE",
           "PARALLEL_MIN_SIZE", "TRANSCENDENTAL", "lowering_rules"]

NUMBA_MIN_SIZE = int(os.environ.get("FUNCTRAX_NUMBA_MIN_SIZE", 1 << 17))
BLOCKED_MIN_SIZE = int(os.environ.get("FUNCTRAX_BLOCKED_MIN_SIZE", 1 << 12))
PARALLEL_MIN_SIZE = int(os.environ.get("FUNCTRAX_PARALLEL_MIN_SIZE", 1 << 20))
NUMBA_MIN_OPS = int(os.environ.get("FUNCTRAX_NUMBA_MIN_OPS", 4))
BLOCK_BYTES = 1 << 19  # per temporary; a handful of them stay in L2/L3 (measured on W4)

TRANSCENDENTAL = frozenset({"exp", "log", "expm1", "log1p", "sin", "cos", "tanh", "logistic",
                            "pow"})

# Lowering rules for primitives that need more than their impl (control flow with bodies):
# name -> rule(eqn, lower_sub) returning a Python callable taking the equation's inputs and
# returning the list of its outputs. ``lower_sub(closed_jaxpr)`` compiles a body.
lowering_rules: dict = {}

# Process-wide kernel accounting (jit objects keep their own share).
counters = {"numba_kernels_built": 0, "numba_kernels_reused": 0, "blocked_kernels": 0,
            "numba_compiles": 0, "numba_disk_hits": 0}


_dt_name = plan.dtype_name


# ---------------------------------------------------------------------------------------------
# What may be fused: the same operations and dtypes as every kernel generator

_can_fuse = plan.kernel_can_fuse


# ---------------------------------------------------------------------------------------------
# Scalar code for the numba kernels


_cast = plan.cast_src
_promoted = plan.promoted_dtype


def _wrap_int(expr, dtype):
    # numba computes integer arithmetic at 64 bits; numpy wraps at the array's width.
    return f"_np.{_dt_name(dtype)}({expr})"


_BINOPS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_CMPOPS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_UNARY_NP = {"exp": "exp", "log": "log", "expm1": "expm1", "log1p": "log1p", "sin": "sin",
             "cos": "cos", "tanh": "tanh", "sqrt": "sqrt", "floor": "floor", "sign": "sign"}


def _scalar_expr(eqn, args, in_avals):
    """Numba source for one elementwise equation on scalar operands ``args``."""
    name = eqn.primitive.name
    out = eqn.outvars[0].aval.dtype
    p = eqn.params
    conv = [_cast(a, av.dtype, out) for a, av in zip(args, in_avals)]
    if name in _BINOPS:
        expr = f"({conv[0]} {_BINOPS[name]} {conv[1]})"
        return expr if out.kind == "f" else _wrap_int(expr, out)
    if name == "rem":
        return f"_np.fmod({conv[0]}, {conv[1]})"
    if name == "neg":
        return f"(-{conv[0]})" if out.kind == "f" else _wrap_int(f"(-{conv[0]})", out)
    if name in ("max", "min"):
        if out.kind == "f":
            return f"_f{name}({conv[0]}, {conv[1]})"
        return f"{name}({conv[0]}, {conv[1]})"
    if name == "pow":
        return f"({conv[0]} ** {conv[1]})"
    if name == "integer_pow":
        y = int(p["y"])
        x = conv[0]
        if y == 0:
            return f"_np.{_dt_name(out)}(1)"
        k = abs(y)
        body = "*".join([x] * k) if k <= 4 else f"({x} ** {k})"
        body = f"({body})"
        if y < 0:
            return f"(_np.{_dt_name(out)}(1) / {body})"
        return body if out.kind == "f" else _wrap_int(body, out)
    if name in _UNARY_NP:
        return f"_np.{_UNARY_NP[name]}({conv[0]})"
    if name == "logistic":
        return f"_logistic({conv[0]})"
    if name == "abs":
        return f"abs({conv[0]})" if out.kind == "f" else _wrap_int(f"abs({conv[0]})", out)
    if name in _CMPOPS:
        pd = _promoted(in_avals)
        a = [_cast(x, av.dtype, pd) for x, av in zip(args, in_avals)]
        return f"({a[0]} {_CMPOPS[name]} {a[1]})"
    if name in ("and", "or", "not"):
        a = [_cast(x, av.dtype, out) for x, av in zip(args, in_avals)]
        if out.kind == "b":
            return {"and": f"({a[0]} & {a[1]})", "or": f"({a[0]} | {a[1]})"}.get(
                name, f"(not {a[0]})")
        op = {"and": f"({a[0]} & {a[1]})", "or": f"({a[0]} | {a[1]})"}.get(name, f"(~{a[0]})")
        return _wrap_int(op, out)
    if name == "select_n":
        which, cases = args[0], [_cast(c, av.dtype, out) for c, av in
                                 zip(args[1:], in_avals[1:])]
        return plan.select_src(which, cases, in_avals[0].dtype.kind == "b")
    if name == "convert_element_type":
        return _cast(args[0], in_avals[0].dtype, p["new_dtype"])
    raise NotImplementedError(name)  # _can_fuse and ELEMENTWISE keep this unreachable


_KERNEL_PRELUDE = '''\
import numpy as _np
import numba as _nb


@_nb.njit(cache=True, nogil=True, inline="always")
def _fmax(a, b):
    if a != a or a > b:
        return a
    return b


@_nb.njit(cache=True, nogil=True, inline="always")
def _fmin(a, b):
    if a != a or a < b:
        return a
    return b


@_nb.njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _logistic(a):
    e = _np.exp(-abs(a))
    if a >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


'''


_literal_src = plan.literal_src
_coalesce = plan.coalesce
_view_in_loop = plan.view_in_loop


def _numba_kernel_source(cluster, groups, loop_shape, parallel):
    """(source, arg plan) of the numba kernel for ``cluster``."""
    m = len(loop_shape)
    idx = [f"i{k}" for k in range(m)]
    lines = []
    arg_names = [f"n{k}" for k in range(m)]
    load_exprs = {}
    load_args = []  # (load index, kind) kind: 'array' | 'scalar'
    const_lines = []
    for li, (op, view) in enumerate(cluster.loads):
        if type(op) is Literal:
            # numba freezes module globals into the code as constants.
            cname = f"_c{len(const_lines)}"
            const_lines.append(f"{cname} = {_literal_src(op.val, op.aval.dtype)}")
            load_exprs[li] = cname
            continue
        lv = _view_in_loop(view, groups)
        if all(s == 1 for s in lv):
            load_exprs[li] = f"s{li}"
            arg_names.append(f"s{li}")
            load_args.append((li, "scalar", lv))
        else:
            sub = ", ".join(idx[k] if lv[k] != 1 else "0" for k in range(m))
            load_exprs[li] = f"l{li}[{sub}]"
            arg_names.append(f"l{li}")
            load_args.append((li, "array", lv))
    val_names = {}
    body = []
    reductions = []  # (out var, kind, reduced loop dims, acc name, init, acc dtype)
    for j, eqn in enumerate(cluster.eqns):
        name = eqn.primitive.name
        if name == "broadcast_in_dim" and eqn.outvars[0] in cluster.value_load:
            val_names[eqn.outvars[0]] = load_exprs[cluster.value_load[eqn.outvars[0]]]
            continue
        args = []
        for v in eqn.invars:
            kind, ref = cluster.operand_ref(v)
            args.append(val_names[ref] if kind == "val" else load_exprs[ref])
        in_avals = [v.aval for v in eqn.invars]
        if name in plan.REDUCTIONS:
            axes = set(eqn.params["axes"])
            red_loop = [k for k, g in enumerate(groups) if any(d in axes for d in g)]
            dt = eqn.outvars[0].aval.dtype
            acc_dt = np.dtype(np.float64) if dt.kind == "f" else (
                np.dtype(np.int64) if dt.kind == "i" else np.dtype(np.uint64))
            if name == "reduce_sum":
                init = "0"
            elif name == "reduce_max":
                init = "-_np.inf" if dt.kind == "f" else str(np.iinfo(dt).min)
            else:
                init = "_np.inf" if dt.kind == "f" else str(np.iinfo(dt).max)
            r = len(reductions)
            reductions.append((eqn.outvars[0], name, red_loop, f"acc{r}", init, acc_dt, args[0],
                               dt, eqn.invars[0].aval.dtype))
            continue
        vn = f"v{j}"
        body.append(f"{vn} = {_scalar_expr(eqn, args, in_avals)}")
        val_names[eqn.outvars[0]] = vn
    out_args = []
    for oi, v in enumerate(cluster.outputs):
        if v in cluster.reduce_outs:
            continue
        arg_names.append(f"o{oi}")
        src = val_names[v]
        out_args.append((oi, v))
        body.append(f"o{oi}[{', '.join(idx)}] = {src}")
    red_args = []
    suffix_start = {}
    for r, (v, name, red_loop, acc, init, acc_dt, src, dt, src_dt) in enumerate(reductions):
        arg_names.append(f"r{r}")
        red_args.append((r, v))
        kept = [k for k in range(m) if k not in red_loop]
        is_suffix = red_loop and red_loop == list(range(m - len(red_loop), m))
        kept_idx = ", ".join(idx[k] for k in kept) if kept else "0"
        val = _cast(src, src_dt, acc_dt)
        if name == "reduce_sum":
            upd = f"{{a}} += {val}"
        elif dt.kind == "f":
            upd = f"{{a}} = _f{'max' if name == 'reduce_max' else 'min'}({{a}}, {val})"
        else:
            upd = f"{{a}} = {'max' if name == 'reduce_max' else 'min'}({{a}}, {val})"
        if is_suffix:
            suffix_start[r] = red_loop[0]
            body.append(upd.format(a=acc))
        else:
            body.append(upd.format(a=f"r{r}[{kept_idx}]"))
    # Loop nest.
    lines.append(f"def kernel({', '.join(arg_names)}):")
    ind = "    "
    for r, red in enumerate(reductions):
        if r not in suffix_start:
            lines.append(f"{ind}r{r}[...] = {red[4]}")
    for k in range(m):
        for r, start in suffix_start.items():
            if start == k:
                lines.append(f"{ind}acc{r} = _np.{_dt_name(reductions[r][5])}({reductions[r][4]})")
        rng = "_nb.prange" if (parallel and k == 0) else "range"
        lines.append(f"{ind}for i{k} in {rng}(n{k}):")
        ind += "    "
    for b in body:
        lines.append(ind + b)
    for k in range(m - 1, -1, -1):
        ind = ind[:-4]
        for r, start in suffix_start.items():
            if start == k:
                red_loop = reductions[r][2]
                kept = [kk for kk in range(m) if kk not in red_loop]
                kept_idx = ", ".join(idx[kk] for kk in kept) if kept else "0"
                lines.append(f"{ind}r{r}[{kept_idx}] = acc{r}")
    lines.append(f"{ind}return 0")
    deco = (f"@_nb.njit(cache=True, nogil=True, error_model='numpy'"
            f"{', parallel=True' if parallel else ''})")
    source = (_KERNEL_PRELUDE + "".join(c + "\n" for c in const_lines) + "\n\n" + deco + "\n"
              + "\n".join(lines) + "\n")
    return source, load_args, out_args, red_args, reductions


# ---------------------------------------------------------------------------------------------
# Blocked numpy chains


_UFUNCS = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "true_divide",
           "rem": "fmod", "neg": "negative", "max": "maximum", "min": "minimum",
           "pow": "power", "exp": "exp", "log": "log", "expm1": "expm1", "log1p": "log1p",
           "sin": "sin", "cos": "cos", "tanh": "tanh", "sqrt": "sqrt", "abs": "absolute",
           "sign": "sign", "floor": "floor", "eq": "equal", "ne": "not_equal", "lt": "less",
           "le": "less_equal", "gt": "greater", "ge": "greater_equal"}


def _blockable(cluster):
    """Whether every equation of the cluster has a ufunc form (blocks run along axis 0;
    broadcast operands are numpy-broadcast against each block)."""
    for e in cluster.eqns:
        name = e.primitive.name
        if name == "select_n":
            if e.invars[0].aval.dtype.kind != "b":
                return False
        elif name not in _UFUNCS and name not in plan.REDUCTIONS and name not in (
                "integer_pow", "convert_element_type", "and", "or", "not", "logistic",
                "broadcast_in_dim"):
            return False
    return True


class _BlockGen:
    """State of the blocked-chain generator: constants and a pool of block temporaries."""

    def __init__(self, glb):
        self.glb = glb
        self.nconst = 0
        self.pools = {}      # dtype -> free temp names
        self.temps = []      # (name, dtype)

    def const(self, val, dtype):
        name = f"K{self.nconst}"
        self.nconst += 1
        self.glb[name] = np.asarray(val).astype(dtype)[()]
        return name

    def temp(self, dtype):
        pool = self.pools.setdefault(np.dtype(dtype), [])
        if pool:
            return pool.pop()
        name = f"t{len(self.temps)}"
        self.temps.append((name, np.dtype(dtype)))
        return name

    def free(self, name, dtype):
        self.pools.setdefault(np.dtype(dtype), []).append(name)


def _blocked_kernel(cluster, name):
    """A Python function computing ``cluster`` block by block (slices along axis 0) with numpy
    ufuncs writing into ``out=`` buffers that stay in cache.

    Returns (function, source, argument plan); the plan lists, per argument, the load index and
    whether it is passed as a scalar ("S") or as an array viewed with the load's shape ("L")."""
    glb = {"_np": np}
    g = _BlockGen(glb)
    shape = cluster.shape
    rows = shape[0]
    row_elems = int(np.prod(shape[1:], dtype=np.int64))
    eqns = cluster.eqns
    last = {}
    for j, e in enumerate(eqns):
        for v in e.invars:
            if type(v) is not Literal:
                last[v] = j
    outputs = set(cluster.outputs)
    arg_plan, sliced, whole = [], [], []
    for li, (op, view) in enumerate(cluster.loads):
        if type(op) is Literal:
            continue
        if all(d == 1 for d in view):
            arg_plan.append(("S", li))
        else:
            arg_plan.append(("L", li))
            (sliced if view[0] == rows and rows > 1 else whole).append(li)
    itemsize = max([v.aval.dtype.itemsize for e in eqns for v in e.outvars] + [1])
    block_rows = max(1, min(rows, (BLOCK_BYTES // itemsize) // max(1, row_elems)))
    tshape = (block_rows,) + tuple(shape[1:])
    body, red_init, red_fin, full_outs = [], [], [], []
    buf_of = {}   # var -> (expr, dtype, is_pooled_temp)

    def operand(v, want):
        if type(v) is Literal:
            return g.const(v.val, want)
        kind, r = cluster.operand_ref(v)
        if kind == "val":
            return buf_of[r][0]
        op, view = cluster.loads[r]
        if type(op) is Literal:
            return g.const(op.val, want)
        if all(d == 1 for d in view):
            if op.aval.dtype != want or op.aval.weak_type:
                return f"_np.{_dt_name(want)}(S{r})"
            return f"S{r}"
        return f"l{r}"

    def new_output(ov):
        oi = len(full_outs)
        full_outs.append((ov, oi))
        return f"o{oi}"

    for j, e in enumerate(eqns):
        name_ = e.primitive.name
        ov = e.outvars[0]
        out_dt = ov.aval.dtype
        if name_ == "broadcast_in_dim" and ov in cluster.value_load:
            li = cluster.value_load[ov]
            op, view = cluster.loads[li]
            if type(op) is Literal:
                src = g.const(op.val, out_dt)
            elif all(d == 1 for d in view):
                src = f"_np.{_dt_name(out_dt)}(S{li})"
            else:
                src = f"l{li}"
            buf_of[ov] = (src, out_dt, False)
            if ov in outputs:
                dst = new_output(ov)
                body.append(f"{dst}[...] = {src}")
                buf_of[ov] = (dst, out_dt, False)
            continue
        if name_ in plan.REDUCTIONS:
            src = operand(e.invars[0], e.invars[0].aval.dtype)
            axes = tuple(e.params["axes"])
            kept = tuple(d for i, d in enumerate(shape) if i not in axes)
            r = len(red_init)
            uf = {"reduce_sum": "add", "reduce_max": "maximum", "reduce_min": "minimum"}[name_]
            if name_ == "reduce_sum":
                acc_dt = np.dtype(np.float64) if out_dt.kind == "f" else out_dt
                init = 0
            else:
                acc_dt = out_dt
                if out_dt.kind == "f":
                    init = -np.inf if name_ == "reduce_max" else np.inf
                else:
                    info = np.iinfo(out_dt)
                    init = info.min if name_ == "reduce_max" else info.max
            red_init.append(f"R{r} = _np.full({kept!r}, {g.const(init, acc_dt)}, "
                            f"_np.{_dt_name(acc_dt)})")
            if 0 in axes:
                # Partial results of every block are combined (in double for float sums).
                body.append(f"_np.{uf}(R{r}, _np.{uf}.reduce({src}, axis={axes!r}), out=R{r})")
            else:
                if acc_dt == out_dt:
                    body.append(f"_np.{uf}.reduce({src}, axis={axes!r}, out=R{r}[s:e])")
                else:
                    body.append(f"R{r}[s:e] = _np.{uf}.reduce({src}, axis={axes!r})")
            conv = f".astype(_np.{_dt_name(out_dt)})" if acc_dt != out_dt else ""
            red_fin.append((ov, f"R{r}{conv}"))
            _release(g, e, j, last, buf_of, outputs)
            continue
        in_avals = [v.aval for v in e.invars]
        cd = _promoted(in_avals) if name_ in _CMPOPS else out_dt
        if name_ == "select_n":
            args = [operand(e.invars[0], e.invars[0].aval.dtype)] + [
                operand(v, out_dt) for v in e.invars[1:]]
        elif name_ == "convert_element_type":
            args = [operand(e.invars[0], e.invars[0].aval.dtype)]
        else:
            args = [operand(v, cd) for v in e.invars]
        # Inputs are released before the destination is taken, so an elementwise op may run
        # in place; select_n reads its cases after writing, so it takes a fresh buffer.
        if name_ != "select_n":
            _release(g, e, j, last, buf_of, outputs)
        dst = new_output(ov) if ov in outputs else g.temp(out_dt)
        if name_ == "select_n":
            _release(g, e, j, last, buf_of, outputs)
        buf_of[ov] = (dst, out_dt, ov not in outputs)
        if name_ in _UFUNCS:
            body.append(f"_np.{_UFUNCS[name_]}({', '.join(args)}, out={dst})")
        elif name_ == "integer_pow":
            y = int(e.params["y"])
            if y == 2:
                body.append(f"_np.multiply({args[0]}, {args[0]}, out={dst})")
            else:
                body.append(f"_np.power({args[0]}, {g.const(y, out_dt)}, out={dst})")
        elif name_ == "convert_element_type":
            body.append(f"_np.copyto({dst}, {args[0]}, casting='unsafe')")
        elif name_ in ("and", "or", "not"):
            kind = "logical" if out_dt.kind == "b" else "bitwise"
            fn = {"and": f"{kind}_and", "or": f"{kind}_or",
                  "not": "logical_not" if out_dt.kind == "b" else "invert"}[name_]
            body.append(f"_np.{fn}({', '.join(args)}, out={dst})")
        elif name_ == "logistic":
            # exp overflows to inf for very negative x and 1/inf = 0: the right limit.
            body.append(f"_np.negative({args[0]}, out={dst})")
            body.append(f"_np.exp({dst}, out={dst})")
            body.append(f"_np.add({dst}, {g.const(1, out_dt)}, out={dst})")
            body.append(f"_np.reciprocal({dst}, out={dst})")
        elif name_ == "select_n":
            body.append(f"_np.copyto({dst}, {args[1]})")
            body.append(f"_np.copyto({dst}, {args[2]}, where={args[0]})")
        else:  # pragma: no cover - _blockable filters the rest
            raise NotImplementedError(name_)

    arg_names = [f"{k}{li}" for k, li in arg_plan]
    lines = [f"def {name}({', '.join(arg_names)}):"]
    for ov, oi in full_outs:
        lines.append(f"    O{oi} = _np.empty({shape!r}, _np.{_dt_name(ov.aval.dtype)})")
    for tname, dt in g.temps:
        lines.append(f"    T{tname} = _np.empty({tshape!r}, _np.{_dt_name(dt)})")
    lines += ["    " + x for x in red_init]
    for li in whole:
        lines.append(f"    l{li} = L{li}")
    lines.append("    with _np.errstate(all='ignore'):")
    lines.append(f"        for s in range(0, {rows}, {block_rows}):")
    lines.append(f"            e = min(s + {block_rows}, {rows})")
    lines.append("            m = e - s")
    for li in sliced:
        lines.append(f"            l{li} = L{li}[s:e]")
    for _, oi in full_outs:
        lines.append(f"            o{oi} = O{oi}[s:e]")
    for tname, _ in g.temps:
        lines.append(f"            {tname} = T{tname}[:m]")
    lines += ["            " + x for x in body]
    rets = []
    for v in cluster.outputs:
        hit = [oi for ov, oi in full_outs if ov is v]
        if hit:
            rets.append(f"O{hit[0]}")
        else:
            expr = next(x for ov, x in red_fin if ov is v)
            rets.append(f"{expr}.reshape({v.aval.shape!r})")
    lines.append(f"    return ({', '.join(rets)},)")
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<functrax blocked kernel {name}>", "exec"), glb)
    return glb[name], source, arg_plan


def _release(g, e, j, last, buf_of, outputs):
    for v in e.invars:
        if type(v) is Literal or last.get(v) != j:
            continue
        b = buf_of.get(v)
        if b is not None and b[2]:
            g.free(b[0], b[1])
            buf_of[v] = (b[0], b[1], False)


# ---------------------------------------------------------------------------------------------
# numba kernels: build or reuse


_numba_threads = None


def _numba_num_threads():
    global _numba_threads
    if _numba_threads is None:
        import numba
        _numba_threads = int(numba.config.NUMBA_NUM_THREADS)
    return _numba_threads


def _get_numba_kernel(source):
    """The compiled-on-demand dispatcher for ``source`` (shared by equal clusters)."""
    mod, in_memory, _ = cache.load_module(source)
    counters["numba_kernels_reused" if in_memory else "numba_kernels_built"] += 1
    return mod.kernel


def _numba_compile_stats(dispatchers):
    misses = hits = 0
    for d in dispatchers:
        st = d.stats
        misses += sum(st.cache_misses.values())
        hits += sum(st.cache_hits.values())
    return misses, hits


def _choose(cluster):
    """'numba', 'blocked' or 'unfused' for a cluster: the style that is never slower than
    running its equations one by one with numpy, and that compiles only where it pays.

    numba loads and compiles in ~0.5-3 s, so it is used for large clusters with enough
    arithmetic to repay it (``NUMBA_MIN_OPS``), and never for transcendental functions (scalar
    libm here). Blocked ufunc chains cost nothing to build and keep temporaries in cache, so
    they take every other large cluster whose operands are whole arrays or scalars."""
    eqns = cluster.eqns
    n = cluster.size
    real = [e for e in eqns if e.primitive.name != "broadcast_in_dim"]
    if len(real) <= 1:
        return "unfused"
    trans = any(e.primitive.name in TRANSCENDENTAL for e in eqns)
    many_ops = len(real) >= NUMBA_MIN_OPS
    if not trans and many_ops and n >= NUMBA_MIN_SIZE and n > 1:
        return "numba"
    if n >= BLOCKED_MIN_SIZE and _blockable(cluster):
        return "blocked"
    return "unfused"


# ---------------------------------------------------------------------------------------------
# The driver


class Executable:
    """A lowered program: call it with the flat inputs, get the list of flat outputs.

    ``source`` is the generated driver; ``kernel_sources`` the generated kernels;
    ``jaxpr`` the simplified program; ``as_text()`` all of it for people."""

    def __init__(self, fn, source, kernel_sources, jaxpr, steps_summary, dispatchers,
                 original=None):
        self.fn = fn
        self.source = source
        self.kernel_sources = kernel_sources
        self.jaxpr = jaxpr
        self.steps_summary = steps_summary
        self.dispatchers = dispatchers
        self.original = original
        self._ran = False
        self.first_run = {}
        self.compile_seconds = 0.0
        self.numba_compiles = 0
        self.numba_disk_hits = 0

    def __call__(self, *args):
        if not self._ran:
            return self._first_call(args)
        return self.fn(*args)

    def _first_call(self, args):
        # The first run compiles (or loads from disk) the numba kernels: account for it.
        before = _numba_compile_stats(self.dispatchers) if self.dispatchers else (0, 0)
        t0 = time.perf_counter()
        out = self.fn(*args)
        dt = time.perf_counter() - t0
        after = _numba_compile_stats(self.dispatchers) if self.dispatchers else (0, 0)
        comp, hits = after[0] - before[0], after[1] - before[1]
        counters["numba_compiles"] += comp
        counters["numba_disk_hits"] += hits
        self.first_run = {"seconds": dt, "numba_compiles": comp, "numba_disk_hits": hits}
        self._ran = True
        return out

    def as_text(self):
        parts = ["# simplified jaxpr", str(self.jaxpr), "# steps"]
        parts += [f"#   {s}" for s in self.steps_summary]
        parts += ["# driver", self.source]
        for i, src in enumerate(self.kernel_sources):
            parts += [f"# kernel {i}", src]
        return "\n".join(parts)


def _impl_callable(eqn):
    prim = eqn.primitive
    if prim.impl is None:
        raise NotImplementedError(f"jit: primitive '{prim}' has no impl to run")
    if eqn.params:
        return functools.partial(prim.impl, **eqn.params)
    return prim.impl


def _py_literal(lit):
    val = lit.val
    if lit.aval.weak_type and isinstance(val, (np.generic, np.ndarray)) and np.ndim(val) == 0:
        return np.asarray(val).item()  # stays weak for numpy's NEP 50 promotion
    return val


# ---------------------------------------------------------------------------------------------
# Direct numpy calls: the common equations without the impl's generic wrapper

# Elementwise primitives whose impl is (up to dtype checks) this numpy ufunc, so calling the
# ufunc gives bit-identical results when the operand dtypes are already the output dtype.
_DIRECT_UFUNCS = {"add": "add", "sub": "subtract", "mul": "multiply", "max": "maximum",
                  "min": "minimum", "neg": "negative", "exp": "exp", "log": "log",
                  "tanh": "tanh", "sin": "sin", "cos": "cos", "sqrt": "sqrt",
                  "expm1": "expm1", "log1p": "log1p", "abs": "absolute"}
_DIRECT_FLOAT = {"div": "true_divide"}
_DIRECT_CMP = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal",
               "gt": "greater", "ge": "greater_equal"}
_DIRECT_REDUCE = {"reduce_sum": "add", "reduce_max": "maximum", "reduce_min": "minimum"}


def _weak_scalar(v):
    return v.aval.weak_type and v.aval.ndim == 0


def _operand_ok(v, dt):
    """An operand a direct ufunc call may take for output dtype ``dt``: of that dtype, or a
    weak-typed scalar that numpy's NEP 50 promotion treats as weak (a Python scalar)."""
    if v.aval.dtype == dt:
        return True
    return type(v) is Literal and v.aval.weak_type and v.aval.ndim == 0 and \
        np.dtype(v.aval.dtype).kind in ("biuf" if dt.kind in "fc" else "b")


def _direct_elementwise(eqn):
    """The numpy ufunc name for an elementwise equation that may call it directly, else None."""
    name = eqn.primitive.name
    if len(eqn.outvars) != 1:
        return None
    dt = eqn.outvars[0].aval.dtype
    ins = eqn.invars
    if all(v.aval.weak_type for v in ins):
        return None  # all-Python-scalar operands: numpy would not give the declared dtype
    if name in _DIRECT_UFUNCS or name in _DIRECT_FLOAT:
        if dt.kind != "f" or not all(_operand_ok(v, dt) for v in ins):
            return None
        return _DIRECT_UFUNCS.get(name) or _DIRECT_FLOAT[name]
    if name in _DIRECT_CMP:
        a, b = ins
        ref_dt = next((v.aval.dtype for v in ins if type(v) is not Literal), None)
        if ref_dt is None or ref_dt.kind != "f" or not all(_operand_ok(v, ref_dt) for v in ins):
            return None
        return _DIRECT_CMP[name]
    if name == "integer_pow" and eqn.params["y"] == 2 and dt.kind == "f" and \
            ins[0].aval.dtype == dt:
        return "square"
    if name == "select_n" and len(ins) == 3 and ins[0].aval.dtype == np.bool_ and \
            dt.kind == "f" and all(_operand_ok(v, dt) for v in ins[1:]):
        return "where"
    return None


def _direct_src(eqn, args):
    """Source calling numpy directly for ``eqn`` on operand sources ``args``, or None when the
    equation needs its impl (unusual dtypes, ranks or parameters)."""
    name = eqn.primitive.name
    uf = _direct_elementwise(eqn)
    if uf is not None:
        if uf == "square":  # the impl's x * x (np.square may round differently on some CPUs)
            return f"_np.multiply({args[0]}, {args[0]})"
        if uf == "where":
            return f"_np.where({args[0]}, {args[2]}, {args[1]})"
        return f"_np.{uf}({', '.join(args)})"
    if len(eqn.outvars) != 1:
        return None
    out = eqn.outvars[0].aval
    ins = eqn.invars
    if any(type(v) is Literal for v in ins):
        return None
    if name in _DIRECT_REDUCE:
        x = ins[0]
        axes = tuple(eqn.params["axes"])
        if x.aval.ndim == 0 or not axes or x.aval.dtype.kind != "f" or _weak_scalar(x) or \
                0 in x.aval.shape:
            return None
        ax = axes[0] if len(axes) == 1 else axes
        return f"_np.{_DIRECT_REDUCE[name]}.reduce({args[0]}, {ax!r})"
    if name == "dot_general":
        return _direct_dot(eqn, args)
    if name == "convert_element_type":
        x = ins[0]
        src, dst = x.aval.dtype, np.dtype(eqn.params["new_dtype"])
        if _weak_scalar(x) or dst.kind not in "fc" or src.kind not in "biuf":
            return None
        return f"{args[0]}.astype(_np.{_dt_name(dst)})"
    if name == "transpose":
        x = ins[0]
        if _weak_scalar(x):
            return None
        perm = tuple(eqn.params["permutation"])
        if x.aval.ndim == 2 and perm == (1, 0):
            return f"{args[0]}.T"
        return f"{args[0]}.transpose({perm!r})"
    if name == "reshape" and eqn.params.get("dimensions") is None and not _weak_scalar(ins[0]):
        return f"_np.reshape({args[0]}, {tuple(out.shape)!r})"
    return None


def _direct_dot(eqn, args):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    a, b = eqn.invars
    dt = eqn.outvars[0].aval.dtype
    pref = eqn.params.get("preferred_element_type")
    if a.aval.dtype != dt or b.aval.dtype != dt or dt.kind not in "fc" or \
            (pref is not None and np.dtype(pref) != dt):
        return None
    na, nb = a.aval.ndim, b.aval.ndim
    if _weak_scalar(a) or _weak_scalar(b):
        return None
    if lb or rb:
        if lc:
            return None
        # Batched outer products (per-example weight gradients): one einsum without a
        # summed index is an elementwise product, exact, and far faster than a matmul
        # with an inner dimension of 1.
        letters = "abcdefghijklmnopqrstuvwxyz"
        sa = [letters[i] for i in range(na)]
        sb = [letters[na + i] for i in range(nb)]
        for i, j in zip(lb, rb):
            sb[j] = sa[i]
        out = [sa[i] for i in lb] + [sa[i] for i in range(na) if i not in lb] + \
            [sb[j] for j in range(nb) if j not in rb]
        return f"_np.einsum('{''.join(sa)},{''.join(sb)}->{''.join(out)}', {args[0]}, " \
            f"{args[1]})"
    if len(lc) == 0:
        # No contraction and no batch dims: every element of a times every element of b.
        if na == 0 or nb == 0:
            return None
        return f"_np.multiply.outer({args[0]}, {args[1]})"
    if na > 2 or nb > 2:
        return _direct_dot_flat(eqn, args)
    if na not in (1, 2) or nb not in (1, 2):
        return None
    if len(lc) != 1:
        return None
    A = args[0] if (na == 1 or lc[0] == 1) else f"{args[0]}.T"
    B = args[1] if (nb == 1 or rc[0] == 0) else f"{args[1]}.T"
    return f"_np.dot({A}, {B})"


def _direct_dot_flat(eqn, args):
    """dot_general as one 2-D GEMM when each operand's contracting dims are its leading or
    its trailing dims (in order): the operands are viewed as matrices by a reshape, which is
    free for contiguous arrays (the summed-over-steps gradients of a scan are of this form)."""
    (lc, rc), _ = eqn.params["dimension_numbers"]
    a, b = eqn.invars
    out_shape = tuple(eqn.outvars[0].aval.shape)
    la, lb_ = a.aval.shape, b.aval.shape
    kdim = int(np.prod([la[d] for d in lc], dtype=np.int64))
    fa = int(np.prod(la, dtype=np.int64)) // kdim if kdim else 0
    fb = int(np.prod(lb_, dtype=np.int64)) // kdim if kdim else 0
    if kdim == 0 or 0 in out_shape:
        return None
    A = _matrix_view(args[0], lc, a.aval.ndim, kdim, fa, contract_last=True)
    B = _matrix_view(args[1], rc, b.aval.ndim, kdim, fb, contract_last=False)
    if A is None or B is None:
        return None
    return f"_np.reshape(_np.dot({A}, {B}), {out_shape!r})"


def _matrix_view(arg, contract, ndim, kdim, free, contract_last):
    """Source viewing an operand as the (free, kdim) matrix (``contract_last``) or the
    (kdim, free) one, when its contracting dims lead or trail; else None."""
    k = len(contract)
    if tuple(contract) == tuple(range(k)):
        lead, trans = (kdim, free), contract_last
    elif tuple(contract) == tuple(range(ndim - k, ndim)):
        lead, trans = (free, kdim), not contract_last
    else:
        return None
    return f"_np.reshape({arg}, {lead!r}){'.T' if trans else ''}"


def _broadcast_view(x_aval, params):
    """The shape a broadcast operand is viewed with so that numpy broadcasting reproduces
    ``broadcast_in_dim`` (size-1 dims where the result is stretched)."""
    shape = params["shape"]
    expanded = [1] * len(shape)
    for src, dst in enumerate(params["broadcast_dimensions"]):
        expanded[dst] = x_aval.shape[src]
    return tuple(expanded)


def _fit_dtype(x, dtype):
    """A loop carry keeps its declared dtype whatever an impl returned."""
    if getattr(x, "dtype", None) != dtype:
        return core.wrap_array(np.asarray(x, dtype=dtype))
    return x


class _Emitter:
    """Writes one Python driver: a program's steps as straight-line code, with the bodies of
    ``scan`` equations inlined as Python loops over preallocated output stacks (no call, list
    or dict per step)."""

    def __init__(self, sub_lowering):
        self.glb = {"_np": np, "_wrap": _wrap_out, "_reuse": _reuse_buffer,
                    "_fitd": _fit_dtype}
        self.counter = 0
        self.kernel_sources, self.summary, self.dispatchers = [], [], []
        self.nk = [0]
        self.sub_lowering = sub_lowering or (lambda c: lower(c))

    def fresh(self, prefix="t"):
        self.counter += 1
        return f"{prefix}{self.counter}"

    def global_(self, value, prefix="K"):
        name = self.fresh(prefix)
        self.glb[name] = value
        return name

    def literal(self, lit, direct=False):
        """A global holding a literal: for direct numpy calls non-weak literals get their
        numpy scalar type (so a Python float never stands for a float32 value)."""
        if direct and not lit.aval.weak_type:
            return self.global_(np.dtype(lit.aval.dtype).type(lit.val))
        return self.global_(_py_literal(lit))

    def program(self, jaxpr, consts, in_names, lines, ind, donated=(), depth=0):
        """Emit code computing ``jaxpr`` (the shared passes run here) from the variables named
        ``in_names``. Returns (simplified jaxpr, output sources, whether each output's dtype
        is exactly its aval's)."""
        jaxpr, consts = plan.prepare(jaxpr, consts)
        steps = plan.fuse(jaxpr, plan.DEFAULT_FUSIBLE, _can_fuse)
        last = plan.last_uses(steps, jaxpr.outvars)
        names, typed, defined = {}, set(), set()
        fresh = self.fresh
        for v, n in zip(jaxpr.invars, in_names):
            names[v] = n
        for v, c in zip(jaxpr.constvars, consts):
            names[v] = self.global_(c, "C")

        def ref(v):
            return self.literal(v) if type(v) is Literal else names[v]

        def dref(v):
            return self.literal(v, direct=True) if type(v) is Literal else names[v]

        donated = tuple(donated) + (False,) * (len(jaxpr.invars) - len(donated))
        owned = {v for v, d in zip(jaxpr.invars, donated) if d}
        outset = {v for v in jaxpr.outvars if type(v) is not Literal}
        styles = [None if isinstance(st, OpStep) else _choose(st) for st in steps]
        op_eqns = []
        for st, style in zip(steps, styles):
            if style is None or style == "unfused":
                op_eqns.extend([st.eqn] if style is None else st.eqns)
        # Buffers handed to an impl may live on inside its result (reshape, transpose and
        # broadcast return views), so only values read by kernels alone may be overwritten.
        impl_read = set()
        for e in op_eqns:
            impl_read.update(v for v in e.invars if type(v) is not Literal)
        owned -= impl_read
        lazy = _lazy_broadcasts(op_eqns, steps, styles, jaxpr.outvars)

        def emit_op(eqn):
            name = eqn.primitive.name
            outs = []
            for v in eqn.outvars:
                if type(v) is core.DropVar:
                    outs.append("_")
                else:
                    names[v] = fresh()
                    defined.add(v)
                    outs.append(names[v])
            if id(eqn) in lazy:
                x = eqn.invars[0]
                src = dref(x)
                view = lazy[id(eqn)]
                if view is not None:
                    src = f"{src}.reshape({view!r})"
                lines.append(f"{ind}{outs[0]} = {src}")
                typed.add(eqn.outvars[0])
                return
            if name == "scan":
                self.scan(eqn, [ref(v) for v in eqn.invars], outs, lines, ind, depth)
                typed.update(eqn.outvars)
                return
            rule = lowering_rules.get(name)
            if rule is None:
                src = _direct_src(eqn, [dref(v) for v in eqn.invars])
                if src is not None:
                    lines.append(f"{ind}{outs[0]} = {src}")
                    typed.add(eqn.outvars[0])
                    return
            fn = fresh("_f")
            self.glb[fn] = rule(eqn, self.sub_lowering) if rule is not None else \
                _impl_callable(eqn)
            args = ", ".join(ref(v) for v in eqn.invars)
            if eqn.primitive.multiple_results:
                lhs = ", ".join(outs) + ("," if len(outs) == 1 else "")
                lines.append(f"{ind}{lhs} = {fn}({args})" if outs else f"{ind}{fn}({args})")
            else:
                lines.append(f"{ind}{outs[0]} = {fn}({args})")

        for si, step in enumerate(steps):
            if isinstance(step, OpStep):
                self.summary.append(f"op {step.eqn.primitive}")
                emit_op(step.eqn)
            else:
                style = styles[si]
                if style == "unfused":
                    self.summary.append(f"unfused {step.shape} "
                                        f"{[str(e.primitive) for e in step.eqns]}")
                    for eqn in step.eqns:
                        emit_op(eqn)
                elif style == "blocked":
                    kname = f"_b{self.nk[0]}"
                    self.nk[0] += 1
                    fn, src, arg_plan = _blocked_kernel(step, kname)
                    counters["blocked_kernels"] += 1
                    self.glb[kname] = fn
                    self.kernel_sources.append(src)
                    self.summary.append(f"blocked kernel {kname} {step.shape} "
                                        f"{[str(e.primitive) for e in step.eqns]}")
                    args = []
                    for kind, li in arg_plan:
                        op, view = step.loads[li]
                        if kind == "S":
                            args.append(f"_np.reshape({ref(op)}, ())[()]")
                        elif tuple(op.aval.shape) == tuple(view):
                            args.append(ref(op))
                        else:
                            args.append(f"_np.reshape({ref(op)}, {tuple(view)!r})")
                    outs = []
                    for v in step.outputs:
                        names[v] = fresh()
                        defined.add(v)
                        typed.add(v)
                        outs.append(names[v])
                    lines.append(f"{ind}{', '.join(outs)}, = {kname}({', '.join(args)})")
                else:
                    body = []
                    _emit_numba(step, body, self.glb, names, ref, fresh, self.nk,
                                self.kernel_sources, self.summary, self.dispatchers, last, si,
                                owned, outset | impl_read, set(jaxpr.invars))
                    lines.extend(ind + b for b in body)
                    for v in step.outputs:
                        defined.add(v)
                        typed.add(v)
            # Free big intermediates as soon as they die.
            dead = [v for v, li in last.items() if li == si and v in defined and
                    v.aval.size >= 4096]
            if dead:
                lines.append(f"{ind}del " + ", ".join(names[v] for v in dead))
        out_srcs, out_typed = [], []
        for v in jaxpr.outvars:
            if type(v) is Literal:
                out_srcs.append(self.literal(v, direct=True))
                out_typed.append(not v.aval.weak_type)
            else:
                out_srcs.append(names[v])
                out_typed.append(v in typed)
        return jaxpr, consts, out_srcs, out_typed

    def scan(self, eqn, in_srcs, outs, lines, ind, depth):
        """A scan as a Python loop in the driver; ys are written into (T, ...) buffers."""
        p = eqn.params
        body = p["jaxpr"]
        nc, nk, length, reverse = p["num_consts"], p["num_carry"], p["length"], p["reverse"]
        self.summary.append(f"scan loop of {length} steps")
        consts, init, xs = in_srcs[:nc], in_srcs[nc:nc + nk], in_srcs[nc + nk:]
        carry_avals = body.in_avals[nc:nc + nk]
        y_avals = body.out_avals[nk:]
        cn = [self.fresh("c") for _ in range(nk)]
        xn = [self.fresh("x") for _ in xs]
        yn = [self.fresh("y") for _ in y_avals]
        i = f"i{depth}_{self.counter}"
        self.counter += 1
        for c, s in zip(cn, init):
            lines.append(f"{ind}{c} = {s}")
        for x, s in zip(xn, xs):
            lines.append(f"{ind}{x} = {s}")
        for y, a in zip(yn, y_avals):
            lines.append(f"{ind}{y} = _np.empty({(length,) + tuple(a.shape)!r}, "
                         f"_np.{_dt_name(a.dtype)})")
        rng = f"range({length - 1}, -1, -1)" if reverse else f"range({length})"
        for_at = len(lines)
        lines.append(f"{ind}for {i} in {rng}:")
        ind2 = ind + "    "
        xe = [self.fresh("e") for _ in xs]
        bj = body.jaxpr
        read = {v for e in bj.eqns for v in e.invars if type(v) is not Literal}
        read.update(v for v in bj.outvars if type(v) is not Literal)
        for e, x, v in zip(xe, xn, bj.invars[nc + nk:]):
            if v in read:  # a step's slice of an xs the body ignores is never taken
                lines.append(f"{ind2}{e} = {x}[{i}]")
        start = len(lines)
        _, _, out_srcs, out_typed = self.program(body.jaxpr, body.consts,
                                                 list(consts) + cn + xe, lines, ind2,
                                                 depth=depth + 1)
        new = [s if t else f"_fitd({s}, _np.{_dt_name(a.dtype)})"
               for s, t, a in zip(out_srcs[:nk], out_typed[:nk], carry_avals)]
        # ys first: a y may be a carry's value from before this step.
        for y, s in zip(yn, out_srcs[nk:]):
            lines.append(f"{ind2}{y}[{i}] = {s}")
        if nk:
            lines.append(f"{ind2}{', '.join(cn)}, = {', '.join(new)},")
        if len(lines) == start and not nk and not yn:
            lines.append(f"{ind2}pass")
        self._contiguous_transposes(lines, for_at, consts, ind)
        for o, s in zip(outs, cn + yn):
            if o != "_":
                lines.append(f"{ind}{o} = {s}")

    def _contiguous_transposes(self, lines, for_at, consts, ind):
        """Loop-invariant operands the loop reads transposed (``W.T`` in a product) are
        transposed into a contiguous copy once, before the loop: BLAS is faster on them."""
        names = {c for c in consts if c.isidentifier()}
        found = {}
        for k in range(for_at + 1, len(lines)):
            for m in _TRANSPOSED.finditer(lines[k]):
                if m.group(1) in names and m.group(1) not in found:
                    found[m.group(1)] = self.fresh("w")
            if found:
                lines[k] = _TRANSPOSED.sub(lambda m: found.get(m.group(1), m.group(0)),
                                           lines[k])
        for c, w in found.items():
            lines.insert(for_at, f"{ind}{w} = _np.ascontiguousarray({c}.T)")


_TRANSPOSED = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\.T\b")


def _lazy_broadcasts(op_eqns, steps, styles, outvars):
    """broadcast_in_dim equations (run as ops) whose every reader is a direct elementwise
    call that numpy broadcasting makes come out right: they become a reshape view (or
    nothing), not a broadcast_to. Maps eqn -> view shape (None: the operand as it is)."""
    cand = {}
    for e in op_eqns:
        if e.primitive.name == "broadcast_in_dim":
            x = e.invars[0]
            view = _broadcast_view(x.aval, e.params)
            trimmed = tuple(view[len(view) - x.aval.ndim:]) if x.aval.ndim else ()
            ok_suffix = trimmed == tuple(x.aval.shape) and all(
                d == 1 for d in view[:len(view) - x.aval.ndim])
            cand[e.outvars[0]] = (e, None if ok_suffix else view)
    if not cand:
        return {}
    readers = {}
    blocked = set(v for v in outvars if type(v) is not Literal)
    for st, style in zip(steps, styles):
        if style is None or style == "unfused":
            for e in ([st.eqn] if style is None else st.eqns):
                for v in e.invars:
                    if type(v) is not Literal:
                        readers.setdefault(v, []).append(e)
        else:
            blocked.update(op for op, _ in st.loads if type(op) is not Literal)
    alive = {v for v in cand if v not in blocked and v in readers}
    changed = True
    while changed:
        changed = False
        for v in list(alive):
            for e in readers[v]:
                if e.primitive.name == "broadcast_in_dim" or _direct_elementwise(e) is None:
                    ok = False
                else:
                    shapes = []
                    for u in e.invars:
                        if type(u) is not Literal and u in alive:
                            _, view = cand[u]
                            shapes.append(view if view is not None else
                                          tuple(cand[u][0].invars[0].aval.shape))
                        else:
                            shapes.append(tuple(u.aval.shape))
                    try:
                        ok = tuple(np.broadcast_shapes(*shapes)) == \
                            tuple(e.outvars[0].aval.shape)
                    except ValueError:
                        ok = False
                if not ok:
                    alive.discard(v)
                    changed = True
                    break
    return {id(cand[v][0]): cand[v][1] for v in alive}


_malloc_tuned = False


def _tune_malloc():
    """Keep freed heap memory in the process (glibc only; ``FUNCTRAX_MALLOC_TUNE=0`` turns it
    off). By default glibc serves blocks over 128 KiB with fresh ``mmap`` pages and gives a
    freed heap top back to the kernel, so every call of a program that allocates a few
    half-megabyte temporaries page-faults all of them again: measured here, a 5-op blocked
    kernel over 200x300 float64 took 1.7 ms instead of 0.27 ms. Raising the mmap and trim
    thresholds lets numpy's allocations reuse warm pages, as XLA's and PyTorch's caching
    allocators do. Process-wide, once, when the first program is lowered."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    if os.environ.get("FUNCTRAX_MALLOC_TUNE", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    try:
        import ctypes
        import sys
        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)   # glibc's maximum on 64-bit
        libc.mallopt(m_trim_threshold, 512 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def lower(closed, donated=(), name="jitted", sub_lowering=None):
    """Lower a ClosedJaxpr to an ``Executable`` on the CPU."""
    _tune_malloc()
    em = _Emitter(sub_lowering)
    params = [f"a{i}" for i in range(len(closed.jaxpr.invars))]
    lines = []
    jaxpr, consts, out_srcs, _ = em.program(closed.jaxpr, closed.consts, params, lines,
                                            "    ", donated)
    # Arrays are mutable: a constant returned as an output is copied, so a caller writing
    # into its result cannot change what later calls return.
    rets = []
    for v, s in zip(jaxpr.outvars, out_srcs):
        if type(v) is Literal or v in set(jaxpr.constvars) or s.startswith("C"):
            rets.append(f"_wrap(_np.array({s}))")
        else:
            rets.append(f"_wrap({s})")
    lines.append(f"    return [{', '.join(rets)}]")
    fname = _safe_name(name)
    source = f"def {fname}({', '.join(params)}):\n" + "\n".join(lines) + "\n"
    glb = em.glb
    exec(compile(source, f"<functrax driver {name}>", "exec"), glb)
    fn = glb[fname]
    exe = Executable(fn, source, em.kernel_sources, jaxpr, em.summary,
                     [k for k, _ in em.dispatchers], closed)
    if em.dispatchers:
        exe.compile_seconds, exe.numba_compiles, exe.numba_disk_hits = \
            _precompile(em.dispatchers)
    return exe


def _wrap_out(x, _arr=core.Array, _nd=np.ndarray, _array=np.array):
    """Outputs are functrax Arrays (numpy scalars become 0-d arrays)."""
    t = type(x)
    if t is _arr:
        return x
    if t is _nd:
        return x.view(_arr)
    return _array(x).view(_arr)


def _safe_name(name):
    s = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(name))
    if not s or s[0].isdigit():
        s = "f_" + s
    return s


def _reuse_buffer(x, shape, dtype):
    """x reshaped to ``shape`` when its memory may be overwritten (a donated argument); else a
    new buffer."""
    if type(x) in (np.ndarray, core.Array) and x.dtype == dtype and \
            x.flags.c_contiguous and x.flags.writeable:
        return x.reshape(shape)
    return np.empty(shape, dtype)


def _emit_numba(step, lines, glb, names, ref, fresh, nk, kernel_sources, summary, dispatchers,
                last, si, owned, outset, invars):
    groups, loop_shape = _coalesce(step)
    parallel = step.size >= PARALLEL_MIN_SIZE and _numba_num_threads() > 1 and \
        not any(0 in reds for reds in _reduced_loop_dims(step, groups))
    src, load_args, out_args, red_args, reductions = _numba_kernel_source(
        step, groups, loop_shape, parallel)
    kern = _get_numba_kernel(src)
    dispatchers.append((kern, _signature(step, loop_shape, load_args, out_args, red_args,
                                         reductions)))
    kname = f"_k{nk[0]}"
    nk[0] += 1
    glb[kname] = kern
    kernel_sources.append(src)
    summary.append(f"numba kernel {kname} {step.shape} loop {loop_shape}"
                   f"{' parallel' if parallel else ''} {[str(e.primitive) for e in step.eqns]}")
    args = [str(n) for n in loop_shape]
    # Dying, owned, full-shape inputs can be overwritten by a same-typed output.
    reusable = []
    for li, kind, lv in load_args:
        op, view = step.loads[li]
        if kind == "array" and op in owned and last.get(op) == si and op not in outset and \
                tuple(view) == tuple(step.shape):
            reusable.append(op)
    for li, kind, lv in load_args:
        op, view = step.loads[li]
        dt = op.aval.dtype
        if kind == "scalar":
            args.append(f"_np.{_dt_name(dt)}(_np.reshape({ref(op)}, ())[()])")
        elif tuple(op.aval.shape) == tuple(lv):
            args.append(ref(op))
        else:
            args.append(f"_np.reshape({ref(op)}, {lv!r})")
    post = []
    for oi, v in out_args:
        dt = v.aval.dtype
        buf = fresh("o")
        src_reuse = next((u for u in reusable if u.aval.dtype == dt), None)
        if src_reuse is not None:
            reusable.remove(src_reuse)
            if src_reuse in invars:  # a donated argument: check what the caller passed
                lines.append(f"{buf} = _reuse({ref(src_reuse)}, {loop_shape!r}, "
                             f"_np.{_dt_name(dt)})")
            else:  # a buffer this program allocated
                lines.append(f"{buf} = {ref(src_reuse)}.reshape({loop_shape!r})")
        else:
            lines.append(f"{buf} = _np.empty({loop_shape!r}, _np.{_dt_name(dt)})")
        args.append(buf)
        names[v] = fresh()
        if v not in outset:
            owned.add(v)
        post.append(f"{names[v]} = {buf}.reshape({v.aval.shape!r})" if v.aval.shape != loop_shape
                    else f"{names[v]} = {buf}")
    for r, v in red_args:
        red_loop = reductions[r][2]
        acc_dt = reductions[r][5]
        kept_shape = tuple(s for k, s in enumerate(loop_shape) if k not in red_loop) or (1,)
        buf = fresh("r")
        lines.append(f"{buf} = _np.empty({kept_shape!r}, _np.{_dt_name(acc_dt)})")
        args.append(buf)
        names[v] = fresh()
        dt = v.aval.dtype
        conv = f".astype(_np.{_dt_name(dt)})" if dt != acc_dt else ""
        post.append(f"{names[v]} = {buf}{conv}.reshape({v.aval.shape!r})")
    lines.append(f"{kname}({', '.join(args)})")
    lines.extend(post)


def _signature(step, loop_shape, load_args, out_args, red_args, reductions):
    """numba argument types of a kernel call with C-contiguous arrays (the usual case; other
    layouts compile on first sight)."""
    from numba import types
    from numba.np.numpy_support import from_dtype
    sig = [types.int64] * len(loop_shape)
    for li, kind, lv in load_args:
        dt = from_dtype(step.loads[li][0].aval.dtype)
        sig.append(dt if kind == "scalar" else types.Array(dt, len(lv), "C"))
    for _, v in out_args:
        sig.append(types.Array(from_dtype(v.aval.dtype), len(loop_shape), "C"))
    for r, _ in red_args:
        nkept = max(1, len(loop_shape) - len(reductions[r][2]))
        sig.append(types.Array(from_dtype(reductions[r][5]), nkept, "C"))
    return tuple(sig)


def _precompile(dispatchers):
    """Compile (or load from the disk cache) every kernel now. Returns (seconds, compiles,
    disk hits)."""
    kernels = [k for k, _ in dispatchers]
    before = _numba_compile_stats(kernels)
    t0 = time.perf_counter()
    for kern, sig in dispatchers:
        kern.compile(sig)
    dt = time.perf_counter() - t0
    after = _numba_compile_stats(kernels)
    comp, hits = after[0] - before[0], after[1] - before[1]
    counters["numba_compiles"] += comp
    counters["numba_disk_hits"] += hits
    return dt, comp, hits


def _reduced_loop_dims(step, groups):
    out = []
    for e in step.eqns:
        if e.primitive.name in plan.REDUCTIONS:
            axes = set(e.params["axes"])
            out.append([k for k, g in enumerate(groups) if any(d in axes for d in g)])
    return out


# ---------------------------------------------------------------------------------------------
# Control flow: bodies are compiled once as sub-programs; the loop itself runs in Python.


def _fit(outs, avals):
    res = []
    for o, a in zip(outs, avals):
        if getattr(o, "dtype", None) != a.dtype:
            o = core.wrap_array(np.asarray(o, dtype=a.dtype))
        res.append(o)
    return res


def _scan_rule(eqn, lower_sub):
    return plan.scan_runner(eqn, lower_sub(eqn.params["jaxpr"]), _fit, np.asarray, np.empty,
                            wrap=core.wrap_array)


def _cond_rule(eqn, lower_sub):
    return plan.cond_runner(eqn, [lower_sub(b) for b in eqn.params["branches"]], _fit)


def _while_rule(eqn, lower_sub):
    p = eqn.params
    return plan.while_runner(eqn, lower_sub(p["cond_jaxpr"]), lower_sub(p["body_jaxpr"]), _fit)


lowering_rules["scan"] = _scan_rule
lowering_rules["cond"] = _cond_rule
lowering_rules["while"] = _while_rule
