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
  float32 clusters with ``sin``/``cos``/``exp``/``tanh``/``logistic`` are numba kernels too:
  those functions go through branch-free polynomial helpers (``POLY32``) that LLVM vectorizes
  (one fused pass for W4's forward and backward); a sin/cos argument beyond exact range
  reduction (|x| > 1e6) makes the driver recompute that cluster with numpy.
* every other equation calls its primitive's numpy impl (``dot_general`` is numpy's BLAS).
* large kernel outputs come from a per-program pool, reused once nothing refers to them.
* small programs (every array <= ``SMALL_MAX_SIZE`` elements, >= ``SMALL_MIN_EQNS``
  equations, no control flow) tier up: after ``SMALL_TIER_CALLS`` calls (3 when numba's
  disk cache already holds it) the whole program runs as one numba function, its elementwise
  clusters as loop nests and its products as BLAS calls, removing the per-equation Python
  dispatch that dominates them (W3b: about 50 equations of 1-3 us each).
* a ``scan`` is a Python loop in the driver, guarded by a ``_LoopTier`` when its body is
  small-program material: once the loop is hot (``LOOP_TIER_*``) the whole loop runs as one
  numba function (no Python per step; products through numpy's own BLAS). A ``while`` (and a
  ``fori_loop`` with traced bounds) tiers up the same way, its predicate tested in the
  compiled loop.

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
import sys
import time

import numpy as np

from .. import core
from ..core import Literal
from ..interpreters.partial_eval import effectful_primitives
from . import cache, plan
from .plan import OpStep

__all__ = ["lower", "Executable", "counters", "NUMBA_MIN_SIZE", "NUMBA_MIN_OPS",
           "BLOCKED_MIN_SIZE", "POOL_MIN_BYTES", "SMALL_MAX_SIZE", "SMALL_MIN_EQNS",
           "SMALL_TIER_CALLS", "SMALL_TIER_ON_DISK", "LOOP_TIER_CALLS", "LOOP_TIER_MIN_CALLS",
           "LOOP_TIER_SECONDS", "LOOP_TIER_ON_DISK",
           "PARALLEL_MIN_SIZE", "TRANSCENDENTAL", "POLY32", "POLY32_ENABLED",
           "lowering_rules"]

NUMBA_MIN_SIZE = int(os.environ.get("FUNCTRAX_NUMBA_MIN_SIZE", 1 << 17))
BLOCKED_MIN_SIZE = int(os.environ.get("FUNCTRAX_BLOCKED_MIN_SIZE", 1 << 12))
PARALLEL_MIN_SIZE = int(os.environ.get("FUNCTRAX_PARALLEL_MIN_SIZE", 1 << 20))
NUMBA_MIN_OPS = int(os.environ.get("FUNCTRAX_NUMBA_MIN_OPS", 4))
# float32 transcendental clusters as numba kernels with polynomial helpers (see _POLY_PRELUDE).
POLY32_ENABLED = os.environ.get("FUNCTRAX_POLY32", "1").strip().lower() not in (
    "0", "false", "no", "off")
# Tier-ups (whole small programs, compiled loops) fall back to the numpy driver when numba
# fails or disagrees, so users never see a broken compile; the test suite sets
# FUNCTRAX_STRICT_TIERS=1 so that such a fallback fails loudly instead of hiding a bug.
STRICT_TIERS = os.environ.get("FUNCTRAX_STRICT_TIERS", "").strip().lower() in (
    "1", "true", "yes", "on")
BLOCK_BYTES = 1 << 19  # per temporary; a handful of them stay in L2/L3 (measured on W4)

TRANSCENDENTAL = frozenset({"exp", "log", "expm1", "log1p", "sin", "cos", "tanh", "logistic",
                            "pow"})

# Lowering rules for primitives that need more than their impl (control flow with bodies):
# name -> rule(eqn, lower_sub) returning a Python callable taking the equation's inputs and
# returning the list of its outputs. ``lower_sub(closed_jaxpr)`` compiles a body.
lowering_rules: dict = {}

# Process-wide kernel accounting (jit objects keep their own share).
counters = {"numba_kernels_built": 0, "numba_kernels_reused": 0, "blocked_kernels": 0,
            "numba_compiles": 0, "numba_disk_hits": 0, "loop_kernels": 0}


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


def _scalar_expr(eqn, args, in_avals, poly=True):
    """Numba source for one elementwise equation on scalar operands ``args`` (``poly``: float32
    transcendentals through the vectorizable helpers)."""
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
    if poly and name in POLY32 and out == np.float32:
        return f"{POLY32[name]}({conv[0]})"
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
        # "not" has one operand: build its source apart (a dict of both binary forms would
        # index a[1] for it too).
        if name == "not":
            return f"(not {a[0]})" if out.kind == "b" else _wrap_int(f"(~{a[0]})", out)
        op = f"({a[0]} {'&' if name == 'and' else '|'} {a[1]})"
        return op if out.kind == "b" else _wrap_int(op, out)
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


# Vectorizable float32 versions of sin, cos, exp, tanh and logistic, for float32 kernels.
# numba's own are scalar libm calls (no SVML here), so a loop calling them is several times
# slower than numpy's SIMD ufuncs; these are branch-free (selects only), so LLVM vectorizes the
# loop around them. They compute in float64 and round once to float32: against a float64
# reference they are within 1e-7 relative (numpy's float32 loops: 1.5e-7). Range reduction of
# sin/cos is exact for |x| <= _SIN_LIMIT; kernels count larger finite arguments and the driver
# recomputes such a cluster with numpy (see ``_emit_numba``). The helpers are separate
# functions without fast-math flags, so the rounding tricks survive a kernel that allows
# reassociation (for vectorized sums): LLVM inlines them keeping each instruction's flags.
_POLY_PRELUDE = """\
from numba import types as _nbt
from numba.extending import intrinsic as _intrinsic


@_intrinsic
def _f64_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(_nbt.int64))
    return _nbt.int64(_nbt.float64), codegen


@_intrinsic
def _bits_f64(typingctx, i):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(_nbt.float64))
    return _nbt.float64(_nbt.int64), codegen


# 1.5 * 2**52: adding it rounds a double of magnitude < 2**51 to an integer, held in the low
# bits of the sum (two's complement for negative integers).
_RND = 6755399441055744.0
_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238
_LN2_LO = 1.9082149292705877e-10
_TWO_OVER_PI = 0.6366197723675814
# pi/2 in three pieces of 33, 33 and 53 bits: k * piece is exact for |k| < 2**20.
_PIO2_1 = 1.5707963267341256
_PIO2_2 = 6.077100506506192e-11
_PIO2_3 = 2.0222662487959506e-21
_SIN_LIMIT = 1.0e6


@_nb.njit(cache=True, nogil=True, error_model="numpy")
def _exp64(x):
    # Clamped to [-104, 104], beyond which a float32 result is 0 or inf: 2**k stays a
    # normal double.
    xc = min(max(x, -104.0), 104.0)
    t = xc * _LOG2E + _RND
    k = t - _RND
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320))))))))
    return p * _bits_f64((_f64_bits(t) + 1023) << 52)


@_nb.njit(cache=True, nogil=True, error_model="numpy")
def _expf(x):
    xd = _np.float64(x)
    v = _exp64(xd)
    v = xd if xd != xd else v
    return _np.float32(v)


@_nb.njit(cache=True, nogil=True, error_model="numpy")
def _sincosf(x, shift):
    xd = _np.float64(x)
    ax = abs(xd)
    xr = xd if ax <= _SIN_LIMIT else 0.0
    t = xr * _TWO_OVER_PI + _RND
    k = t - _RND
    q = _f64_bits(t) + shift
    r = ((xr - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    r2 = r * r
    s = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (
        1.0 / 362880 + r2 * (-1.0 / 39916800)))))
    c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (
        -1.0 / 3628800 + r2 * (1.0 / 479001600))))))
    v = c if (q & 1) != 0 else s
    v = -v if (q & 2) != 0 else v
    # sin x = x to float32 precision for tiny x (and keeps the sign of -0.0)
    v = xd if shift == 0 and ax < 1e-4 else v
    v = v if ax <= _SIN_LIMIT else _np.nan  # inf, nan (and huge: recomputed)
    return _np.float32(v)


@_nb.njit(cache=True, nogil=True, error_model="numpy")
def _sinf(x):
    return _sincosf(x, 0)


@_nb.njit(cache=True, nogil=True, error_model="numpy")
def _cosf(x):
    return _sincosf(x, 1)


@_nb.njit(cache=True, nogil=True, error_model="numpy")
def _big_arg(x):
    # A float flag: its sum vectorizes along with the kernel's float work.
    ax = abs(x)
    return _np.float32(1) if (ax > _SIN_LIMIT) & (ax < _np.inf) else _np.float32(0)


@_nb.njit(cache=True, nogil=True, error_model="numpy")
def _tanhf(x):
    xd = _np.float64(x)
    ax = min(abs(xd), 20.0)
    # In double, 1 - 2 / (e**2|x| + 1) loses nothing a float32 result can see.
    v = 1.0 - 2.0 / (_exp64(2.0 * ax) + 1.0)
    v = -v if xd < 0 else v
    v = xd if abs(xd) < 1e-4 or xd != xd else v
    return _np.float32(v)


@_nb.njit(cache=True, nogil=True, error_model="numpy")
def _logisticf(x):
    xd = _np.float64(x)
    v = 1.0 / (1.0 + _exp64(-xd))
    v = xd if xd != xd else v
    return _np.float32(v)


"""

# Primitives with a vectorizable float32 helper above: name -> helper.
POLY32 = {"sin": "_sinf", "cos": "_cosf", "exp": "_expf", "tanh": "_tanhf",
          "logistic": "_logisticf"}


def _uses_poly(cluster):
    return any(e.primitive.name in POLY32 and e.outvars[0].aval.dtype == np.float32
               for e in cluster.eqns)


def _needs_range_flag(cluster):
    return any(e.primitive.name in ("sin", "cos") and e.outvars[0].aval.dtype == np.float32
               for e in cluster.eqns)


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
    checked = set()  # sin/cos arguments already range-checked
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
        if name in ("sin", "cos") and eqn.outvars[0].aval.dtype == np.float32 and \
                args[0] not in checked:
            checked.add(args[0])
            body.append(f"nbig += _big_arg({args[0]})")
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
    poly = _uses_poly(cluster)
    if poly:
        # How many sin/cos arguments were beyond exact range reduction (returned, so that
        # the driver can recompute the cluster with numpy).
        lines.append(f"{ind}nbig = _np.float32(0)")
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
    lines.append(f"{ind}return {'nbig' if poly else '0'}")
    # Reassociation lets LLVM vectorize the float sums of a polynomial kernel (its helpers
    # keep strict semantics); no flag assumes away nan or inf.
    fm = ", fastmath={'reassoc'}" if poly else ""
    deco = (f"@_nb.njit(cache=True, nogil=True, error_model='numpy'"
            f"{', parallel=True' if parallel else ''}{fm})")
    source = (_KERNEL_PRELUDE + (_POLY_PRELUDE if poly else "")
              + "".join(c + "\n" for c in const_lines) + "\n\n" + deco + "\n"
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
    libm here) except the float32 ones with vectorizable helpers (``POLY32``). Blocked ufunc
    chains cost nothing to build and keep temporaries in cache, so
    they take every other large cluster whose operands are whole arrays or scalars."""
    eqns = cluster.eqns
    n = cluster.size
    real = [e for e in eqns if e.primitive.name != "broadcast_in_dim"]
    if len(real) <= 1:
        return "unfused"
    # float32 sin/cos/exp/tanh/logistic have vectorizable helpers: they do not count.
    trans = any(e.primitive.name in TRANSCENDENTAL and not (
        POLY32_ENABLED and e.primitive.name in POLY32 and
        e.outvars[0].aval.dtype == np.float32) for e in eqns)
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
        self.small_tier = None     # the whole program as one numba function (_Tiered)
        self.slow_fn = fn
        self.tiered = False
        self.loop_tiers = []       # scans that may run as one numba function (_LoopTier)

    @property
    def small_source(self):
        """The whole program's numba source (generated on first use), or None."""
        return self.small_tier.get_source() if self.small_tier is not None else None

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
        if self.small_source is not None:
            parts += [f"# whole program as one numba function, used after {SMALL_TIER_CALLS} "
                      f"calls ({'in use' if self.tiered else 'not yet'})", self.small_source]
        for t in self.loop_tiers:
            parts += [f"# a {t.label} as one numba function "
                      f"({'in use' if t.fast is not None else 'not yet'})", t.source]
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
        self.glb = {"_np": np, "_wrap": _wrap_out, "_reuse": _reuse_buffer, "_pooled": _pooled,
                    "_fitd": _fit_dtype, "_clock": time.perf_counter}
        self.counter = 0
        self.kernel_sources, self.summary, self.dispatchers = [], [], []
        self.loop_tiers = []   # scans that may switch to one numba function (_LoopTier)
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
            if name == "while" and "while" in lowering_rules:
                self.while_(eqn, [ref(v) for v in eqn.invars], outs, lines, ind)
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
        """A scan as a Python loop in the driver; ys are written into (T, ...) buffers. When
        the body can be one numba function (``_loop_kernel_source``), the loop is the slow
        branch of a ``_LoopTier`` test: once the loop is hot, the whole loop runs compiled."""
        final = lines
        lines, ind0, ind = [], ind, ind + "    "  # the Python loop, one level deeper
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
        sjaxpr, sconsts, out_srcs, out_typed = self.program(body.jaxpr, body.consts,
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
        tier = None
        if LOOP_TIER_CALLS > 0 and length > 0 and cn + yn:
            tier = _loop_tier(eqn, sjaxpr, sconsts)
        if tier is None:
            final.extend(line[4:] for line in lines)
        else:
            kn = self.global_(tier, "_L")
            self.loop_tiers.append(tier)
            self.summary.append(f"  (compiled whole by {kn} once hot)")
            ins = "(" + "".join(s + ", " for s in in_srcs) + ")"
            res = "".join(s + ", " for s in cn + yn)
            clock = self.fresh("_s")
            final.append(f"{ind0}if {kn}.fast is not None:")
            final.append(f"{ind}{res}= {kn}.fast{ins}")
            final.append(f"{ind0}else:")
            final.append(f"{ind}{clock} = _clock()")
            final.extend(lines)
            final.append(f"{ind}{kn}.ran(_clock() - {clock}, {ins}, ({res}))")
        for o, s in zip(outs, cn + yn):
            if o != "_":
                final.append(f"{ind0}{o} = {s}")

    def while_(self, eqn, in_srcs, outs, lines, ind):
        """A ``while`` as a call of its runner (predicate and body lowered as sub-programs, the
        loop in Python). When predicate and body can be numba functions
        (``_while_kernel_source``), the call is the slow branch of a ``_LoopTier`` test: once
        the loop is hot, the whole loop, predicate included, runs compiled."""
        fn = self.global_(lowering_rules["while"](eqn, self.sub_lowering), "_f")
        args = "".join(s + ", " for s in in_srcs)
        lhs = "".join(o + ", " for o in outs)
        tier = _while_tier(eqn) if LOOP_TIER_CALLS > 0 and outs else None
        if tier is None:
            lines.append(f"{ind}{lhs}= {fn}({args})" if outs else f"{ind}{fn}({args})")
            return
        self.summary.append("while loop")
        kn = self.global_(tier, "_L")
        self.loop_tiers.append(tier)
        self.summary.append(f"  (compiled whole by {kn} once hot)")
        res, clock = self.fresh("_r"), self.fresh("_s")
        lines.append(f"{ind}if {kn}.fast is not None:")
        lines.append(f"{ind}    {res} = {kn}.fast({args})")
        lines.append(f"{ind}else:")
        lines.append(f"{ind}    {clock} = _clock()")
        lines.append(f"{ind}    {res} = {fn}({args})")
        lines.append(f"{ind}    {kn}.ran(_clock() - {clock}, ({args}), {res})")
        lines.append(f"{ind}{lhs}= {res}")

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
    exe.loop_tiers = em.loop_tiers
    for t in em.loop_tiers:
        t.exe = exe
    if SMALL_TIER_CALLS > 0 and not em.dispatchers and len(jaxpr.eqns) >= SMALL_MIN_EQNS:
        # The numba source is generated only once the program is called again and again:
        # most programs run a few times, and generating it costs ~15% of a lowering.
        exe.slow_fn = fn
        exe.fn = exe.small_tier = _Tiered(exe, jaxpr, [v.aval for v in jaxpr.invars],
                                          [v.aval for v in jaxpr.outvars], consts)
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


# Kernel outputs this large are kept by the program between calls and reused once nothing
# else refers to them. glibc serves them with fresh mmap pages (its mmap threshold cannot
# exceed 32 MiB), so a new buffer costs a page fault per 4 KiB on first write: 15 ms of a
# 120 ms call on 1e7 float32 (W4). Reuse is decided by reference count, so a result the caller
# still holds (or any view of it) is never overwritten. The price: one buffer per such
# output stays allocated while the program lives, as in XLA's or PyTorch's allocators.
POOL_MIN_BYTES = int(os.environ.get("FUNCTRAX_POOL_MIN_BYTES", 16 << 20))


def _pooled(slot, shape, dtype, _getrc=sys.getrefcount, _empty=np.empty):
    """A buffer for a kernel output: the slot's previous one when no one else holds it."""
    buf = slot.pop(0, None)  # taken out first: two threads never get the same buffer
    # References here: ``buf`` and getrefcount's argument.
    if buf is None or _getrc(buf) != 2:
        buf = _empty(shape, dtype)
    slot[0] = buf
    return buf


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
    flagged = _needs_range_flag(step)
    for li, kind, lv in load_args:
        op, view = step.loads[li]
        # A kernel that may be recomputed by its fallback must leave its inputs intact.
        if kind == "array" and not flagged and op in owned and last.get(op) == si and \
                op not in outset and \
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
        elif v.aval.size * dt.itemsize >= POOL_MIN_BYTES:
            slot = fresh("_slot")
            glb[slot] = {}
            lines.append(f"{buf} = _pooled({slot}, {loop_shape!r}, _np.{_dt_name(dt)})")
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
    if not flagged:
        lines.append(f"{kname}({', '.join(args)})")
        lines.extend(post)
        return
    # Some float32 sin/cos argument was too large for the kernel's range reduction (rare):
    # the cluster is recomputed by numpy, through the primitives' impls.
    flag = fresh("nbig")
    lines.append(f"{flag} = {kname}({', '.join(args)})")
    lines.extend(post)
    fb_ins, fb = _cluster_fallback(step)
    fbname = fresh("_fb")
    glb[fbname] = fb
    outs = [names[v] for v in step.outputs]
    lines.append(f"if {flag}:")
    lines.append(f"    {', '.join(outs)}, = {fbname}({', '.join(ref(v) for v in fb_ins)})")


def _cluster_fallback(step):
    """(inputs, function) evaluating a cluster's equations one by one with their impls."""
    defined = {v for e in step.eqns for v in e.outvars}
    ins = []
    for e in step.eqns:
        for v in e.invars:
            if type(v) is not Literal and v not in defined and v not in ins:
                ins.append(v)
    sub = core.Jaxpr([], ins, list(step.outputs), step.eqns)

    def fallback(*args):
        with np.errstate(all="ignore"):  # as quiet as the kernel it stands in for
            return [core.wrap_array(o) for o in core.eval_jaxpr(sub, [], *args)]
    return ins, fallback


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
# Small programs: the whole straight-line program as one numba function (tier-up)

# Every array of a program at most this large (elements) lets it run as one numba function.
SMALL_MAX_SIZE = int(os.environ.get("FUNCTRAX_SMALL_MAX_SIZE", 1 << 16))
# ... with at least this many equations (fewer: dispatch is not what costs) ...
SMALL_MIN_EQNS = int(os.environ.get("FUNCTRAX_SMALL_MIN_EQNS", 8))
# ... once it has been called this many times (0: never). The numpy driver runs first: a
# numba function costs 0.5-3 s to compile (a disk-cache hit, ~0.1 s), which only a program
# called many times repays; the tests and one-off calls never pay it.
SMALL_TIER_CALLS = int(os.environ.get("FUNCTRAX_SMALL_TIER_CALLS", 64))
# ... or this many, when numba's disk cache already holds the compiled function.
SMALL_TIER_ON_DISK = 3

_SMALL_LAYOUT = frozenset({"broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose",
                           "dot_general", "is_finite"})


def _bcast_subs(shape, out_shape, idx):
    """Subscripts reading an operand of ``shape`` at the output index (numpy broadcasting:
    right-aligned, size-1 dims read at 0)."""
    r, t = len(out_shape), len(shape)
    return [("0" if shape[j] == 1 and out_shape[r - t + j] != 1 else idx[r - t + j])
            for j in range(t)]


def _small_program_source(jaxpr, min_eqns=None, poly=False, fname="kernel", bare=False,
                          gemm=False):
    """Source of a numba function ``kernel(*inputs, *consts)`` computing ``jaxpr`` (returns
    the tuple of its outputs; 0-d values are scalars), or None when some equation or value is
    outside what it handles. Loop bodies (``_loop_kernel_source``) ask for it with their own
    ``min_eqns`` and function name ``fname``, float32 exp/tanh/logistic through the vectorizable
    helpers (``poly``), and ``bare``: the constant lines and the function without prelude;
    with ``gemm`` matrix products call numpy's own BLAS (``_GEMM_PRELUDE``) through the
    addresses taken as two extra trailing arguments ``_gs, _gd``."""
    if len(jaxpr.eqns) < (SMALL_MIN_EQNS if min_eqns is None else min_eqns):
        return None
    allvars = list(jaxpr.invars) + list(jaxpr.constvars)
    for e in jaxpr.eqns:
        if e.primitive in effectful_primitives or any(True for _ in core.subjaxprs_of_eqn(e)):
            return None
        if len(e.outvars) != 1:
            return None
        allvars += [v for v in e.invars if type(v) is not Literal] + list(e.outvars)
    for v in allvars:
        if v.aval.dtype not in plan.KERNEL_DTYPES or v.aval.size > SMALL_MAX_SIZE:
            return None
    names = {}
    for i, v in enumerate(list(jaxpr.invars) + list(jaxpr.constvars)):
        names[v] = f"a{i}"
    const_lines = []
    const_views = set(jaxpr.constvars)

    def ref(v):
        if type(v) is Literal:
            c = f"_c{len(const_lines)}" if fname == "kernel" else \
                f"_{fname}_c{len(const_lines)}"
            const_lines.append(f"{c} = {_literal_src(v.val, v.aval.dtype)}")
            return c
        return names[v]

    body = []
    ind = "    "

    def loops(shape, inner):
        idx = [f"i{k}" for k in range(len(shape))]
        pad = ind
        for k, n in enumerate(shape):
            body.append(f"{pad}for i{k} in range({n}):")
            pad += "    "
        for line in inner(idx):
            body.append(pad + line)

    def read(v, out_shape, idx):
        if type(v) is Literal or v.aval.shape == ():
            return ref(v)
        subs = _bcast_subs(tuple(v.aval.shape), tuple(out_shape), idx)
        return f"{ref(v)}[{', '.join(subs)}]"

    # Elementwise clusters (as the kernels fuse them) become one loop nest each; everything
    # else is an equation at a time, in the fused step order.
    items = []
    for st in plan.fuse(jaxpr, plan.DEFAULT_FUSIBLE, _can_fuse):
        if isinstance(st, OpStep):
            items.append(("eqn", st.eqn))
        elif _small_fusable(st):
            items.append(("cluster", st))
        else:
            items.extend(("eqn", e) for e in st.eqns)
    for j, (kind, e) in enumerate(items):
        if kind == "cluster":
            _small_cluster(e, j, names, ref, read, body, ind, poly)
            continue
        name = e.primitive.name
        out = e.outvars[0]
        oshape, odt = tuple(out.aval.shape), out.aval.dtype
        on = f"v{j}"
        p = e.params
        if name in plan.ELEMENTWISE or name == "is_finite":
            int_div = name in ("div", "rem") and odt.kind in "iu" and all(
                v.aval.dtype.kind in "iu" for v in e.invars)
            if name != "is_finite" and not int_div and not _can_fuse(e):
                return None
            in_avals = [v.aval for v in e.invars]

            def expr(idx, e=e, in_avals=in_avals, name=name, oshape=oshape, int_div=int_div):
                args = [read(v, oshape, idx) for v in e.invars]
                if name == "is_finite":
                    return f"_np.isfinite({args[0]})"
                if int_div:
                    return _int_div_src(name, [_cast(a, av.dtype, odt) for a, av in
                                               zip(args, in_avals)], odt)
                return _scalar_expr(e, args, in_avals, poly=poly and name in _LOOP_POLY)
            if oshape == ():
                body.append(f"{ind}{on} = {expr([])}")
            else:
                body.append(f"{ind}{on} = _np.empty({oshape!r}, _np.{_dt_name(odt)})")
                loops(oshape, lambda idx, on=on, expr=expr: [f"{on}[{', '.join(idx)}] = "
                                                             f"{expr(idx)}"])
        elif name in plan.REDUCTIONS:
            x = e.invars[0]
            if type(x) is Literal or odt.kind == "b":
                return None
            xshape = tuple(x.aval.shape)
            axes = set(p["axes"])
            acc_dt, init = _reduction_accumulator(name, odt)
            init = f"_np.{_dt_name(acc_dt)}({init})"
            if xshape == ():
                # a reduction over no axes of a scalar is the scalar (named like any result)
                body.append(f"{ind}{on} = {ref(x)}")
                names[out] = on
                continue
            kept = [k for k in range(len(xshape)) if k not in axes]
            acc = f"r{j}"
            if oshape == ():
                body.append(f"{ind}{acc} = {init}")
            else:
                body.append(f"{ind}{acc} = _np.full({oshape!r}, {init})")
            val_of = lambda idx, x=x, xshape=xshape: _cast(
                f"{ref(x)}[{', '.join(idx)}]", x.aval.dtype, acc_dt)

            def upd(idx, acc=acc, kept=kept, name=name, val_of=val_of, oshape=oshape):
                tgt = acc if oshape == () else f"{acc}[{', '.join(idx[k] for k in kept)}]"
                val = val_of(idx)
                if name == "reduce_sum":
                    return [f"{tgt} += {val}"]
                fn = ("_f" if odt.kind == "f" else "") + ("max" if name == "reduce_max"
                                                           else "min")
                return [f"{tgt} = {fn}({tgt}, {val})"]
            loops(xshape, upd)
            if oshape == ():
                body.append(f"{ind}{on} = {_cast(acc, acc_dt, odt)}")
            else:
                conv = f".astype(_np.{_dt_name(odt)})" if acc_dt != odt else ""
                body.append(f"{ind}{on} = {acc}{conv}")
        elif name == "broadcast_in_dim":
            x = e.invars[0]
            if type(x) is Literal:
                return None
            xs = tuple(x.aval.shape)
            bd = tuple(p["broadcast_dimensions"])
            if oshape == ():
                body.append(f"{ind}{on} = {ref(x)}")
                names[out] = on
                continue
            body.append(f"{ind}{on} = _np.empty({oshape!r}, _np.{_dt_name(odt)})")

            def bcast(idx, x=x, xs=xs, bd=bd, on=on):
                if xs == ():
                    src = ref(x)
                else:
                    subs = ["0" if xs[k] == 1 and oshape_of[on][bd[k]] != 1 else idx[bd[k]]
                            for k in range(len(xs))]
                    src = f"{ref(x)}[{', '.join(subs)}]"
                return [f"{on}[{', '.join(idx)}] = {src}"]
            oshape_of = {on: oshape}
            loops(oshape, bcast)
        elif name in ("reshape", "squeeze", "expand_dims"):
            x = e.invars[0]
            if type(x) is Literal or (name == "reshape" and p.get("dimensions") is not None):
                return None
            xs = tuple(x.aval.shape)
            if xs == ():
                body.append(f"{ind}{on} = _np.full({oshape!r}, {ref(x)})" if oshape != ()
                            else f"{ind}{on} = {ref(x)}")
            elif oshape == ():
                body.append(f"{ind}{on} = {ref(x)}.reshape(1)[0]")
            else:
                body.append(f"{ind}{on} = {ref(x)}.reshape({oshape!r})")
                if x in const_views:
                    const_views.add(out)
        elif name == "transpose":
            x = e.invars[0]
            if type(x) is Literal or oshape == ():
                return None
            perm = tuple(p["permutation"])
            body.append(f"{ind}{on} = _np.empty({oshape!r}, _np.{_dt_name(odt)})")

            def tr(idx, x=x, perm=perm, on=on):
                # out[i] = x[j] with j[perm[k]] = i[k]
                src = [None] * len(perm)
                for k, pk in enumerate(perm):
                    src[pk] = idx[k]
                return [f"{on}[{', '.join(idx)}] = {ref(x)}[{', '.join(src)}]"]
            loops(oshape, tr)
        elif name == "dot_general":
            src = _small_dot(e, ref, gemm)
            if src is None:
                return None
            body.append(f"{ind}{on} = {src}")
        elif name in _SMALL_INDEXING:
            # Slicing and assembling (what loop bodies index with): explicit loop nests.
            if not _small_indexing(e, j, on, ref, body, ind, loops):
                return None
        else:
            return None
        names[out] = on
    # Outputs are the caller's to mutate: never the program's constants (or views of them).
    outs = [f"{ref(v)}.copy()" if type(v) is not Literal and v in const_views and
            v.aval.shape != () else ref(v) for v in jaxpr.outvars]
    args = [names[v] for v in list(jaxpr.invars) + list(jaxpr.constvars)]
    if gemm:
        args += ["_gs", "_gd"]
    if bare:
        return const_lines, ("@_nb.njit(cache=True, nogil=True, error_model='numpy')\n"
                             f"def {fname}({', '.join(args)}):\n" + "\n".join(body) + "\n"
                             f"    return ({''.join(o + ', ' for o in outs)})\n")
    src = (_KERNEL_PRELUDE + "".join(c + "\n" for c in const_lines) + "\n\n"
           "@_nb.njit(cache=True, nogil=True, error_model='numpy')\n"
           f"def kernel({', '.join(args)}):\n" + "\n".join(body) + "\n"
           f"    return ({''.join(o + ', ' for o in outs)})\n")
    return src


def _small_fusable(cluster):
    """Whether a cluster becomes one loop nest in a small program: several operations over
    a non-scalar iteration shape, every non-reduction result of that shape, no reduction
    result read inside the cluster."""
    shape = tuple(cluster.shape)
    real = [e for e in cluster.eqns if e.primitive.name != "broadcast_in_dim"]
    if len(real) < 2 or shape == ():
        return False
    red_outs = {e.outvars[0] for e in cluster.eqns if e.primitive.name in plan.REDUCTIONS}
    for e in cluster.eqns:
        if e.primitive.name in plan.REDUCTIONS:
            if tuple(e.invars[0].aval.shape) != shape or e.outvars[0].aval.dtype.kind == "b":
                return False
        elif tuple(e.outvars[0].aval.shape) != shape:
            return False
        if e.primitive.name == "broadcast_in_dim" and type(e.invars[0]) is Literal:
            return False
        if any(type(v) is not Literal and v in red_outs for v in e.invars):
            return False
    return True


def _small_cluster(cluster, j, names, ref, read, body, ind, poly=False):
    """One loop nest over the cluster's iteration shape: each operation a scalar statement,
    escaping values stored, reductions accumulated (float sums in float64)."""
    shape = tuple(cluster.shape)
    idx = [f"i{k}" for k in range(len(shape))]
    local = {}          # value computed in the loop -> scalar name
    pre, inner, post = [], [], []
    # When every reduction sums over the trailing dims (a row reduction), its accumulator is
    # a scalar reset at that loop depth: no store-to-load chain through memory per element.
    depths = set()
    for e in cluster.eqns:
        if e.primitive.name in plan.REDUCTIONS:
            axes = set(e.params["axes"])
            kept = [k for k in range(len(shape)) if k not in axes]
            depths.add(len(kept) if kept == list(range(len(kept))) and axes else -1)
    depth = depths.pop() if len(depths) == 1 and -1 not in depths else None
    open_at, close_at = [], []   # lines at the reduction depth, before / after its loops
    outputs = set(cluster.outputs)
    for n, e in enumerate(cluster.eqns):
        name = e.primitive.name
        out = e.outvars[0]
        odt = out.aval.dtype
        vn = f"w{j}_{n}"

        def arg(v):
            if type(v) is not Literal and v in local:
                return local[v]
            return read(v, shape, idx)
        if name == "broadcast_in_dim":
            x = e.invars[0]
            if x in local:
                src = local[x]
            elif x.aval.shape == ():
                src = ref(x)
            else:
                bd = tuple(e.params["broadcast_dimensions"])
                xs = tuple(x.aval.shape)
                subs = ["0" if xs[k] == 1 and shape[bd[k]] != 1 else idx[bd[k]]
                        for k in range(len(xs))]
                src = f"{ref(x)}[{', '.join(subs)}]"
            inner.append(f"{vn} = {src}")
        elif name in plan.REDUCTIONS:
            axes = set(e.params["axes"])
            kept = [k for k in range(len(shape)) if k not in axes]
            oshape = tuple(out.aval.shape)
            acc_dt, init = _reduction_accumulator(name, odt)
            acc = f"r{j}_{n}"
            pre.append(f"{acc} = _np.full({(oshape or (1,))!r}, _np.{_dt_name(acc_dt)}({init}))")
            tgt = f"{acc}[{', '.join(idx[k] for k in kept) if kept else '0'}]"
            if depth is not None:
                open_at.append(f"s{j}_{n} = _np.{_dt_name(acc_dt)}({init})")
                close_at.append(f"{tgt} = s{j}_{n}")
                tgt = f"s{j}_{n}"
            val = _cast(arg(e.invars[0]), e.invars[0].aval.dtype, acc_dt)
            if name == "reduce_sum":
                inner.append(f"{tgt} += {val}")
            else:
                fn = ("_f" if odt.kind == "f" else "") + ("max" if name == "reduce_max"
                                                           else "min")
                inner.append(f"{tgt} = {fn}({tgt}, {val})")
            res = f"v{j}_{n}"
            if oshape == ():
                post.append(f"{res} = {_cast(acc + '[0]', acc_dt, odt)}")
            else:
                conv = f".astype(_np.{_dt_name(odt)})" if acc_dt != odt else ""
                post.append(f"{res} = {acc}{conv}")
            names[out] = res
            continue
        else:
            expr = _scalar_expr(e, [arg(v) for v in e.invars], [v.aval for v in e.invars],
                                poly=poly and name in _LOOP_POLY)
            inner.append(f"{vn} = {expr}")
        local[out] = vn
        if out in outputs:
            buf = f"v{j}_{n}"
            pre.append(f"{buf} = _np.empty({shape!r}, _np.{_dt_name(odt)})")
            inner.append(f"{buf}[{', '.join(idx)}] = {vn}")
            names[out] = buf
    for line in pre:
        body.append(ind + line)
    pad = ind
    for k, n in enumerate(shape):
        if k == depth:
            body.extend(pad + line for line in open_at)
        body.append(f"{pad}for i{k} in range({n}):")
        pad += "    "
    for line in inner:
        body.append(pad + line)
    if depth is not None:
        body.extend(ind + "    " * depth + line for line in close_at)
    for line in post:
        body.append(ind + line)


def _small_dot(e, ref, gemm=False):
    """numba source for a dot_general without batch dims whose operands' contracting dims
    lead or trail: one ``np.dot`` (BLAS) on 1-D or 2-D views, reshaped."""
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    a, b = e.invars
    odt = e.outvars[0].aval.dtype
    oshape = tuple(e.outvars[0].aval.shape)
    pref = e.params.get("preferred_element_type")
    if lb or rb or not lc or type(a) is Literal or type(b) is Literal or \
            a.aval.dtype != odt or b.aval.dtype != odt or odt.kind != "f" or \
            (pref is not None and np.dtype(pref) != odt):
        return None
    sa, sb = tuple(a.aval.shape), tuple(b.aval.shape)
    k = int(np.prod([sa[d] for d in lc], dtype=np.int64))
    fa = int(np.prod(sa, dtype=np.int64)) // max(k, 1)
    fb = int(np.prod(sb, dtype=np.int64)) // max(k, 1)
    if k == 0 or 0 in oshape:
        return None

    def view(x, shape, contract, free, first):
        n = len(contract)
        if len(shape) == n:
            return f"{ref(x)}.reshape({k})"          # a vector: gemv / dot
        if tuple(contract) == tuple(range(n)):
            m = f"{ref(x)}.reshape(({k}, {free}))"
            return m if not first else m + ".T"
        if tuple(contract) == tuple(range(len(shape) - n, len(shape))):
            m = f"{ref(x)}.reshape(({free}, {k}))"
            return m if first else m + ".T"
        return None
    A = view(a, sa, lc, fa, True)
    B = view(b, sb, rc, fb, False)
    if A is None or B is None:
        return None
    if gemm and odt in (np.float32, np.float64) and len(sa) > len(lc) and len(sb) > len(rc):
        # Matrix times matrix through numpy's BLAS (numba's np.dot goes through SciPy's, 1.5x
        # slower on the small products of a loop body here).
        ta, tb = A.endswith(".T"), B.endswith(".T")
        A, B = (A[:-2] if ta else A), (B[:-2] if tb else B)
        fn, addr = ("_mm32", "_gs") if odt == np.float32 else ("_mm64", "_gd")
        return f"{fn}({addr}, {A}, {int(ta)}, {B}, {int(tb)}, {fa}, {fb}, {k}).reshape({oshape!r})"
    prod = f"_np.dot({A}, {B})"
    if oshape == ():
        return prod if len(sa) == len(lc) and len(sb) == len(rc) else f"{prod}.reshape(1)[0]"
    return f"_np.ascontiguousarray({prod}).reshape({oshape!r})"


class _Tiered:
    """The driver of a small program: the numpy driver until the program has been called
    ``SMALL_TIER_CALLS`` times (``SMALL_TIER_ON_DISK`` times when an earlier process compiled
    the same function and numba's disk cache holds it), then one numba function (see ``_small_program_source``).
    The first numba result is checked against the numpy driver's; a mismatch or a compile
    failure keeps the numpy driver for good. The source is generated lazily, at the
    ``SMALL_TIER_ON_DISK``-th call (to look for it on disk) or when asked for."""

    _UNSET = object()

    def __init__(self, exe, jaxpr, in_avals, out_avals, consts):
        self.exe = exe
        self.jaxpr = jaxpr
        self.source = self._UNSET
        self.in_avals = in_avals
        self.out_avals = out_avals
        self.consts = _kernel_consts(consts)
        self.calls = 0
        self.fast = None
        self.on_disk_at = min(SMALL_TIER_ON_DISK, SMALL_TIER_CALLS)

    def get_source(self):
        if self.source is self._UNSET:
            self.source = _small_program_source(self.jaxpr)
        return self.source

    def __call__(self, *args):
        fast = self.fast
        if fast is not None:
            return fast(*args)
        self.calls += 1
        calls = self.calls
        if calls == self.on_disk_at or calls == SMALL_TIER_CALLS:
            source = self.get_source()
            if source is None:
                # Outside what the numba generator handles: stop counting for good.
                self.exe.fn = self.exe.slow_fn
            # Compiled by an earlier process: loading it is cheap (but imports numba, ~0.5 s
            # once), so switch as soon as the program is seen to be called repeatedly.
            elif calls == SMALL_TIER_CALLS or cache.compiled_on_disk(source):
                self.on_disk_at = -1
                self._tier_up(args)
        return self.exe.slow_fn(*args)

    def _tier_up(self, args):
        try:
            mod, _, _ = cache.load_module(self.source)
            kern = mod.kernel
            conv = [_kernel_arg(a) for a in self.in_avals]
            consts = self.consts
            outs = [(a.shape == (), a.dtype) for a in self.out_avals]
            wrap = _wrap_out

            def fast(*xs):
                res = kern(*[c(x) for c, x in zip(conv, xs)], *consts)
                return [wrap(np.asarray(r, dt)) if scalar else wrap(r)
                        for r, (scalar, dt) in zip(res, outs)]
            t0 = time.perf_counter()
            got = fast(*args)
            self.exe.compile_seconds += time.perf_counter() - t0
            want = self.exe.slow_fn(*args)
            if not _results_agree(got, want):
                _tier_failed("whole-program", self.source, None)
                return
        except Exception as e:  # an unforeseen typing gap: the numpy driver stays
            _tier_failed("whole-program", self.source, e)
            return
        self.fast = fast
        self.exe.tiered = True


# ---------------------------------------------------------------------------------------------
# Loops compiled whole: a hot scan runs as one numba function (tier-up)

# A scan whose body the small-program generator handles (elementwise work, broadcasts,
# reductions, layout changes, products as BLAS calls) gets a numba function running the whole
# loop: read xs[i], compute the step, write ys[i], carry on, with no Python per step. The
# Python loop runs first; the compiled loop takes over once the loop is hot: it has run
# LOOP_TIER_MIN_CALLS times and spent LOOP_TIER_SECONDS in Python in all (a long loop in a
# program called again and again, a training step), or LOOP_TIER_CALLS times whatever its cost
# (0: never). A compile costs 0.5-3 s (a disk-cache hit ~0.1 s, after LOOP_TIER_ON_DISK calls).
LOOP_TIER_CALLS = int(os.environ.get("FUNCTRAX_LOOP_TIER_CALLS", 64))
LOOP_TIER_MIN_CALLS = int(os.environ.get("FUNCTRAX_LOOP_TIER_MIN_CALLS", 3))
LOOP_TIER_SECONDS = float(os.environ.get("FUNCTRAX_LOOP_TIER_SECONDS", 0.02))
LOOP_TIER_ON_DISK = 2
# float32 functions compiled loops compute with the vectorizable helpers: exact over their
# whole range (sin/cos are not beyond 1e6, and a loop has no numpy fallback per step).
_LOOP_POLY = frozenset({"exp", "tanh", "logistic"})

# The slicing and assembling primitives small programs (loop bodies above all: x[i] with a
# traced i, a window of a state, a stacked or padded state) compute as explicit loop nests.
_SMALL_INDEXING = frozenset({"dynamic_slice", "dynamic_update_slice", "slice", "concatenate",
                             "iota", "rev", "pad"})


def _int_div_src(name, args, odt):
    """numba source of lax's integer ``div`` (rounding toward zero, as C) or ``rem`` (the
    sign of the dividend) of the scalar sources ``args`` of dtype ``odt``; 0 for a zero
    divisor, as numpy's impls give. (Python's // and % in numba round toward -inf.)"""
    a, b = args
    zero = f"_np.{_dt_name(odt)}(0)"   # typed: numba would unify int64 and uint64 to float
    if odt.kind == "u":   # no signs: floor and truncation agree
        val = f"({a} // {b})" if name == "div" else f"({a} % {b})"
    else:
        odd = f"(({a} % {b} != 0) and (({a} < 0) != ({b} < 0)))"
        val = f"({a} // {b} + (1 if {odd} else 0))" if name == "div" else \
            f"({a} % {b} - ({b} if {odd} else {zero}))"
    return _wrap_int(f"({zero} if {b} == 0 else {val})", odt)


def _small_indexing(e, j, on, ref, body, ind, loops):
    """Appends to ``body`` the numba source computing the ``_SMALL_INDEXING`` equation ``e``
    into ``on`` (``loops(shape, inner)`` writes a loop nest over ``shape`` around the lines
    ``inner(index names)``). False when the equation is outside what this handles."""
    name, p = e.primitive.name, e.params
    out = e.outvars[0].aval
    oshape, odt = tuple(out.shape), _dt_name(out.dtype)
    arrays = e.invars[:1] if name in ("dynamic_slice", "dynamic_update_slice", "pad") else \
        e.invars
    if any(type(v) is Literal and v.aval.shape != () for v in arrays):
        return False
    if name == "iota":
        dim = p["dimension"]
        body.append(f"{ind}{on} = _np.empty({oshape!r}, _np.{odt})")
        loops(oshape, lambda idx: [f"{on}[{', '.join(idx)}] = _np.{odt}({idx[dim]})"])
        return True
    x = e.invars[0]
    xs = tuple(x.aval.shape)
    if name == "dynamic_update_slice" and oshape == ():
        body.append(f"{ind}{on} = {ref(e.invars[1])}")   # a 0-d operand: the update
        return True
    if oshape == () or (xs == () and name != "pad"):
        body.append(f"{ind}{on} = {ref(x)}")             # a 0-d operand sliced whole
        return True
    if name in ("dynamic_slice", "dynamic_update_slice"):
        starts = e.invars[1:] if name == "dynamic_slice" else e.invars[2:]
        sizes = tuple(p["slice_sizes"]) if name == "dynamic_slice" else \
            tuple(e.invars[1].aval.shape)
        if any(s.aval.dtype == np.uint64 for s in starts):
            return False   # beyond int64: the clamp below would wrap
        # Start indices clamped into range as lax does (no wrapping of negative indices).
        d = [f"d{j}_{k}" for k in range(len(xs))]
        for dk, s, n, z in zip(d, starts, xs, sizes):
            body.append(f"{ind}{dk} = min(max(_np.int64({ref(s)}), 0), {n - z})")
        if name == "dynamic_slice":
            body.append(f"{ind}{on} = _np.empty({oshape!r}, _np.{odt})")
            loops(oshape, lambda idx: [
                f"{on}[{', '.join(idx)}] = "
                f"{ref(x)}[{', '.join(f'{dk} + {i}' for dk, i in zip(d, idx))}]"])
        else:
            u = e.invars[1]
            body.append(f"{ind}{on} = {ref(x)}.copy()")
            loops(sizes, lambda idx: [
                f"{on}[{', '.join(f'{dk} + {i}' for dk, i in zip(d, idx))}] = "
                f"{ref(u)}[{', '.join(idx)}]"])
        return True
    body.append(f"{ind}{on} = _np.empty({oshape!r}, _np.{odt})")
    if name == "slice":
        starts = tuple(p["start_indices"])
        strides = tuple(p["strides"] or (1,) * len(xs))
        loops(oshape, lambda idx: [
            f"{on}[{', '.join(idx)}] = {ref(x)}[" +
            ", ".join(f"{s} + {i} * {st}" for s, i, st in zip(starts, idx, strides)) + "]"])
    elif name == "rev":
        dims = set(p["dimensions"])
        loops(oshape, lambda idx: [
            f"{on}[{', '.join(idx)}] = {ref(x)}[" +
            ", ".join(f"{xs[k] - 1} - {i}" if k in dims else i for k, i in enumerate(idx)) +
            "]"])
    elif name == "concatenate":
        dim, off = p["dimension"], 0
        for v in e.invars:
            vs = tuple(v.aval.shape)
            loops(vs, lambda idx, off=off, v=v: [
                f"{on}[" + ", ".join(f"{off} + {i}" if k == dim else i
                                     for k, i in enumerate(idx)) +
                f"] = {ref(v)}[{', '.join(idx)}]"])
            off += vs[dim]
    else:  # pad: the padding value everywhere, then the operand at its (strided) places
        cfg = tuple(tuple(c) for c in p["padding_config"])
        fill = ref(e.invars[1])
        loops(oshape, lambda idx: [f"{on}[{', '.join(idx)}] = {fill}"])
        if xs == ():
            return True
        pos = [f"{lo} + {i} * {it + 1}" for (lo, _, it), i in
               zip(cfg, [f"i{k}" for k in range(len(xs))])]
        # Negative low / high padding crops: only positions inside the result are written.
        tests = [f"0 <= {q} < {n}" for q, (lo, hi, _), n in zip(pos, cfg, oshape)
                 if lo < 0 or hi < 0]

        def place(idx):
            store = f"{on}[{', '.join(pos)}] = {ref(x)}[{', '.join(idx)}]"
            if not tests:
                return [store]
            return [f"if {' and '.join(tests)}:", "    " + store]
        loops(xs, place)
    return True


# Matrix products in compiled loops call numpy's own BLAS (cblas_?gemm of the OpenBLAS that
# numpy's wheels bundle, 64-bit integers), reached through its address passed in at run time
# (``_gemm_addrs``): an address is a run-time value, so the compiled code stays cacheable on
# disk. Measured here on a (16,128)x(128,128) float32 product: 8 us, against 10 us for
# np.dot from Python and 15 us for numba's np.dot (SciPy's BLAS).
_GEMM_PRELUDE = """\
from llvmlite import ir as _ir


def _gemm_codegen(fty):
    def codegen(context, builder, signature, args):
        i32, i64 = _ir.IntType(32), _ir.IntType(64)
        p = _ir.PointerType(fty)
        fnty = _ir.FunctionType(_ir.VoidType(), [i32, i32, i32, i64, i64, i64, fty, p, i64,
                                                 p, i64, fty, p, i64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [_ir.Constant(i32, 101), builder.trunc(args[1], i32),
                          builder.trunc(args[2], i32), args[3], args[4], args[5],
                          _ir.Constant(fty, 1.0), builder.inttoptr(args[6], p), args[7],
                          builder.inttoptr(args[8], p), args[9], _ir.Constant(fty, 0.0),
                          builder.inttoptr(args[10], p), args[11]])
        return context.get_dummy_value()
    return codegen


@_intrinsic
def _sgemm_call(typingctx, addr, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    return _nbt.void(*([_nbt.int64] * 12)), _gemm_codegen(_ir.FloatType())


@_intrinsic
def _dgemm_call(typingctx, addr, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    return _nbt.void(*([_nbt.int64] * 12)), _gemm_codegen(_ir.DoubleType())


# op(a) (m, k) times op(b) (k, n), row-major; ta / tb: the operand is stored transposed.
@_nb.njit(cache=True, nogil=True)
def _mm32(addr, a, ta, b, tb, m, n, k):
    ac = _np.ascontiguousarray(a)
    bc = _np.ascontiguousarray(b)
    c = _np.empty((m, n), _np.float32)
    _sgemm_call(addr, 112 if ta else 111, 112 if tb else 111, m, n, k, ac.ctypes.data,
                m if ta else k, bc.ctypes.data, k if tb else n, c.ctypes.data, n)
    return c


@_nb.njit(cache=True, nogil=True)
def _mm64(addr, a, ta, b, tb, m, n, k):
    ac = _np.ascontiguousarray(a)
    bc = _np.ascontiguousarray(b)
    c = _np.empty((m, n), _np.float64)
    _dgemm_call(addr, 112 if ta else 111, 112 if tb else 111, m, n, k, ac.ctypes.data,
                m if ta else k, bc.ctypes.data, k if tb else n, c.ctypes.data, n)
    return c


"""

_gemm = None


def _gemm_addrs():
    """(sgemm, dgemm) addresses of numpy's bundled OpenBLAS cblas (64-bit integer interface),
    or None when this numpy has none that we know (products then use numba's np.dot)."""
    global _gemm
    if _gemm is None:
        _gemm = ()
        try:
            import ctypes
            import glob
            libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                          "libscipy_openblas64_*.so"))
            if len(libs) == 1:
                lib = ctypes.CDLL(libs[0])
                _gemm = tuple(ctypes.cast(getattr(lib, f"scipy_cblas_{t}gemm64_"),
                                          ctypes.c_void_p).value for t in "sd")
        except (OSError, AttributeError):
            _gemm = ()
    return _gemm or None


def _loop_kernel_source(eqn, body):
    """numba source running the ``scan`` equation ``eqn`` whole, with ``body`` (its simplified
    body jaxpr: scan consts, carries, xs slices in; carries, ys out): ``kernel(*consts,
    *init, *xs, *body_consts)`` returns the final carries and the stacked ys (0-d values as
    scalars). None when the body is outside what ``_small_program_source`` handles."""
    p = eqn.params
    nc, nk, length, reverse = p["num_consts"], p["num_carry"], p["length"], p["reverse"]
    gemm = _gemm_addrs() is not None
    got = _small_program_source(body, min_eqns=1, poly=True, fname="body", bare=True,
                                gemm=gemm)
    if got is None:
        return None
    const_lines, body_src = got
    nx = len(body.invars) - nc - nk
    carry_avals = [v.aval for v in body.invars[nc:nc + nk]]
    y_avals = [v.aval for v in body.outvars[nk:]]
    if any(a.dtype not in plan.KERNEL_DTYPES for a in carry_avals + y_avals):
        return None
    ks = [f"k{j}" for j in range(nc)]
    cs = [f"c{j}" for j in range(nk)]
    xs = [f"x{j}" for j in range(nx)]
    bs = [f"b{j}" for j in range(len(body.constvars))]
    ys = [f"y{j}" for j in range(len(y_avals))]
    bs += ["_gs", "_gd"] if gemm else []
    lines = [f"def kernel({', '.join(ks + cs + xs + bs)}):"]
    for y, a in zip(ys, y_avals):
        lines.append(f"    {y} = _np.empty({(length,) + tuple(a.shape)!r}, "
                     f"_np.{_dt_name(a.dtype)})")
    rng = f"range({length - 1}, -1, -1)" if reverse else f"range({length})"
    lines.append(f"    for i in {rng}:")
    lines.append(f"        r = body({''.join(a + ', ' for a in ks + cs)}"
                 f"{''.join(x + '[i], ' for x in xs)}{', '.join(bs)})")
    for j, (y, a) in enumerate(zip(ys, y_avals)):
        if a.shape == ():
            lines.append(f"        {y}[i] = r[{nk + j}]")
            continue
        # An explicit copy: numba compiles ``y[i] = v`` (a broadcasting store) in seconds.
        lines.append(f"        v = r[{nk + j}]")
        pad = "        "
        idx = [f"j{d}" for d in range(len(a.shape))]
        for d, n in enumerate(a.shape):
            lines.append(f"{pad}for j{d} in range({n}):")
            pad += "    "
        lines.append(f"{pad}{y}[i, {', '.join(idx)}] = v[{', '.join(idx)}]")
    for j, (c, a) in enumerate(zip(cs, carry_avals)):
        # A scalar carry keeps its dtype (numba would otherwise widen it across steps).
        val = f"r[{j}]" if a.shape != () else f"_np.{_dt_name(a.dtype)}(r[{j}])"
        lines.append(f"        {c} = {val}")
    lines.append(f"    return ({''.join(v + ', ' for v in cs + ys)})")
    return (_KERNEL_PRELUDE + _POLY_PRELUDE + (_GEMM_PRELUDE if gemm else "") +
            "".join(c + "\n" for c in const_lines) + "\n\n" +
            body_src + "\n\n@_nb.njit(cache=True, nogil=True, error_model='numpy')\n" +
            "\n".join(lines) + "\n")


def _loop_tier(eqn, body, body_consts):
    """The ``_LoopTier`` guarding the Python loop of ``eqn``, or None (body not compilable)."""
    source = _loop_kernel_source(eqn, body)
    if source is None:
        return None
    p = eqn.params
    out_avals = [v.aval for v in eqn.outvars]
    return _LoopTier(source, [v.aval for v in eqn.invars], out_avals, body_consts,
                     f"scan of {p['length']} steps")


def _while_kernel_source(eqn, cond, body):
    """numba source running the ``while`` equation ``eqn`` whole, with ``cond`` and ``body``
    (its simplified predicate and body jaxprs): ``kernel(*cond_consts, *body_consts, *init,
    *cond_jaxpr_consts, *body_jaxpr_consts)`` returns the final carries, the predicate tested
    in the compiled loop before each step (at most ``max_steps`` steps when that is set).
    None when either jaxpr is outside what ``_small_program_source`` handles."""
    p = eqn.params
    cn, bn, max_steps = p["cond_nconsts"], p["body_nconsts"], p["max_steps"]
    nk = len(body.invars) - bn
    if len(cond.invars) != cn + nk or len(body.outvars) != nk or len(cond.outvars) != 1:
        return None
    carry_avals = [v.aval for v in body.invars[bn:]]
    if any(a.dtype not in plan.KERNEL_DTYPES for a in carry_avals) or \
            cond.outvars[0].aval.shape != ():
        return None
    gemm = _gemm_addrs() is not None
    got_c = _small_program_source(cond, min_eqns=0, poly=True, fname="cond", bare=True,
                                  gemm=gemm)
    got_b = _small_program_source(body, min_eqns=1, poly=True, fname="body", bare=True,
                                  gemm=gemm)
    if got_c is None or got_b is None:
        return None
    qs = [f"q{j}" for j in range(cn)]
    ks = [f"k{j}" for j in range(bn)]
    cs = [f"c{j}" for j in range(nk)]
    qb = [f"qb{j}" for j in range(len(cond.constvars))]
    bb = [f"b{j}" for j in range(len(body.constvars))]
    g = ["_gs", "_gd"] if gemm else []
    lines = [f"def kernel({', '.join(qs + ks + cs + qb + bb + g)}):",
             "    n = 0",
             "    while True:" if max_steps is None else f"    while n < {int(max_steps)}:",
             f"        if not cond({', '.join(qs + cs + qb + g)})[0]:",
             "            break",
             f"        r = body({', '.join(ks + cs + bb + g)})"]
    for j, (c, a) in enumerate(zip(cs, carry_avals)):
        # A scalar carry keeps its dtype (numba would otherwise widen it across steps).
        val = f"r[{j}]" if a.shape != () else f"_np.{_dt_name(a.dtype)}(r[{j}])"
        lines.append(f"        {c} = {val}")
    lines.append("        n += 1")
    lines.append(f"    return ({''.join(c + ', ' for c in cs)})")
    return (_KERNEL_PRELUDE + _POLY_PRELUDE + (_GEMM_PRELUDE if gemm else "") +
            "".join(c + "\n" for c in got_c[0] + got_b[0]) + "\n\n" +
            got_c[1] + "\n\n" + got_b[1] +
            "\n\n@_nb.njit(cache=True, nogil=True, error_model='numpy')\n" +
            "\n".join(lines) + "\n")


def _while_tier(eqn):
    """The ``_LoopTier`` guarding the Python loop of the ``while`` equation ``eqn``, or None
    (predicate or body not compilable)."""
    p = eqn.params
    cond, cconsts = plan.prepare(p["cond_jaxpr"].jaxpr, p["cond_jaxpr"].consts)
    body, bconsts = plan.prepare(p["body_jaxpr"].jaxpr, p["body_jaxpr"].consts)
    source = _while_kernel_source(eqn, cond, body)
    if source is None:
        return None
    return _LoopTier(source, [v.aval for v in eqn.invars], [v.aval for v in eqn.outvars],
                     list(cconsts) + list(bconsts), "while loop")


def _kernel_consts(consts):
    """Constants as a generated numba function takes them: contiguous arrays, 0-d ones as
    numpy scalars."""
    return tuple(np.ascontiguousarray(c) if np.ndim(c) else np.asarray(c)[()] for c in consts)


def _kernel_arg(aval):
    """Converts a driver value to what a generated numba function takes for ``aval``: a
    contiguous base ndarray of its dtype, or a numpy scalar for 0-d values."""
    if aval.shape == ():
        return lambda x, t=aval.dtype.type: t(np.asarray(x).reshape(())[()])
    return lambda x, dt=aval.dtype: np.ascontiguousarray(x, dt)


def _tier_failed(what, source, error):
    """A tier-up that fell back: silent for users, an error under FUNCTRAX_STRICT_TIERS."""
    if STRICT_TIERS:
        why = f"raised {type(error).__name__}: {error}" if error is not None else \
            "gave results that differ from the numpy driver's"
        raise RuntimeError(f"functrax: the compiled {what} function {why}\n{source}") from error


def _results_agree(got, want):
    """Whether a compiled function's outputs match the numpy driver's: same shapes and dtypes,
    floats to rounding (relative to the largest finite value), the rest exactly."""
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape or g.dtype != w.dtype:
            return False
        if g.dtype.kind in "fc":
            fin = np.abs(w[np.isfinite(w)])
            scale = 1.0 + (float(fin.max()) if fin.size else 0.0)
            if not np.allclose(g, w, rtol=1e-4, atol=1e-6 * scale, equal_nan=True):
                return False
        elif not np.array_equal(g, w):
            return False
    return True


class _LoopTier:
    """A scan or while loop of the driver that may run as one numba function
    (``_loop_kernel_source``, ``_while_kernel_source``).

    The driver runs its Python loop while ``fast`` is None and reports each run (seconds,
    inputs, outputs) to ``ran``; once the loop is hot (see ``LOOP_TIER_CALLS``) the function
    is compiled (or loaded from disk), run on the same inputs and checked against the Python
    loop's outputs; from then on the driver calls ``fast`` instead of looping. A compile
    failure or a mismatch keeps the Python loop for good."""

    def __init__(self, source, in_avals, out_avals, body_consts, label):
        self.source = source
        self.in_avals, self.out_avals = in_avals, out_avals
        self.label = label   # what the loop is, for as_text ("scan of 100 steps")
        self.body_consts = _kernel_consts(body_consts)
        self.fast = None
        self.done = False    # tiered up, or given up
        self.calls = 0
        self.seconds = 0.0   # spent in the Python loop so far
        self.exe = None      # the Executable charged with the compile time (set by lower)
        calls = LOOP_TIER_CALLS
        if cache.compiled_on_disk(source):
            calls = min(LOOP_TIER_ON_DISK, calls)
        self.tier_calls, self.min_calls, self.min_seconds = \
            calls, LOOP_TIER_MIN_CALLS, LOOP_TIER_SECONDS

    def ran(self, seconds, ins, outs):
        if self.done:
            return
        self.calls += 1
        self.seconds += seconds
        if self.calls >= self.tier_calls or (self.calls >= self.min_calls and
                                             self.seconds >= self.min_seconds):
            self.done = True
            self._tier_up(ins, outs)

    def _tier_up(self, ins, outs):
        t0 = time.perf_counter()
        try:
            mod, _, _ = cache.load_module(self.source)
            kern = mod.kernel
            conv = [_kernel_arg(a) for a in self.in_avals]
            scal = [a.dtype.type if a.shape == () else None for a in self.out_avals]
            bconsts = self.body_consts
            if "_gs, _gd" in self.source:
                bconsts += _gemm_addrs()

            def fast(*xs):
                res = kern(*[c(x) for c, x in zip(conv, xs)], *bconsts)
                return [r if t is None else t(r) for r, t in zip(res, scal)]
            got = fast(*ins)
        except Exception as e:  # an unforeseen typing gap: the Python loop stays
            _tier_failed("loop", self.source, e)
            return
        finally:
            if self.exe is not None:
                self.exe.compile_seconds += time.perf_counter() - t0
        counters["loop_kernels"] += 1
        if _results_agree(got, outs):
            self.fast = fast
        else:
            _tier_failed("loop", self.source, None)


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


def _reduction_accumulator(name, odt):
    """The accumulator dtype (float64 / int64 / uint64 by kind) and the source text of the
    initial value of a sum, max or min reduction producing dtype ``odt``."""
    acc_dt = np.dtype(np.float64) if odt.kind == "f" else (
        np.dtype(np.int64) if odt.kind == "i" else np.dtype(np.uint64))
    if name == "reduce_sum":
        return acc_dt, "0"
    if name == "reduce_max":
        return acc_dt, "-_np.inf" if odt.kind == "f" else str(np.iinfo(odt).min)
    return acc_dt, "_np.inf" if odt.kind == "f" else str(np.iinfo(odt).max)
