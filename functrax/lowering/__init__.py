"""jit back ends: a ClosedJaxpr in, an executable (flat inputs -> flat outputs) out.

``compile_jaxpr(closed, backend)`` returns the cached executable of a program; back ends:

* ``"cpu"`` (alias ``"numba"``): fused kernels, see ``numba_cpu.py``;
* ``"numpy"``: the reference interpreter (every equation's numpy impl, no fusion), which the
  test suite compares the others against;
* ``"cuda"`` (alias ``"gpu"``): numba-cuda kernels and CuPy, see ``cuda.py`` (imported only when
  used: importing ``numba.cuda`` fixes the simulator choice for the process).

Other back ends plug in with ``register_backend(name, "module.path", aliases)``: the module is
imported on first use and its ``lower(closed, donated=, name=, sub_lowering=)`` called.

The passes shared by every back end live in ``plan.py``; the on-disk kernel cache in
``cache.py``.

>>> import functrax, functrax.numpy as fnp
>>> from functrax import lowering
>>> closed = functrax.make_jaxpr(lambda x: x + 1.0)(fnp.zeros(2))
>>> lowering.compile_jaxpr(closed, "numpy")(fnp.zeros(2))[0].tolist()
[1.0, 1.0]
"""
from __future__ import annotations

import time

from .. import config as _config
from .. import core
from .._lru import LRUCache

__all__ = ["compile_jaxpr", "available_backends", "canonical_backend", "clear_caches",
           "stats_owner", "register_backend"]

_ALIASES = {"cpu": "cpu", "numba": "cpu", "numpy": "numpy", "reference": "numpy",
            "cuda": "cuda", "gpu": "cuda"}

# Back ends living in modules imported on first use: canonical name -> module path.
_LAZY_BACKENDS = {"cuda": "functrax.lowering.cuda"}


def register_backend(name, module, aliases=()):
    """Make ``module`` (a dotted path; its ``lower`` builds executables) the back end ``name``."""
    _LAZY_BACKENDS[name] = module
    _ALIASES[name] = name
    for a in aliases:
        _ALIASES[a] = name

# (id(closed), backend, donated) -> (closed, executable); the ClosedJaxpr is kept alive so its
# id is never reused while the entry exists.
_executables = LRUCache(lambda: _config.jit_cache_size)

# id(closed) -> (closed, stats object of the jit function the program came from), so time
# spent lowering programs derived by transformations (jvp, partial eval, transpose, vmap) is
# charged to the function the user jitted.
_owners = LRUCache(lambda: _config.jit_cache_size)


def available_backends():
    return sorted(set(_ALIASES))


def canonical_backend(name) -> str:
    b = _ALIASES.get(str(name).lower()) if name is not None else None
    if b is None:
        raise ValueError(f"jit: unknown backend {name!r}; available: "
                         f"{', '.join(available_backends())}")
    return b


def stats_owner(closed, stats=None):
    """Record (or, with stats=None, look up) the accounting object charged for ``closed``."""
    if stats is not None:
        _owners[id(closed)] = (closed, stats)
        return stats
    hit = _owners.get(id(closed))
    return hit[1] if hit is not None else None


class _ReferenceExecutable:
    """The numpy back end: interpret the jaxpr with the primitives' impls."""

    def __init__(self, closed):
        self.closed = closed
        self.jaxpr = closed.jaxpr
        self.source = "# reference back end: core.eval_jaxpr with each primitive's numpy impl\n"
        self.kernel_sources = []
        self.first_run = {}

    def __call__(self, *args):
        outs = core.eval_jaxpr(self.closed.jaxpr, self.closed.consts, *args)
        return [core.wrap_array(o) for o in outs]

    fn = __call__

    def as_text(self):
        return "# simplified jaxpr\n" + str(self.jaxpr) + "\n# driver\n" + self.source


def compile_jaxpr(closed, backend="cpu", donated=(), name="jitted"):
    """The executable for ``closed`` on ``backend`` (built once per ClosedJaxpr object)."""
    backend = canonical_backend(backend)
    donated = tuple(donated)
    key = (id(closed), backend, donated)
    hit = _executables.get(key)
    if hit is not None:
        return hit[1]
    t0 = time.perf_counter()
    if backend == "numpy":
        exe = _ReferenceExecutable(closed)
    elif backend in _LAZY_BACKENDS:
        import importlib
        mod = importlib.import_module(_LAZY_BACKENDS[backend])
        exe = mod.lower(closed, donated=donated, name=name,
                        sub_lowering=lambda c: compile_jaxpr(c, backend))
    else:
        from . import numba_cpu
        exe = numba_cpu.lower(closed, donated=donated, name=name,
                              sub_lowering=lambda c: compile_jaxpr(c, backend))
    dt = time.perf_counter() - t0
    _executables[key] = (closed, exe)
    owner = stats_owner(closed)
    if owner is not None:
        owner.lowerings += 1
        owner.lower_seconds += dt
        compile_s = getattr(exe, "compile_seconds", 0.0)
        owner.compile_seconds += compile_s
        owner.lower_seconds -= compile_s
        owner.numba_compiles += getattr(exe, "numba_compiles", 0)
        owner.numba_disk_hits += getattr(exe, "numba_disk_hits", 0)
    return exe


def clear_caches():
    """Forget every compiled program (kernel modules on disk stay)."""
    _executables.clear()
    _owners.clear()
