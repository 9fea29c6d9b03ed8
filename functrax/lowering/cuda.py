"""The CUDA back end: a jaxpr becomes a driver launching numba-cuda kernels on device arrays.

``lower(closed)`` runs the shared passes of ``plan.py`` (``prepare``: inline, simplify, scan
accumulators and loop-independent scan work out of the loops; then fuse) and then, per
step:

* every fused ``Cluster`` (an elementwise chain with its broadcasts, possibly ended by
  reductions over one set of axes) becomes ONE ``numba.cuda`` kernel, in one of three shapes:
  - ``map``: a grid-stride loop over the (coalesced) iteration space, broadcast operands read
    through size-1 views, never materialised;
  - ``rows``: one thread per kept output element, looping over the reduced elements (many
    small reductions: softmax rows, a bias gradient);
  - ``blocks``: one or more thread blocks per kept element, each thread accumulating a strided
    share and the block combining through shared memory; a second, tiny reduction over the
    per-block partials runs on the array library (few large reductions: a loss, W4's sum).
  Full-shape values that escape the cluster are written by the same kernel.
* ``dot_general`` (and convolution, and everything else) runs its primitive's impl on the
  device arrays: the impls go through the arrays' namespace, so on a GPU that is CuPy (cuBLAS
  for ``dot_general``, with transposes folded into ``matmul``);
* ``scan``/``while``/``cond`` bodies are lowered once to this back end and looped from Python
  with the loop state on the device (the only host round trip is a while loop's predicate).

Kernel source is canonical (sizes are arguments) and written, like the CPU back end's, to a
module file in the cache dir (``cache.py``), keyed by a hash of the source which names its
target (``sm_XY`` or the simulator); on a real GPU numba-cuda's ``cache=True`` keeps the
compiled code next to it. ``generated_kernels`` records every kernel this process generated,
and ``compile_ptx(spec)`` compiles one for a real GPU (cc 9.0 by default) without needing one,
which is how the test suite type-checks kernels that it can only run in the simulator.

Runtime modes: ``"sim"`` when numba's simulator is on (``NUMBA_ENABLE_CUDASIM=1``: device
arrays are ``SimulatedGpuArray``, numpy stands in for CuPy), ``"gpu"`` when CuPy sees a GPU;
otherwise lowering with a runtime raises and only ``generate`` (code generation) is available.

>>> import functrax, functrax.numpy as fnp
>>> from functrax.lowering import cuda
>>> prog = cuda.generate(functrax.make_jaxpr(lambda x: fnp.sum(fnp.sin(x) * 2.0))(fnp.ones(1000)))
>>> [k.style for k in prog.kernels]
['blocks']
"""
from __future__ import annotations

import functools
import math
import os
import threading

import numpy as np

from .. import core
from ..core import Literal
from . import cache, plan
from .plan import Cluster

__all__ = ["lower", "generate", "Program", "KernelSpec", "Executable", "Target",
           "compile_ptx", "generated_kernels", "runtime", "lowering_rules", "can_fuse",
           "BLOCKS_MIN_REDUCED", "ROWS_MIN_KEPT", "arch_name", "CudnnConvPlan",
           "cudnn_conv_plan", "run_cudnn_conv", "cudnn_module"]

# A reduction whose reduced extent is at least this many elements is done by whole thread
# blocks unless there are already this many kept outputs to give one to each thread.
BLOCKS_MIN_REDUCED = int(os.environ.get("FUNCTRAX_CUDA_BLOCKS_MIN_REDUCED", 256))
ROWS_MIN_KEPT = int(os.environ.get("FUNCTRAX_CUDA_ROWS_MIN_KEPT", 8192))

# Every kernel generated in this process (KernelSpec), for PTX checks and inspection.
generated_kernels: list = []

# name -> rule(eqn, lower_sub, rt) returning a callable taking the equation's inputs and
# returning the list of its outputs.
lowering_rules: dict = {}


_dt = plan.dtype_name


# ---------------------------------------------------------------------------------------------
# Targets and the runtime


class Target:
    """What the generated source depends on: threads per block, the grid cap, and the name of
    the architecture (part of the source, hence of the cache key)."""

    __slots__ = ("tpb", "max_blocks", "arch")

    def __init__(self, tpb=256, max_blocks=4096, arch="sm_90"):
        self.tpb, self.max_blocks, self.arch = int(tpb), int(max_blocks), arch

    def __repr__(self):
        return f"Target(tpb={self.tpb}, max_blocks={self.max_blocks}, arch={self.arch!r})"


# The simulator runs every thread as a Python thread: small blocks and few of them.
SIM_TARGET = Target(tpb=16, max_blocks=4, arch="simulator")


class _Runtime:
    """Where executables run: ``mode`` 'sim' or 'gpu', ``xp`` the array module (numpy or
    CuPy) and the ``Target`` kernels are generated for."""

    def __init__(self, mode, xp, target):
        self.mode, self.xp, self.target = mode, xp, target
        self.sim = mode == "sim"
        if self.sim:
            from ..devices import SimulatedGpuArray
            self._sim_cls = SimulatedGpuArray

    def to_device(self, x):
        """An input as a device array (Python numbers stay numbers: impls keep them weak)."""
        t = type(x)
        if t is float or t is int or t is bool or t is complex:
            return x
        if self.sim:
            return np.asarray(x)
        if type(x).__module__.startswith("cupy"):
            return x
        return self.xp.asarray(x)

    def array_arg(self, x, dtype, shape):
        """``x`` as a C-contiguous device array of ``dtype`` and ``shape`` for a kernel."""
        xp = self.xp
        if not hasattr(x, "shape") or getattr(x, "dtype", None) != dtype:
            x = xp.asarray(x, dtype=dtype)
        if not x.flags.c_contiguous:
            x = xp.ascontiguousarray(x)
        if self.sim and not x.flags.writeable:
            # The simulator copies every array argument back after a launch, inputs included.
            x = x.copy()
        return x.reshape(shape)

    def wrap_out(self, x):
        if self.sim:
            if type(x) is self._sim_cls:
                return x
            return np.asarray(x).view(self._sim_cls)
        if not type(x).__module__.startswith("cupy"):
            return self.xp.asarray(x)
        return x


def arch_name(compute_capability) -> str:
    """'sm_XY' from CuPy's compute capability, a string of digits ("90" for 9.0, "120" for
    12.0). It is written into every kernel's source, so the on-disk kernel cache (keyed by a
    hash of the source) keeps one entry per GPU architecture."""
    major, minor = divmod(int(compute_capability), 10)
    return f"sm_{major}{minor}"


_rt = None
_rt_lock = threading.Lock()


def runtime():
    """The process's CUDA runtime (simulator or GPU); raises RuntimeError when neither."""
    global _rt
    if _rt is not None:
        return _rt
    with _rt_lock:
        if _rt is None:
            from ..devices import gpu_available, simulator_enabled
            if simulator_enabled():
                _rt = _Runtime("sim", np, SIM_TARGET)
            elif gpu_available():
                import cupy
                _rt = _Runtime("gpu", cupy, Target(
                    arch=arch_name(cupy.cuda.Device().compute_capability)))
            else:
                raise RuntimeError(
                    "jit(backend='cuda'): no CUDA device: CuPy is not installed or sees no "
                    "GPU. Install the 'cuda' extra on a machine with an NVIDIA GPU, or set "
                    "NUMBA_ENABLE_CUDASIM=1 before starting Python to run the kernels in "
                    "numba's CUDA simulator")
    return _rt


# ---------------------------------------------------------------------------------------------
# What may be fused


# Whether the CUDA kernel generator handles ``eqn`` (dtypes and operations): the same
# rules as the CPU kernels.
can_fuse = plan.kernel_can_fuse


# ---------------------------------------------------------------------------------------------
# Scalar code

# Module prelude of every kernel file. The same source runs on the GPU and in the simulator:
# on the GPU the math functions are CUDA's (NaN/inf on domain errors); in the simulator they
# are numpy's scalar functions, which behave the same way (Python's math module would raise).
_PRELUDE = '''\
import math as _m
import numpy as _np
from numba import cuda as _cuda, config as _nbcfg

_SIM = bool(_nbcfg.ENABLE_CUDASIM)
if _SIM:
    _exp, _log, _expm1, _log1p = _np.exp, _np.log, _np.expm1, _np.log1p
    _sin, _cos, _tanh, _sqrt, _fmod = _np.sin, _np.cos, _np.tanh, _np.sqrt, _np.fmod
else:
    _exp, _log, _expm1, _log1p = _m.exp, _m.log, _m.expm1, _m.log1p
    _sin, _cos, _tanh, _sqrt, _fmod = _m.sin, _m.cos, _m.tanh, _m.sqrt, _m.fmod

_INF = _np.float64(_np.inf)
_NINF = _np.float64(-_np.inf)


@_cuda.jit(device=True, inline=True)
def _fmax(a, b):
    if a != a or a > b:
        return a
    return b


@_cuda.jit(device=True, inline=True)
def _fmin(a, b):
    if a != a or a < b:
        return a
    return b


@_cuda.jit(device=True, inline=True)
def _floor(a):
    # floor is the identity on NaN, infinities and floats too large to have a fraction.
    if a != a or abs(a) >= 4503599627370496.0:
        return a
    return _m.floor(a)


# Constants are typed: an untyped 1 next to a float32 makes numba compute in float64.
''' + "\n\n".join('''@_cuda.jit(device=True, inline=True)
def _logistic{bits}(a):
    e = _np.float{bits}(_exp(-abs(a)))
    one = _np.float{bits}(1)
    if a >= 0:
        return one / (one + e)
    return e / (one + e)
'''.format(bits=bits) for bits in (32, 64))


_cast = plan.cast_src


def _typed(expr, dt):
    """Every value is pinned to its jaxpr dtype: numba widens mixed and integer arithmetic."""
    dt = np.dtype(dt)
    return expr if dt.kind == "b" else f"_np.{_dt(dt)}({expr})"


_promoted = plan.promoted_dtype


_BIN = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_CMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_UNARY = {"exp": "_exp", "log": "_log", "expm1": "_expm1", "log1p": "_log1p", "sin": "_sin",
          "cos": "_cos", "tanh": "_tanh", "sqrt": "_sqrt", "floor": "_floor"}


def _scalar_expr(eqn, args, in_avals):
    name = eqn.primitive.name
    out = eqn.outvars[0].aval.dtype
    conv = [_cast(a, av.dtype, out) for a, av in zip(args, in_avals)]
    if name in _BIN:
        return _typed(f"{conv[0]} {_BIN[name]} {conv[1]}", out)
    if name == "rem":
        return _typed(f"_fmod({conv[0]}, {conv[1]})", out)
    if name == "neg":
        return _typed(f"-{conv[0]}", out)
    if name in ("max", "min"):
        fn = f"_f{name}" if out.kind == "f" else name
        return _typed(f"{fn}({conv[0]}, {conv[1]})", out)
    if name == "pow":
        return _typed(f"{conv[0]} ** {conv[1]}", out)
    if name == "integer_pow":
        y = int(eqn.params["y"])
        if y == 0:
            return f"_np.{_dt(out)}(1)"
        k = abs(y)
        body = "*".join([conv[0]] * k) if k <= 4 else f"{conv[0]} ** {k}"
        if y < 0:
            return _typed(f"_np.{_dt(out)}(1) / _np.{_dt(out)}({body})", out)
        return _typed(body, out)
    if name in _UNARY:
        return _typed(f"{_UNARY[name]}({conv[0]})", out)
    if name == "logistic":
        return f"_logistic{out.itemsize * 8}({conv[0]})"
    if name == "sign":
        one = f"_np.{_dt(out)}(1)"
        zero_or_nan = conv[0] if out.kind == "f" else f"_np.{_dt(out)}(0)"
        neg = f"_np.{_dt(out)}(-1)" if out.kind != "u" else zero_or_nan
        return f"({one} if {conv[0]} > 0 else ({neg} if {conv[0]} < 0 else {zero_or_nan}))"
    if name == "abs":
        return _typed(f"abs({conv[0]})", out)
    if name in _CMP:
        pd = _promoted(in_avals)
        a = [_cast(x, av.dtype, pd) for x, av in zip(args, in_avals)]
        return f"({a[0]} {_CMP[name]} {a[1]})"
    if name == "not":
        return f"(not {conv[0]})" if out.kind == "b" else _typed(f"~{conv[0]}", out)
    if name in ("and", "or"):
        if out.kind == "b":
            return f"({conv[0]} {name} {conv[1]})"
        return _typed(f"{conv[0]} {'&' if name == 'and' else '|'} {conv[1]}", out)
    if name == "select_n":
        which = args[0]
        cases = [_cast(c, av.dtype, out) for c, av in zip(args[1:], in_avals[1:])]
        return plan.select_src(which, cases, in_avals[0].dtype.kind == "b")
    if name == "convert_element_type":
        return _cast(args[0], in_avals[0].dtype, eqn.params["new_dtype"])
    raise AssertionError(f"cuda: no kernel code for {name}")  # can_fuse keeps this unreachable


_literal_src = plan.literal_src


# ---------------------------------------------------------------------------------------------
# Kernels


class KernelSpec:
    """One generated kernel: its module ``source``, its ``style`` and argument types
    (``("size",)``, ``("array", dtype name, ndim)``) for compiling it ahead of time."""

    __slots__ = ("source", "style", "arg_types", "summary")

    def __init__(self, source, style, arg_types, summary):
        self.source, self.style, self.arg_types, self.summary = source, style, arg_types, summary

    def module(self):
        return cache.load_module(self.source)[0]

    def numba_signature(self):
        from numba import types
        from numba.np.numpy_support import from_dtype
        sig = []
        for a in self.arg_types:
            if a[0] == "size":
                sig.append(types.int64)
            else:
                sig.append(types.Array(from_dtype(np.dtype(a[1])), a[2], "C"))
        return tuple(sig)

    def __repr__(self):
        return f"KernelSpec({self.style}, {self.summary})"


def compile_ptx(spec, cc=(9, 0)):
    """Compile a generated kernel to PTX for compute capability ``cc`` (no GPU needed)."""
    from numba import cuda
    ptx, _ = cuda.compile_ptx(spec.module().kernel, spec.numba_signature(), cc=cc)
    return ptx


def _coalesce(cluster):
    """``plan.coalesce``, with one loop dim of size 1 when every dim has size 1."""
    groups, loop_shape = plan.coalesce(cluster)
    if not groups:
        return [[]], (1,)
    return groups, loop_shape


_view_in_loop = plan.view_in_loop


def _reduction_axes(cluster):
    """The one axis set every reduction of the cluster uses, () when none; None when the
    reductions disagree (``_prepare`` then splits the cluster)."""
    sets = {tuple(sorted(e.params["axes"])) for e in cluster.eqns
            if e.primitive.name in plan.REDUCTIONS}
    if not sets:
        return ()
    return sets.pop() if len(sets) == 1 else None


def _acc_dtype(name, dt):
    if name == "reduce_sum":
        return np.dtype(np.float64) if dt.kind == "f" else (
            np.dtype(np.int64) if dt.kind == "i" else np.dtype(np.uint64))
    return dt


def _acc_init(name, dt, acc):
    if name == "reduce_sum":
        return f"_np.{_dt(acc)}(0)"
    if dt.kind == "f":
        return f"_np.{_dt(acc)}({'_NINF' if name == 'reduce_max' else '_INF'})"
    info = np.iinfo(dt)
    return f"_np.{_dt(acc)}({info.min if name == 'reduce_max' else info.max})"


def _combine(name, dt, a, b, acc):
    if name == "reduce_sum":
        return f"{a} + {b}"
    if dt.kind == "f":
        return f"_f{name[7:]}({a}, {b})"
    return f"{name[7:]}({a}, {b})"


def _choose_style(nk, nr, has_red):
    if not has_red:
        return "map"
    if nr >= BLOCKS_MIN_REDUCED and nk < ROWS_MIN_KEPT:
        return "blocks"
    return "rows"


def _decompose(var, dims, sizes, lines, ind):
    """Lines setting i<d> for each loop dim in ``dims`` from the flat row-major ``var``."""
    if not dims:
        return
    if len(dims) == 1:
        lines.append(f"{ind}i{dims[0]} = {var}")
        return
    lines.append(f"{ind}t_ = {var}")
    for d in reversed(dims[1:]):
        lines.append(f"{ind}i{d} = t_ % n{d}")
        lines.append(f"{ind}t_ = t_ // n{d}")
    lines.append(f"{ind}i{dims[0]} = t_")


def _kernel_source(cluster, groups, loop_shape, red_loop, style, target):
    """(source, arg plan, arg types, reductions) of the kernel for ``cluster``."""
    m = len(loop_shape)
    kept = [k for k in range(m) if k not in red_loop]
    params = [f"n{k}" for k in range(m)]
    arg_types = [("size",)] * m
    plan_ = []            # ("load", li, view) | ("out", var) | ("red", r)
    consts = []
    load_expr = {}
    for li, (op, view) in enumerate(cluster.loads):
        if type(op) is Literal:
            c = f"_c{len(consts)}"
            consts.append(f"{c} = {_literal_src(op.val, op.aval.dtype)}")
            load_expr[li] = c
            continue
        lv = _view_in_loop(view, groups)
        sub = ", ".join(f"i{k}" if lv[k] != 1 else "0" for k in range(m))
        load_expr[li] = f"l{li}[{sub}]"
        params.append(f"l{li}")
        arg_types.append(("array", _dt(op.aval.dtype), m))
        plan_.append(("load", li, lv))
    names, body, reds = {}, [], []
    for j, eqn in enumerate(cluster.eqns):
        name = eqn.primitive.name
        ov = eqn.outvars[0]
        if name == "broadcast_in_dim" and ov in cluster.value_load:
            names[ov] = load_expr[cluster.value_load[ov]]
            continue
        args = []
        for v in eqn.invars:
            kind, ref = cluster.operand_ref(v)
            args.append(names[ref] if kind == "val" else load_expr[ref])
        if name in plan.REDUCTIONS:
            dt = ov.aval.dtype
            acc = _acc_dtype(name, dt)
            reds.append((ov, name, dt, acc, _cast(args[0], eqn.invars[0].aval.dtype, acc)))
            continue
        body.append(f"v{j} = {_scalar_expr(eqn, args, [v.aval for v in eqn.invars])}")
        names[ov] = f"v{j}"
    full_idx = ", ".join(f"i{k}" for k in range(m))
    for oi, v in enumerate(cluster.outputs):
        if v in cluster.reduce_outs:
            continue
        params.append(f"o{oi}")
        arg_types.append(("array", _dt(v.aval.dtype), m))
        plan_.append(("out", v))
        body.append(f"o{oi}[{full_idx}] = {names[v]}")
    for r, (ov, name, dt, acc, val) in enumerate(reds):
        params.append(f"r{r}")
        arg_types.append(("array", _dt(acc), 2 if style == "blocks" else 1))
        plan_.append(("red", r))
        body.append(f"acc{r} = {_combine(name, dt, f'acc{r}', val, acc)}")
    nk = " * ".join(f"n{k}" for k in kept) or "1"
    nr = " * ".join(f"n{k}" for k in red_loop) or "1"
    L = ["def kernel(" + ", ".join(params + (["nb"] if style == "blocks" else [])) + "):"]
    if style == "blocks":
        arg_types.append(("size",))
    ind = "    "
    if style == "map":
        L.append(f"{ind}for kk in range(_cuda.grid(1), {nk}, _cuda.gridsize(1)):")
        _decompose("kk", kept, loop_shape, L, ind * 2)
        L += [ind * 2 + b for b in body]
    elif style == "rows":
        L.append(f"{ind}nr = {nr}")
        L.append(f"{ind}for kk in range(_cuda.grid(1), {nk}, _cuda.gridsize(1)):")
        for r, (_, name, dt, acc, _) in enumerate(reds):
            L.append(f"{ind * 2}acc{r} = {_acc_init(name, dt, acc)}")
        _decompose("kk", kept, loop_shape, L, ind * 2)
        L.append(f"{ind * 2}for rr in range(nr):")
        _decompose("rr", red_loop, loop_shape, L, ind * 3)
        L += [ind * 3 + b for b in body]
        for r in range(len(reds)):
            L.append(f"{ind * 2}r{r}[kk] = acc{r}")
    else:
        tpb = target.tpb
        L += [f"{ind}kk = _cuda.blockIdx.x // nb", f"{ind}c = _cuda.blockIdx.x % nb",
              f"{ind}tid = _cuda.threadIdx.x", f"{ind}nr = {nr}"]
        for r, (_, name, dt, acc, _) in enumerate(reds):
            L.append(f"{ind}acc{r} = {_acc_init(name, dt, acc)}")
        _decompose("kk", kept, loop_shape, L, ind)
        L.append(f"{ind}for rr in range(c * {tpb} + tid, nr, nb * {tpb}):")
        _decompose("rr", red_loop, loop_shape, L, ind * 2)
        L += [ind * 2 + b for b in body]
        for r, (_, name, dt, acc, _) in enumerate(reds):
            L += [f"{ind}sh{r} = _cuda.shared.array({tpb}, _np.{_dt(acc)})",
                  f"{ind}sh{r}[tid] = acc{r}"]
        L += [f"{ind}_cuda.syncthreads()", f"{ind}s = {tpb // 2}", f"{ind}while s > 0:",
              f"{ind * 2}if tid < s:"]
        for r, (_, name, dt, acc, _) in enumerate(reds):
            L.append(f"{ind * 3}sh{r}[tid] = "
                     f"{_combine(name, dt, f'sh{r}[tid]', f'sh{r}[tid + s]', acc)}")
        L += [f"{ind * 2}_cuda.syncthreads()", f"{ind * 2}s = s // 2", f"{ind}if tid == 0:"]
        for r in range(len(reds)):
            L.append(f"{ind * 2}r{r}[kk, c] = sh{r}[0]")
    src = (f"# functrax CUDA kernel, target {target.arch}, {target.tpb} threads per block\n"
           + _PRELUDE + "\n" + "".join(c + "\n" for c in consts) + "\n\n" + "\n".join(L) + "\n")
    return src, plan_, tuple(arg_types), reds


class _KernelStep:
    """A cluster lowered to one kernel launch (and, for 'blocks', a final partial reduction)."""

    def __init__(self, cluster, target):
        groups, loop_shape = _coalesce(cluster)
        axes = _reduction_axes(cluster)
        red_loop = [k for k, g in enumerate(groups) if any(d in axes for d in g)]
        kept = [k for k in range(len(loop_shape)) if k not in red_loop]
        nk = int(np.prod([loop_shape[k] for k in kept], dtype=np.int64))
        nr = int(np.prod([loop_shape[k] for k in red_loop], dtype=np.int64))
        has_red = bool(cluster.reduce_outs)
        self.style = style = _choose_style(nk, nr, has_red)
        src, self.plan, arg_types, self.reds = _kernel_source(
            cluster, groups, loop_shape, red_loop, style, target)
        self.cluster = cluster
        self.loop_shape = loop_shape
        self.nk, self.nr = nk, nr
        tpb = target.tpb
        if style == "blocks":
            # Enough blocks to fill the GPU, each thread still summing several elements.
            self.nb = max(1, min(-(-nr // (tpb * 4)), max(1, target.max_blocks // max(nk, 1))))
            self.grid = nk * self.nb
        else:
            self.nb = 1
            self.grid = max(1, min(-(-nk // tpb), target.max_blocks))
        self.block = tpb
        summary = (f"{style} kernel {cluster.shape} loop {loop_shape} "
                   f"{[str(e.primitive) for e in cluster.eqns]}")
        self.spec = KernelSpec(src, style, arg_types, summary)
        generated_kernels.append(self.spec)
        self._launcher = None
        self.reuse = {}  # position of an "out" in the plan -> position of the load it overwrites

    def plan_donation(self, owned, dying):
        """Let outputs overwrite donated inputs: an input in ``owned`` (donated, and read by
        no impl that could keep a view of it) that dies at this step, is read once at full
        shape (so each element is read and then written by the same thread) and has an
        output's dtype and size gives that output its buffer."""
        loads = [(k, it) for k, it in enumerate(self.plan) if it[0] == "load"]
        counts = {}
        for _, it in loads:
            op = self.cluster.loads[it[1]][0]
            counts[op] = counts.get(op, 0) + 1
        free = []
        for k, it in loads:
            op = self.cluster.loads[it[1]][0]
            if op in owned and op in dying and counts[op] == 1 and \
                    tuple(it[2]) == tuple(self.loop_shape):
                free.append((k, op))
        for k, it in enumerate(self.plan):
            if it[0] != "out":
                continue
            v = it[1]
            for n, (lk, op) in enumerate(free):
                if op.aval.dtype == v.aval.dtype and op.aval.size == v.aval.size:
                    self.reuse[k] = lk
                    del free[n]
                    break

    # -- running ----------------------------------------------------------------------------

    def bind(self, rt):
        """The launch callable (numba.cuda dispatcher configured for this grid)."""
        if self._launcher is None:
            mod = self.spec.module()
            disp = mod.__dict__.get("_functrax_dispatcher")
            if disp is None:
                from numba import cuda
                disp = cuda.jit(mod.kernel) if rt.sim else cuda.jit(cache=True)(mod.kernel)
                mod._functrax_dispatcher = disp
            self._launcher = disp[self.grid, self.block]
        return self._launcher

    def run(self, rt, env):
        xp = rt.xp
        launch = self.bind(rt)
        args = list(self.loop_shape)
        m = len(args)
        outs = []
        for k, item in enumerate(self.plan):
            if item[0] == "load":
                op, _ = self.cluster.loads[item[1]]
                args.append(rt.array_arg(env[op], op.aval.dtype, item[2]))
            elif item[0] == "out":
                v = item[1]
                lk = self.reuse.get(k)
                donor = args[m + lk] if lk is not None else None
                if donor is not None and donor.flags.writeable:
                    buf = donor  # a donated input's buffer (or array_arg's private copy)
                else:
                    buf = xp.empty(self.loop_shape, v.aval.dtype)
                args.append(buf)
                outs.append((v, buf))
            else:
                r = item[1]
                shape = (self.nk, self.nb) if self.style == "blocks" else (self.nk,)
                buf = xp.empty(shape, self.reds[r][3])
                args.append(buf)
                outs.append((self.reds[r][0], buf))
        if self.style == "blocks":
            args.append(self.nb)
        if rt.sim:
            with np.errstate(all="ignore"):
                launch(*args)
        else:
            launch(*args)
        for v, buf in outs:
            if v in self.cluster.reduce_outs:
                name, dt = next((n, d) for ov, n, d, _, _ in self.reds if ov is v)
                if self.style == "blocks":
                    if self.nb == 1:
                        buf = buf.reshape(self.nk)
                    else:
                        red = {"reduce_sum": xp.sum, "reduce_max": xp.max,
                               "reduce_min": xp.min}[name]
                        buf = red(buf, axis=1)
                if buf.dtype != dt:
                    buf = buf.astype(dt)
            env[v] = buf.reshape(v.aval.shape)


class _OpStep:
    def __init__(self, eqn, rt, lower_sub):
        self.eqn = eqn
        rule = lowering_rules.get(eqn.primitive.name)
        if rule is not None:
            self.fn = rule(eqn, lower_sub, rt)
        else:
            prim = eqn.primitive
            self.fn = functools.partial(prim.impl, **eqn.params) if eqn.params else prim.impl
        self.multiple = eqn.primitive.multiple_results

    def run(self, rt, env):
        args = [_py_literal(v) if type(v) is Literal else env[v] for v in self.eqn.invars]
        out = self.fn(*args)
        outs = out if self.multiple else [out]
        for v, o in zip(self.eqn.outvars, outs):
            if type(v) is not core.DropVar:
                env[v] = o


def _py_literal(lit):
    val = lit.val
    if lit.aval.weak_type and isinstance(val, (np.generic, np.ndarray)) and np.ndim(val) == 0:
        return np.asarray(val).item()
    return val


# ---------------------------------------------------------------------------------------------
# Programs


class Program:
    """A lowered program before it meets a device: the simplified jaxpr, its steps and the
    kernels generated for its clusters."""

    def __init__(self, jaxpr, consts, steps, kernels):
        self.jaxpr, self.consts, self.steps, self.kernels = jaxpr, consts, steps, kernels


def _split_by_reduction_axes(cluster):
    """A cluster whose reductions use different axis sets, as one cluster per axis set. Each
    recomputes the elementwise values its reductions need (cheaper than a round trip through
    memory); the first also writes the cluster's full-shape outputs."""
    producer = {v: (i, e) for i, e in cluster.items for v in e.outvars}
    by_axes = {}
    for _, e in cluster.items:
        if e.primitive.name in plan.REDUCTIONS:
            by_axes.setdefault(tuple(sorted(e.params["axes"])), []).append(e.outvars[0])
    full = [v for v in cluster.outputs if v not in cluster.reduce_outs]
    parts = []
    for n, roots in enumerate(by_axes.values()):
        roots = roots + (full if n == 0 else [])
        need, stack = set(), list(roots)
        while stack:
            v = stack.pop()
            if v in need or v not in producer:
                continue
            need.add(v)
            stack += [u for u in producer[v][1].invars if type(u) is not Literal]
        sub = Cluster(cluster.shape)
        for i, e in cluster.items:
            if any(v in need for v in e.outvars):
                sub.add(i, e)
        sub.sealed = True
        sub.finalize(set(roots))
        parts.append(sub)
    return parts


def _prepare(closed):
    jaxpr, consts = plan.prepare(closed.jaxpr, closed.consts)
    steps = []
    for st in plan.fuse(jaxpr, plan.DEFAULT_FUSIBLE, can_fuse):
        if isinstance(st, Cluster) and _reduction_axes(st) is None:
            steps += _split_by_reduction_axes(st)
        else:
            steps.append(st)
    return jaxpr, consts, steps


def generate(closed, target=None):
    """Code generation only (no device needed): the ``Program`` of ``closed`` for ``target``
    (default: a cc 9.0 GPU). Control-flow bodies are generated too, recursively."""
    target = target or Target()
    jaxpr, consts, steps = _prepare(closed)
    kernels = []
    for st in steps:
        if isinstance(st, Cluster):
            kernels.append(_KernelStep(st, target).spec)
        else:
            for sub in core.subjaxprs_of_eqn(st.eqn):
                sub_closed = sub if isinstance(sub, core.ClosedJaxpr) else \
                    core.ClosedJaxpr(sub, [])
                kernels += generate(sub_closed, target).kernels
    return Program(jaxpr, consts, steps, kernels)


class Executable:
    """A program lowered for the runtime's device: call it with the flat inputs (host or
    device arrays, numbers) and get the flat outputs as device arrays."""

    def __init__(self, rt, jaxpr, consts, runners, summary, kernel_sources, original):
        self.rt = rt
        self.jaxpr = jaxpr
        self.consts = consts
        self.runners = runners
        self.steps_summary = summary
        self.kernel_sources = kernel_sources
        self.original = original
        self.source = "# CUDA driver: steps run in order\n" + "\n".join(
            f"#   {s}" for s in summary) + "\n"
        self.first_run = {}
        self.compile_seconds = 0.0
        self.numba_compiles = 0
        self.numba_disk_hits = 0
        self._invars = list(jaxpr.invars)
        self._constenv = dict(zip(jaxpr.constvars, consts))
        self._free = _free_lists(runners, jaxpr)

    def __call__(self, *args):
        rt = self.rt
        env = dict(self._constenv)
        for v, x in zip(self._invars, args):
            env[v] = rt.to_device(x)
        for runner, dead in zip(self.runners, self._free):
            runner.run(rt, env)
            for v in dead:
                env.pop(v, None)
        outs = []
        for v in self.jaxpr.outvars:
            if type(v) is Literal:
                o = rt.xp.asarray(np.asarray(v.val, v.aval.dtype))
            else:
                o = env[v]
                if v in self._constenv:
                    o = rt.xp.array(o, copy=True)
            if getattr(o, "dtype", None) != v.aval.dtype:
                o = rt.xp.asarray(o, dtype=v.aval.dtype)
            outs.append(rt.wrap_out(o))
        return outs

    fn = __call__

    def as_text(self):
        parts = ["# simplified jaxpr", str(self.jaxpr), self.source]
        for i, src in enumerate(self.kernel_sources):
            parts += [f"# kernel {i}", src]
        return "\n".join(parts)


def _step_inputs(runner):
    if isinstance(runner, _KernelStep):
        return [op for op, _ in runner.cluster.loads if type(op) is not Literal]
    return [v for v in runner.eqn.invars if type(v) is not Literal]


def _free_lists(runners, jaxpr):
    """Per step, the values that die after it (device memory is the scarce resource)."""
    last = {}
    for i, r in enumerate(runners):
        for v in _step_inputs(r):
            last[v] = i
    keep = {v for v in jaxpr.outvars if type(v) is not Literal} | set(jaxpr.constvars)
    out = [[] for _ in runners]
    for v, i in last.items():
        if v not in keep:
            out[i].append(v)
    return out


def lower(closed, donated=(), name="jitted", sub_lowering=None):
    """Lower a ClosedJaxpr to an ``Executable`` on the process's CUDA runtime."""
    rt = runtime()
    jaxpr, consts, steps = _prepare(closed)
    lower_sub = sub_lowering or (lambda c: lower(c))
    runners, summary, sources = [], [], []
    for st in steps:
        if isinstance(st, Cluster):
            k = _KernelStep(st, rt.target)
            runners.append(k)
            summary.append(k.spec.summary)
            sources.append(k.spec.source)
        else:
            runners.append(_OpStep(st.eqn, rt, lower_sub))
            summary.append(f"op {st.eqn.primitive}")
    consts = [rt.to_device(c) for c in consts]
    exe = Executable(rt, jaxpr, consts, runners, summary, sources, closed)
    # donate_argnums: kernels may write their outputs into donated inputs' buffers. Inputs
    # an impl reads are left alone: its result may be a view of them (reshape, transpose).
    donated = tuple(donated) + (False,) * (len(jaxpr.invars) - len(donated))
    owned = {v for v, d in zip(jaxpr.invars, donated) if d}
    for r in runners:
        if isinstance(r, _OpStep):
            owned -= set(_step_inputs(r))
    owned -= {v for v in jaxpr.outvars if type(v) is not Literal}
    if owned:
        for r, dying in zip(runners, exe._free):
            if isinstance(r, _KernelStep):
                r.plan_donation(owned, set(dying))
    # Build the dispatchers now (imports the kernel modules); numba-cuda compiles a kernel on
    # its first launch, for the argument types it sees.
    for r in runners:
        if isinstance(r, _KernelStep):
            r.bind(rt)
    return exe


# ---------------------------------------------------------------------------------------------
# Control flow: bodies lowered once to this back end, looped with the state on the device.


def _fit(xp, outs, avals):
    res = []
    for o, a in zip(outs, avals):
        if getattr(o, "dtype", None) != a.dtype:
            o = xp.asarray(o, dtype=a.dtype)
        res.append(o)
    return res


def _plain(rt, x):
    # Loop state as the raw device array (no per-step wrapping in the simulator).
    return np.asarray(x) if rt.sim and isinstance(x, np.ndarray) else x


def _scan_rule(eqn, lower_sub, rt):
    xp = rt.xp
    return plan.scan_runner(eqn, lower_sub(eqn.params["jaxpr"]),
                            lambda outs, avals: _fit(xp, outs, avals), rt.to_device, xp.empty,
                            plain=lambda x: _plain(rt, x))


def _cond_rule(eqn, lower_sub, rt):
    return plan.cond_runner(eqn, [lower_sub(b) for b in eqn.params["branches"]],
                            lambda outs, avals: _fit(rt.xp, outs, avals))


def _while_rule(eqn, lower_sub, rt):
    p = eqn.params
    return plan.while_runner(eqn, lower_sub(p["cond_jaxpr"]), lower_sub(p["body_jaxpr"]),
                             lambda outs, avals: _fit(rt.xp, outs, avals),
                             plain=lambda x: _plain(rt, x))


lowering_rules["scan"] = _scan_rule
lowering_rules["cond"] = _cond_rule
lowering_rules["while"] = _while_rule


# ---------------------------------------------------------------------------------------------
# Convolution through cuDNN (CuPy's cudnn module), with the array library's impl as fallback.
#
# cuDNN computes three things, always with symmetric padding, NC+spatial layouts and feature
# groups: the forward correlation, its adjoint in the input (``backward_data``: a transposed
# convolution) and its adjoint in the kernel (``backward_filter``). ``cudnn_conv_plan`` maps a
# ``conv_general_dilated`` onto one of them (pure shape arithmetic, tested without a GPU):
#   * input dilation (the input gradient of a strided convolution, from the transpose rule)
#     -> backward_data, the dilation becoming the stride;
#   * batch groups (the kernel gradient of a grouped convolution), or a window larger than
#     the output (the kernel gradient: the cotangent acts as the window) -> backward_filter;
#   * otherwise -> forward.
# Asymmetric or negative padding becomes an explicit pad/crop of the data operand around a
# symmetric cuDNN padding; 1-D convolutions get a unit spatial dim.

_CUDNN_DTYPES = ("float16", "float32", "float64")


class CudnnConvPlan:
    """How cuDNN computes one ``conv_general_dilated`` (see ``cudnn_conv_plan``)."""

    __slots__ = ("op", "perms", "out_perm", "pad", "stride", "dilation", "groups",
                 "in_adjust", "out_adjust", "unit_dim", "y_shape", "kernel_groups")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def __repr__(self):
        return (f"CudnnConvPlan({self.op}, pad={self.pad}, stride={self.stride}, "
                f"dilation={self.dilation}, groups={self.groups}, in_adjust={self.in_adjust}, "
                f"out_adjust={self.out_adjust})")


def _dil(d, r):
    return 0 if d == 0 else (d - 1) * r + 1


def _sym_pad(lo, size, read):
    """Symmetric pad p and the explicit (low, high) pad (>0) or crop (<0) of a data dim of
    ``size`` padded by ``lo`` below, of which the first ``read`` positions are read: after
    the adjustment, cuDNN's [p zeros, data, p zeros] is exactly those ``read`` positions."""
    hi = read - lo - size
    p = max(0, min(lo, hi))
    return p, (lo - p, hi - p)


def cudnn_conv_plan(lhs_shape, rhs_shape, lhs_dtype, rhs_dtype, params):
    """The ``CudnnConvPlan`` for a ``conv_general_dilated`` of operands of these shapes and
    dtypes with these params, or None when cuDNN cannot compute it (integer dtypes, more
    than three spatial dims, strided transposed convolutions, ...)."""
    from ..lax.conv import _conv_out_spatial
    dt = np.dtype(lhs_dtype)
    pet = params.get("preferred_element_type")
    if np.dtype(rhs_dtype) != dt or dt.name not in _CUDNN_DTYPES or \
            (pet is not None and np.dtype(pet) != dt):
        return None
    lspec, rspec, ospec = params["dimension_numbers"]
    nsp = len(lspec) - 2
    if not 1 <= nsp <= 3 or 0 in lhs_shape or 0 in rhs_shape:
        return None
    ws, pads = tuple(params["window_strides"]), tuple(params["padding"])
    ld, rd = tuple(params["lhs_dilation"]), tuple(params["rhs_dilation"])
    G, BG = params["feature_group_count"], params["batch_group_count"]
    in_sp = [lhs_shape[d] for d in lspec[2:]]
    k_sp = [rhs_shape[d] for d in rspec[2:]]
    out_sp = list(_conv_out_spatial(tuple(in_sp), tuple(k_sp), ws, pads, ld, rd))
    if 0 in out_sp:
        return None
    inv = [0] * (nsp + 2)
    for pos, d in enumerate(ospec):
        inv[d] = pos
    # out_perm takes the canonical output (batch, feature, *spatial) to ospec's layout.
    out_perm = tuple(inv)
    unit = nsp == 1
    if any(r > 1 for r in ld):
        if any(s != 1 for s in ws) or BG != 1:
            return None
        pad, adj, sizes = [], [], []
        for D, c, k, (before, _), s, r in zip(out_sp, in_sp, k_sp, pads, ld, rd):
            # The forward convolution this is the input adjoint of: input size D, low pad
            # keff - 1 - before, stride s, c outputs reading the first (c-1)s + keff padded
            # positions. cuDNN computes the adjoint for the input those positions hold
            # (symmetric pad p); the explicit part of the padding is cropped off the result,
            # and input positions no window reads get zeros.
            keff = _dil(k, r)
            p, (lo, hi) = _sym_pad(keff - 1 - before, D, (c - 1) * s + keff)
            size = (c - 1) * s + keff - 2 * p
            if size < 1:
                return None
            pad.append(p)
            adj.append((-lo, -hi))
            sizes.append(size)
        n, o = lhs_shape[lspec[0]], rhs_shape[rspec[0]]
        return CudnnConvPlan(
            op="backward_data", perms=(tuple(lspec), tuple(rspec)), out_perm=out_perm,
            pad=tuple(pad), stride=ld, dilation=rd, groups=G, in_adjust=None,
            out_adjust=tuple(adj), unit_dim=unit, y_shape=(n, o) + tuple(sizes),
            kernel_groups=G)
    window_bigger = math.prod(k_sp) > math.prod(out_sp)
    if BG > 1 or (G == 1 and window_bigger):
        if G != 1:
            return None
        # The C' of a kernel gradient: its lhs is the forward input with batch and feature
        # swapped, its rhs the output cotangent likewise, its output the kernel gradient.
        pad, adj = [], []
        for D, c, kf, (lo, _), s, r in zip(in_sp, k_sp, out_sp, pads, rd, ws):
            p, a = _sym_pad(lo, D, (c - 1) * s + (kf - 1) * r + 1)
            pad.append(p)
            adj.append(a)
        o_f, i_f = rhs_shape[rspec[0]], lhs_shape[lspec[0]]
        return CudnnConvPlan(
            op="backward_filter",
            perms=((lspec[1], lspec[0]) + tuple(lspec[2:]), (rspec[1], rspec[0]) +
                   tuple(rspec[2:])),
            out_perm=out_perm, pad=tuple(pad), stride=rd, dilation=ws, groups=BG,
            in_adjust=tuple(adj), out_adjust=None, unit_dim=unit,
            y_shape=(o_f, i_f // BG) + tuple(out_sp), kernel_groups=BG)
    pad, adj = [], []
    for D, k, o, (lo, _), s, r in zip(in_sp, k_sp, out_sp, pads, ws, rd):
        p, a = _sym_pad(lo, D, (o - 1) * s + (k - 1) * r + 1)
        pad.append(p)
        adj.append(a)
    n, o_f = lhs_shape[lspec[0]], rhs_shape[rspec[0]]
    return CudnnConvPlan(
        op="forward", perms=(tuple(lspec), tuple(rspec)), out_perm=out_perm, pad=tuple(pad),
        stride=ws, dilation=rd, groups=G, in_adjust=tuple(adj), out_adjust=None,
        unit_dim=unit, y_shape=(n, o_f) + tuple(out_sp), kernel_groups=G)


def _adjust(xp, x, adj):
    """Pad (>0) or crop (<0) the spatial dims (from dim 2) of x by adj's (low, high)."""
    if all(a == (0, 0) for a in adj):
        return x
    crop = [slice(None), slice(None)]
    widths = [(0, 0), (0, 0)]
    for n, (lo, hi) in zip(x.shape[2:], adj):
        crop.append(slice(max(0, -lo), n - max(0, -hi)))
        widths.append((max(0, lo), max(0, hi)))
    return xp.pad(x[tuple(crop)], widths)


def run_cudnn_conv(plan, lhs, rhs, xp, cudnn):
    """Compute the convolution ``plan`` describes with ``cudnn`` (CuPy's cudnn module, or a
    stand-in with its three functions) on arrays of the namespace ``xp``."""
    a = xp.transpose(xp.asarray(lhs), plan.perms[0])
    b = xp.transpose(xp.asarray(rhs), plan.perms[1])
    y_shape = plan.y_shape
    pad, stride, dil = plan.pad, plan.stride, plan.dilation
    if plan.unit_dim:
        a, b = a[..., None], b[..., None]
        y_shape, pad, stride, dil = y_shape + (1,), pad + (0,), stride + (1,), dil + (1,)
    if plan.in_adjust is not None:
        a = _adjust(xp, a, plan.in_adjust + ((0, 0),) * plan.unit_dim)
    a, b = xp.ascontiguousarray(a), xp.ascontiguousarray(b)
    y = xp.empty(y_shape, a.dtype)
    common = dict(auto_tune=False, tensor_core="auto")
    if plan.op == "forward":
        cudnn.convolution_forward(a, b, None, y, pad, stride, dil, plan.groups, **common)
    elif plan.op == "backward_filter":
        cudnn.convolution_backward_filter(a, b, y, pad, stride, dil, plan.groups,
                                          deterministic=False, **common)
        y = xp.swapaxes(y, 0, 1)  # (O, I/g, ...) -> the kernel gradient's (I/g, O, ...)
    else:
        # The transposed convolution's kernel (O'=C_gx, I'=C_gy/G, *k), spatially flipped,
        # is the forward kernel (C_gy, C_gx/G, *k) with in/out swapped within each group.
        g = plan.kernel_groups
        o2, i2 = b.shape[:2]
        k = b.shape[2:]
        w = b.reshape((g, o2 // g, i2) + k)
        w = xp.swapaxes(w, 1, 2).reshape((g * i2, o2 // g) + k)
        w = xp.ascontiguousarray(w[(slice(None),) * 2 + (slice(None, None, -1),) * len(k)])
        cudnn.convolution_backward_data(w, a, None, y, pad, stride, dil, plan.groups,
                                        deterministic=False, **common)
        y = _adjust(xp, y, plan.out_adjust + ((0, 0),) * plan.unit_dim)
    if plan.unit_dim:
        y = y[..., 0]
    return xp.transpose(y, plan.out_perm)


def cudnn_module():
    """CuPy's cuDNN bindings (``cupyx.cudnn``, older CuPy: ``cupy.cudnn``), or None when CuPy
    or cuDNN is missing."""
    for name in ("cupyx.cudnn", "cupy.cudnn"):
        try:
            import importlib
            mod = importlib.import_module(name)
            if hasattr(mod, "convolution_forward"):
                return mod
        except Exception:  # not installed, or libcudnn missing
            continue
    return None


def _conv_rule(eqn, lower_sub, rt):
    impl = functools.partial(eqn.primitive.impl, **eqn.params)
    cudnn = None if rt.sim else cudnn_module()
    lhs, rhs = eqn.invars
    plan_ = None if cudnn is None else cudnn_conv_plan(
        lhs.aval.shape, rhs.aval.shape, lhs.aval.dtype, rhs.aval.dtype, eqn.params)
    if plan_ is None:
        return impl  # the impl on device arrays: CuPy's matmul (cuBLAS) over patches
    xp = rt.xp
    return lambda a, b: run_cudnn_conv(plan_, a, b, xp, cudnn)


lowering_rules["conv_general_dilated"] = _conv_rule
