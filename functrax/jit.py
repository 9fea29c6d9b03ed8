"""``jit``: trace once per argument signature, lower to fused kernels, run compiled.

``jit(f)`` returns a ``JitFunction``. A call flattens the arguments and looks up a cache keyed
on (tree structure, shapes, dtypes, weak types, static values, back end); a known key runs the
compiled program without tracing (a few microseconds of dispatch). A new key traces ``f`` to
a jaxpr; the program is lowered (``functrax.lowering``) on its first concrete call.

``jit`` is itself a primitive, ``pjit_p``, whose parameter ``jaxpr`` is the traced program, so
every transformation composes with it: JVP (``jvp_jaxpr``), linearize (a partial-evaluation
rule splitting the body into a known and an unknown call), transposition, batching, and
nesting (an inner jit is a ``pjit`` equation, inlined by the lowering). Values the function
closes over that are being traced become explicit inputs of the call.

Accounting is always on: ``f.stats`` counts traces, cache hits and misses, lowerings and numba
compiles, with the seconds spent in each phase, and keeps an explanation of every retrace
(logged when ``functrax.config.explain_retraces`` or ``FUNCTRAX_EXPLAIN_RETRACES=1``).

>>> import functrax as ft, functrax.numpy as fnp
>>> f = ft.jit(lambda x, y: fnp.sin(x) * y + 1.0)
>>> f(fnp.zeros(3), 2.0).tolist()
[1.0, 1.0, 1.0]
>>> f(fnp.ones(3), 3.0).shape, f.stats.traces
((3,), 1)
>>> ft.grad(lambda x: f(x, 2.0).sum())(fnp.zeros(2)).tolist()
[2.0, 2.0]
"""
from __future__ import annotations

import functools
import inspect
import logging
import time
from contextlib import contextmanager

import numpy as np

from . import config as _cfg
from . import core, dtypes, lowering
from ._lru import LRUCache
from .devices import infer_backend
from .array import Array
from .core import ClosedJaxpr, Jaxpr, Primitive, ShapedArray, Tracer
from .interpreters import batching
from .interpreters import jvp as ad
from .interpreters.partial_eval import partial_eval_jaxpr
from .interpreters.transpose import is_undefined_primal, transpose_jaxpr, transpose_rules
from .tree_util import keystr, tree_flatten, tree_flatten_with_path, tree_unflatten

__all__ = ["jit", "disable_jit", "pjit_p", "JitFunction", "JitStats", "Lowered", "Compiled"]

_log = logging.getLogger("functrax.jit")

# ---------------------------------------------------------------------------------------------
# The pjit primitive


pjit_p = Primitive("pjit")
pjit_p.multiple_results = True


def _pjit_impl(*args, jaxpr, name, backend, donated):
    exe = lowering.compile_jaxpr(jaxpr, backend, donated, name)
    return exe(*args)


def _pjit_abstract_eval(*avals, jaxpr, name, backend, donated):
    if len(avals) != len(jaxpr.in_avals):
        raise TypeError(f"pjit {name}: expected {len(jaxpr.in_avals)} arguments, got "
                        f"{len(avals)}")
    for i, (a, b) in enumerate(zip(avals, jaxpr.in_avals)):
        if not a.same_type(b):
            raise TypeError(f"pjit {name}: argument {i} has type {a.str_short()} but the "
                            f"traced program expects {b.str_short()}")
    return list(jaxpr.out_avals)


pjit_p.def_impl(_pjit_impl)
pjit_p.def_abstract_eval(_pjit_abstract_eval)


def _derived(cache, key, source, make):
    """Memoise a program derived from ``source`` (jvp, partial eval, transpose, batch), so
    repeated transformations of one jitted function reuse its compiled programs."""
    hit = cache.get(key)
    if hit is not None:
        return hit[1]
    out = make()
    cache[key] = (source, out)
    owner = lowering.stats_owner(source)
    if owner is not None:
        for item in (out if isinstance(out, tuple) else (out,)):
            if isinstance(item, ClosedJaxpr):
                lowering.stats_owner(item, owner)
    return out


# Bounded: each entry keeps its source jaxpr alive (its id is the key).
_jvp_cache = LRUCache(lambda: _cfg.jit_cache_size)
_pe_cache = LRUCache(lambda: _cfg.jit_cache_size)
_transpose_cache = LRUCache(lambda: _cfg.jit_cache_size)
_batch_cache = LRUCache(lambda: _cfg.jit_cache_size)


def _nonzero_tangent(t):
    return not ad.is_zero(t) and core.get_aval(t).dtype != dtypes.float0


def _pjit_jvp(primals, tangents, *, jaxpr, name, backend, donated):
    nonzeros = tuple(_nonzero_tangent(t) for t in tangents)
    jvp_closed, out_nz = _derived(
        _jvp_cache, (id(jaxpr), nonzeros), jaxpr,
        lambda: ad.jvp_jaxpr(jaxpr, list(nonzeros), instantiate=False))
    nz_tangents = [t for t, nz in zip(tangents, nonzeros) if nz]
    outs = pjit_p.bind(*primals, *nz_tangents, jaxpr=jvp_closed, name=f"jvp({name})",
                       backend=backend, donated=(False,) * len(jvp_closed.in_avals))
    n_out = len(jaxpr.out_avals)
    it = iter(outs[n_out:])
    t_out = [next(it) if nz else ad.Zero(ad.tangent_aval(a))
             for nz, a in zip(out_nz, jaxpr.out_avals)]
    return outs[:n_out], t_out


ad.jvp_rules[pjit_p] = _pjit_jvp


def _pjit_partial_eval(trace, tracers, params):
    jaxpr = params["jaxpr"]
    known, vals = [], []
    for t in tracers:
        k, v = trace.known_value(t)
        known.append(k)
        vals.append(v)
    if all(known):
        return pjit_p.bind(*vals, **params)
    in_unknowns = tuple(not k for k in known)
    known_cj, unknown_cj, out_unknowns, num_res = _derived(
        _pe_cache, (id(jaxpr), in_unknowns), jaxpr,
        lambda: partial_eval_jaxpr(jaxpr, list(in_unknowns)))
    name, backend = params["name"], params["backend"]
    known_vals = [v for v, k in zip(vals, known) if k]
    known_res = pjit_p.bind(*known_vals, jaxpr=known_cj, name=f"known({name})",
                            backend=backend, donated=(False,) * len(known_vals))
    n_known_out = len(known_res) - num_res
    known_outs, residuals = known_res[:n_known_out], known_res[n_known_out:]
    res_tracers = [trace.pure(r) for r in residuals]
    unknown_in = [t for t, u in zip(tracers, in_unknowns) if u]
    out_avals = [a for a, u in zip(jaxpr.out_avals, out_unknowns) if u]
    unk_params = dict(jaxpr=unknown_cj, name=f"unknown({name})", backend=backend,
                      donated=(False,) * len(unknown_cj.in_avals))
    unknown_outs = trace.record_eqn(pjit_p, res_tracers + unknown_in, unk_params, out_avals)
    ki, ui = iter(known_outs), iter(unknown_outs)
    return [next(ui) if u else next(ki) for u in out_unknowns]


core.partial_eval_rules[pjit_p] = _pjit_partial_eval


def _pjit_transpose(cts, *args, jaxpr, name, backend, donated):
    linear = tuple(is_undefined_primal(a) for a in args)
    t_closed = _derived(_transpose_cache, (id(jaxpr), linear), jaxpr,
                        lambda: transpose_jaxpr(jaxpr, list(linear)))
    nonlin = [a for a, lin in zip(args, linear) if not lin]
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    outs = pjit_p.bind(*nonlin, *cts, jaxpr=t_closed, name=f"transpose({name})",
                       backend=backend, donated=(False,) * len(t_closed.in_avals))
    it = iter(outs)
    return [next(it) if lin else None for lin in linear]


transpose_rules[pjit_p] = _pjit_transpose


def _pjit_batch(axis_data, vals, dims, *, jaxpr, name, backend, donated):
    if all(d is None for d in dims):
        outs = pjit_p.bind(*vals, jaxpr=jaxpr, name=name, backend=backend, donated=donated)
        return outs, [None] * len(outs)
    dims = tuple(dims)
    key = (id(jaxpr), dims, axis_data.size, axis_data.name)
    b_closed, out_dims = _derived(
        _batch_cache, key, jaxpr,
        lambda: batching.batch_jaxpr(jaxpr, axis_data.size, list(dims),
                                     [None] * len(jaxpr.out_avals), axis_data.name))
    outs = pjit_p.bind(*vals, jaxpr=b_closed, name=f"vmap({name})", backend=backend,
                       donated=donated)
    return outs, list(out_dims)


batching.axis_batching_rules[pjit_p] = _pjit_batch


# ---------------------------------------------------------------------------------------------
# Accounting


class JitStats:
    """What a jitted function has cost so far. ``retraces`` explains every trace after the
    first (which argument's shape, dtype, weak type or static value changed)."""

    __slots__ = ("traces", "cache_hits", "cache_misses", "lowerings", "numba_compiles",
                 "numba_disk_hits", "trace_seconds", "lower_seconds", "compile_seconds",
                 "retraces")

    def __init__(self):
        self.traces = self.cache_hits = self.cache_misses = self.lowerings = 0
        self.numba_compiles = self.numba_disk_hits = 0
        self.trace_seconds = self.lower_seconds = self.compile_seconds = 0.0
        self.retraces = []

    @property
    def compiles(self):
        """Programs lowered (each may build several kernels)."""
        return self.lowerings

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self):
        return (f"JitStats(traces={self.traces}, cache_hits={self.cache_hits}, "
                f"cache_misses={self.cache_misses}, lowerings={self.lowerings}, "
                f"numba_compiles={self.numba_compiles}, numba_disk_hits="
                f"{self.numba_disk_hits}, trace={self.trace_seconds:.4f}s, "
                f"lower={self.lower_seconds:.4f}s, compile={self.compile_seconds:.4f}s, "
                f"retraces={len(self.retraces)})")


# ---------------------------------------------------------------------------------------------
# Argument signatures

_WEAK_FLOAT = ("weak", np.dtype(np.float64))
_WEAK_INT = ("weak", np.dtype(np.int64))
_WEAK_COMPLEX = ("weak", np.dtype(np.complex128))
_BOOL = ((), np.dtype(np.bool_))
_PY_SIGS = {float: _WEAK_FLOAT, int: _WEAK_INT, complex: _WEAK_COMPLEX, bool: _BOOL}
_ARRAY_TYPES = (np.ndarray, Array)
_NP_SCALARS = frozenset(t for t in set(np.sctypeDict.values())
                        if issubclass(t, np.generic) and np.dtype(t).kind in "biufc")


def _leaf_sig(x):
    """The part of the cache key one leaf contributes (None: not an array)."""
    t = type(x)
    s = _PY_SIGS.get(t)
    if s is not None:
        return s
    if isinstance(x, Tracer):
        a = x.aval
        return (a.shape, a.dtype, True) if a.weak_type else (a.shape, a.dtype)
    if isinstance(x, (np.ndarray, np.generic)):
        return (x.shape, x.dtype)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return (tuple(x.shape), np.dtype(x.dtype))
    return None


def _sig_text(sig):
    if sig[0] == "weak":
        return f"{sig[1].name}[] (weak-typed Python scalar)"
    shape, dtype = sig[0], sig[1]
    weak = ", weak-typed" if len(sig) > 2 else ""
    return f"{dtype.name}{list(shape)}{weak}"


def _sig_aval(sig):
    if sig[0] == "weak":
        return ShapedArray((), sig[1], True)
    return ShapedArray(sig[0], sig[1], len(sig) > 2)


def _is_static_value_ok(v):
    try:
        hash(v)
    except TypeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The jitted function


class _Entry:
    """One traced signature: the program and what running it needs."""

    __slots__ = ("closed", "out_tree", "single", "name", "backend", "donated", "exe", "params",
                 "tracer_consts", "desc", "n_out", "fn")

    def _first(self, *leaves):
        # Lower and run once (numba kernels compile or load here), then dispatch straight to
        # the generated driver.
        exe = self.executable()
        outs = exe(*leaves)
        self.fn = getattr(exe, "fn", exe)
        return outs

    def executable(self):
        if self.exe is None:
            self.exe = lowering.compile_jaxpr(self.closed, self.backend, self.donated,
                                              self.name)
        return self.exe

    def run(self, leaves):
        return self.fn(*leaves)


class JitFunction:
    """A function compiled on first use per argument signature (see ``functrax.jit``)."""

    def __init__(self, fun, static_argnums=(), static_argnames=(), donate_argnums=(),
                 backend=None):
        if not callable(fun):
            raise TypeError(f"jit: expected a callable, got {type(fun).__name__}")
        functools.update_wrapper(self, fun)
        self._fun = fun
        self._name = getattr(fun, "__name__", type(fun).__name__)
        static_argnums = (static_argnums,) if isinstance(static_argnums, int) else \
            tuple(static_argnums)
        static_argnames = (static_argnames,) if isinstance(static_argnames, str) else \
            tuple(static_argnames)
        self._donate = (donate_argnums,) if isinstance(donate_argnums, int) else \
            tuple(donate_argnums)
        # As in JAX, a static argument can be named by position or by name: fill in the other.
        try:
            params = list(inspect.signature(fun).parameters.values())
        except (TypeError, ValueError):
            params = []
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)]
        nums, names = set(static_argnums), set(static_argnames)
        for i in static_argnums:
            if 0 <= i < len(positional):
                names.add(positional[i])
        for nm in static_argnames:
            if nm in positional:
                nums.add(positional.index(nm))
        self._static_nums = frozenset(nums)
        self._static_names = frozenset(names)
        self._positional = positional
        self._backend = lowering.canonical_backend(backend) if backend is not None else None
        self._simple = not nums and not names and not self._donate
        self._fast = {}
        self._cache = {}
        self.stats = JitStats()

    def __repr__(self):
        return f"<functrax.jit of {self._name}>"

    def __get__(self, obj, objtype=None):
        # Decorating a method: bind like a function does.
        if obj is None:
            return self
        return functools.partial(self, obj)

    # -- calling ----------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        # The fast path: positional array/scalar arguments with a known signature run the
        # compiled driver directly, with no flattening and no tracing.
        if self._simple and not kwargs and not _cfg.disable_jit:
            fast = self._fast.get(self._backend or _cfg.default_backend)
            if fast is not None:
                if len(args) == 1:
                    x = args[0]
                    t = type(x)
                    if t is Array or t is np.ndarray or t in _NP_SCALARS:
                        key = (x.shape, x.dtype)
                    else:
                        key = _PY_SIGS.get(t)
                else:
                    key = []
                    for x in args:
                        t = type(x)
                        if t is Array or t is np.ndarray or t in _NP_SCALARS:
                            key.append((x.shape, x.dtype))
                        else:
                            s = _PY_SIGS.get(t)
                            if s is None:
                                key = None
                                break
                            key.append(s)
                    if key is not None:
                        key = tuple(key)
                entry = fast.get(key) if key is not None else None
                if entry is not None and core._state.dynamic is None:
                    self.stats.cache_hits += 1
                    outs = entry.fn(*args)
                    return outs[0] if entry.single else tree_unflatten(entry.out_tree, outs)
        return self._call_general(args, kwargs)

    def _split(self, args, kwargs):
        if not self._static_nums and not self._static_names:
            return args, kwargs, ()
        statics = []
        dyn_args = []
        for i, a in enumerate(args):
            if i in self._static_nums:
                # Keyed by parameter name where there is one, so f(x, 3) and f(x, n=3) share
                # a cache entry.
                statics.append((self._positional[i] if i < len(self._positional) else i, a))
            else:
                dyn_args.append(a)
        dyn_kwargs = {}
        for k, v in kwargs.items():
            if k in self._static_names:
                statics.append((k, v))
            else:
                dyn_kwargs[k] = v
        for where, v in statics:
            if not _is_static_value_ok(v):
                what = f"argument {where}" if isinstance(where, int) else f"argument '{where}'"
                raise TypeError(f"jit of {self._name}: static {what} must be hashable (it is "
                                f"part of the cache key), got {type(v).__name__}: {v!r}. "
                                f"Pass a tuple instead of a list, or make it a dynamic "
                                f"argument.")
        return tuple(dyn_args), dyn_kwargs, tuple(statics)

    def _entry(self, args, kwargs, lowering):
        """The cache entry for these arguments, traced on a miss (the caller decides whether
        to keep a new one). Static arguments are split off, the rest flattened, and each
        leaf's part of the cache key computed: a call turns list/tuple leaves into arrays;
        ``lower`` also takes ShapeDtypeStructs (with their weak type). Returns (entry, new,
        key, leaves, in_tree, sigs, statics, backend)."""
        dyn_args, dyn_kwargs, statics = self._split(args, kwargs)
        leaves, in_tree = tree_flatten((dyn_args, dyn_kwargs))
        # Where the arguments live picks the back end (GPU arrays -> cuda), unless given.
        backend = self._backend or infer_backend(leaves) or _cfg.default_backend
        sigs = []
        for i, x in enumerate(leaves):
            s = _leaf_sig(x)
            if s is None:
                if lowering:
                    raise TypeError(f"jit of {self._name}.lower: a leaf of type "
                                    f"{type(x).__name__} is not an array or a "
                                    f"ShapeDtypeStruct")
                if not isinstance(x, (list, tuple)):
                    raise TypeError(
                        f"jit of {self._name}: an argument leaf of type {type(x).__name__} is "
                        f"not an array ({x!r}); pass arrays or numbers, or mark the argument "
                        f"static with static_argnums / static_argnames")
                x = leaves[i] = np.asarray(x)
                s = _leaf_sig(x)
            elif lowering and getattr(x, "weak_type", False) and s[0] != "weak":
                s = (s[0], s[1], True)
            sigs.append(s)
        key = (in_tree, tuple(sigs), statics, backend)
        entry = self._cache.get(key)
        if entry is not None:
            return entry, False, key, leaves, in_tree, sigs, statics, backend
        self.stats.cache_misses += 1
        entry = self._trace(args, kwargs, dyn_args, dyn_kwargs, statics, leaves, in_tree, sigs,
                            backend)
        return entry, True, key, leaves, in_tree, sigs, statics, backend

    def _call_general(self, args, kwargs):
        if _cfg.disable_jit:
            return self._fun(*args, **kwargs)
        entry, new, key, leaves, in_tree, sigs, statics, backend = self._entry(
            args, kwargs, lowering=False)
        if new:
            if entry.tracer_consts is None:
                self._cache[key] = entry
                if self._simple and not kwargs and len(sigs) == len(args) and all(
                        type(a) in _ARRAY_TYPES or type(a) in _PY_SIGS or
                        type(a) in _NP_SCALARS for a in args):
                    fkey = sigs[0] if len(sigs) == 1 else tuple(sigs)
                    self._fast.setdefault(backend, {})[fkey] = entry
        else:
            self.stats.cache_hits += 1
        if entry.tracer_consts is None and core._state.dynamic is None and \
                not any(isinstance(x, Tracer) for x in leaves):
            outs = entry.run(leaves)
        else:
            consts = entry.tracer_consts or []
            outs = pjit_p.bind(*consts, *leaves, **entry.params)
        return outs[0] if entry.single else tree_unflatten(entry.out_tree, outs)

    # -- tracing ----------------------------------------------------------------------------

    def _trace(self, args, kwargs, dyn_args, dyn_kwargs, statics, leaves, in_tree, sigs,
               backend):
        desc = self._describe(dyn_args, dyn_kwargs, statics, sigs)
        if self.stats.traces:
            self._explain_retrace(desc)
        static_pos = dict((w, v) for w, v in statics if isinstance(w, int))
        static_kw = dict((w, v) for w, v in statics if isinstance(w, str))
        for i in range(len(args)):
            if i in self._static_nums and i < len(self._positional):
                static_pos[i] = static_kw.pop(self._positional[i])
        n_args = len(args)
        out_box = []

        def flat_fun(*leaf_tracers):
            d_args, d_kwargs = tree_unflatten(in_tree, leaf_tracers)
            it = iter(d_args)
            full = [static_pos[i] if i in static_pos else next(it) for i in range(n_args)]
            out = self._fun(*full, **d_kwargs, **static_kw)
            out_leaves, out_tree = tree_flatten(out)
            for o in out_leaves:
                if _leaf_sig(o) is None:
                    raise TypeError(f"jit of {self._name}: the function returned a "
                                    f"{type(o).__name__} ({o!r}); jitted functions must "
                                    f"return arrays (or pytrees of arrays)")
            out_box.append(out_tree)
            return out_leaves

        avals = [core.get_aval(x).update(weak_type=(s[0] == "weak" or len(s) > 2))
                 if not isinstance(x, Tracer) else x.aval for x, s in zip(leaves, sigs)]
        t0 = time.perf_counter()
        jaxpr, consts, _ = core.trace_to_jaxpr(flat_fun, avals)
        self.stats.trace_seconds += time.perf_counter() - t0
        self.stats.traces += 1
        # Traced values closed over by the function become explicit inputs of the call.
        tr = [i for i, c in enumerate(consts) if isinstance(c, Tracer)]
        if tr:
            tracer_vars = [jaxpr.constvars[i] for i in tr]
            keep = [i for i in range(len(consts)) if i not in set(tr)]
            jaxpr = Jaxpr([jaxpr.constvars[i] for i in keep], tracer_vars + jaxpr.invars,
                          jaxpr.outvars, jaxpr.eqns)
            tracer_consts = [consts[i] for i in tr]
            consts = [consts[i] for i in keep]
        else:
            tracer_consts = None
        closed = ClosedJaxpr(jaxpr, consts)
        lowering.stats_owner(closed, self.stats)
        donated = self._donated_flags(args, kwargs, len(tracer_consts or ()), len(jaxpr.invars))
        e = _Entry()
        e.closed = closed
        e.out_tree = out_box[0]
        e.single = e.out_tree.num_leaves == 1 and e.out_tree == _LEAF_TREEDEF
        e.name = self._name
        e.backend = backend
        e.donated = donated
        e.exe = None
        e.fn = e._first
        e.tracer_consts = tracer_consts
        e.params = dict(jaxpr=closed, name=self._name, backend=backend, donated=donated)
        e.desc = desc
        self._last_desc = getattr(self, "_descs", [])
        self._descs = self._last_desc + [desc]
        return e

    def _donated_flags(self, args, kwargs, n_lead, n_in):
        if not self._donate:
            return (False,) * n_in
        flags = []
        for i, a in enumerate(args):
            if i in self._static_nums:
                continue
            n = len(tree_flatten(a)[0])
            flags += [i in self._donate] * n
        flags += [False] * (n_in - n_lead - len(flags))
        return (False,) * n_lead + tuple(flags)

    # -- retrace explanations -----------------------------------------------------------------

    def _describe(self, dyn_args, dyn_kwargs, statics, sigs):
        """{argument path: signature text} plus static values, for explanations."""
        names = {}
        pos_names = [n for i, n in enumerate(self._positional) if i not in self._static_nums]
        pairs, _ = tree_flatten_with_path((dyn_args, dyn_kwargs))
        for (path, _), s in zip(pairs, sigs):
            if path and getattr(path[0], "idx", None) == 0 and len(path) > 1:
                idx = getattr(path[1], "idx", None)
                argname = pos_names[idx] if idx is not None and idx < len(pos_names) else \
                    f"args[{idx}]"
                label = argname + keystr(path[2:])
            else:
                label = keystr(path[1:]) if len(path) > 1 else keystr(path)
            names[label] = _sig_text(s)
        for where, v in statics:
            names[f"static {where}"] = repr(v)
        return names

    def _explain_retrace(self, desc):
        best_diff = None
        for old in getattr(self, "_descs", []):
            diff = []
            for k in sorted(set(old) | set(desc)):
                a, b = old.get(k), desc.get(k)
                if a != b:
                    if a is None:
                        diff.append(f"{k} is new ({b})")
                    elif b is None:
                        diff.append(f"{k} is gone (was {a})")
                    else:
                        diff.append(f"{k} changed from {a} to {b}")
            if best_diff is None or len(diff) < len(best_diff):
                best_diff = diff
        if best_diff:
            why = "; ".join(best_diff)
        else:
            why = "same argument signature as an earlier trace (the back end, the global " \
                  "configuration or a closed-over traced value differs)"
        msg = f"jit of {self._name}: retracing (trace #{self.stats.traces + 1}) because {why}"
        self.stats.retraces.append(msg)
        if _cfg.explain_retraces:
            _log.warning(msg)

    # -- ahead of time ----------------------------------------------------------------------

    def trace(self, *args, **kwargs):
        """Trace for these arguments (without running). Returns the cache entry's jaxpr."""
        return self.lower(*args, **kwargs).jaxpr

    def lower(self, *args, **kwargs):
        """Trace and lower for these arguments (arrays or ShapeDtypeStructs) without running:
        ``.as_text()`` shows the jaxpr and the generated code, ``.compile()`` the callable."""
        entry, new, key, leaves, in_tree, sigs, statics, backend = self._entry(
            args, kwargs, lowering=True)
        if new:
            if entry.tracer_consts is not None:
                raise TypeError(f"jit of {self._name}.lower: the function closes over traced "
                                f"values; lower it outside of transformations")
            self._cache[key] = entry
        entry.executable()
        return Lowered(self, entry, in_tree, tuple(sigs), statics)


_LEAF_TREEDEF = tree_flatten(0)[1]


class Lowered:
    """A traced and lowered program (``jit(f).lower(*args)``)."""

    def __init__(self, jitted, entry, in_tree, sigs, statics):
        self._jitted = jitted
        self._entry = entry
        self._in_tree = in_tree
        self._sigs = sigs
        self._statics = statics

    @property
    def jaxpr(self):
        return self._entry.closed

    def as_text(self):
        return (f"# jit of {self._jitted._name}: traced jaxpr\n{self._entry.closed}\n"
                + self._entry.exe.as_text())

    def compile(self):
        return Compiled(self)


class Compiled:
    """A compiled program for one argument signature: call it with the dynamic arguments
    (static ones were fixed at ``lower``)."""

    def __init__(self, lowered):
        self._lowered = lowered
        self._entry = lowered._entry

    def as_text(self):
        return self._lowered.as_text()

    def __call__(self, *args, **kwargs):
        lw = self._lowered
        leaves, in_tree = tree_flatten((args, kwargs))
        if in_tree != lw._in_tree:
            raise TypeError(f"compiled {lw._jitted._name}: argument structure {in_tree} does "
                            f"not match the lowered structure {lw._in_tree}")
        for i, (x, s) in enumerate(zip(leaves, lw._sigs)):
            got = _leaf_sig(x)
            if got is None or _sig_aval(got).shape != _sig_aval(s).shape or \
                    _sig_aval(got).dtype != _sig_aval(s).dtype:
                raise TypeError(f"compiled {lw._jitted._name}: argument leaf {i} is "
                                f"{_sig_text(got) if got else type(x).__name__}, but the "
                                f"program was lowered for {_sig_text(s)}")
        outs = self._entry.exe(*leaves)
        e = self._entry
        return outs[0] if e.single else tree_unflatten(e.out_tree, outs)


def jit(fun=None, *, static_argnums=(), static_argnames=(), donate_argnums=(), backend=None):
    """Compile ``fun`` on first use per argument signature (see the module docstring).

    ``static_argnums``/``static_argnames``: arguments that are Python values baked into the
    program (hashable; a new value traces again). ``donate_argnums``: arguments whose buffers
    the program may overwrite (do not use them after the call). ``backend``: ``"cpu"`` (fused
    kernels) or ``"numpy"`` (the reference interpreter); default ``config.default_backend``.

    >>> import functrax as ft
    >>> ft.jit(lambda x, n: x * n, static_argnums=1)(2.0, 3)
    Array(6.)
    """
    if fun is None:
        return functools.partial(jit, static_argnums=static_argnums,
                                 static_argnames=static_argnames,
                                 donate_argnums=donate_argnums, backend=backend)
    return JitFunction(fun, static_argnums, static_argnames, donate_argnums, backend)


@contextmanager
def disable_jit(disable: bool = True):
    """Within this context ``jit`` functions run eagerly, line by line (for debugging with
    prints and pdb).

    >>> import functrax as ft
    >>> with ft.disable_jit():
    ...     ft.jit(lambda x: type(x).__name__)(1.0)
    'float'
    """
    prev = _cfg.disable_jit
    _cfg.disable_jit = disable
    try:
        yield
    finally:
        _cfg.disable_jit = prev
