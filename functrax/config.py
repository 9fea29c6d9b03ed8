"""Global switches, read at call time (so they can be flipped between calls).

``functrax.config.update(name, value)`` sets one, as ``jax.config.update`` does; each starts
from an environment variable so a script can be steered without editing it:

* ``explain_retraces`` (``FUNCTRAX_EXPLAIN_RETRACES=1``): every time a jitted function traces
  again, log (logger ``functrax.jit``, level WARNING) which argument's shape, dtype, weak type
  or static value differs from the closest earlier trace.
* ``disable_jit`` (``FUNCTRAX_DISABLE_JIT=1``): ``jit`` runs functions eagerly (debugging);
  ``functrax.disable_jit()`` is the scoped form.
* ``default_backend`` (``FUNCTRAX_BACKEND``): the back end ``jit`` lowers to when none is
  named: ``"cpu"`` (fused numba / numpy kernels) or ``"numpy"`` (the reference interpreter).
* ``jit_cache_size`` (``FUNCTRAX_JIT_CACHE_SIZE``, default 4096): how many entries each of
  jit's global caches (compiled executables; programs derived from jitted functions by jvp,
  partial evaluation, transpose and vmap) keeps before dropping the least recently used.

>>> from functrax import config
>>> config.update("explain_retraces", True); config.explain_retraces
True
>>> config.update("explain_retraces", False)
"""
from __future__ import annotations

import os

__all__ = ["update", "explain_retraces", "disable_jit", "default_backend", "jit_cache_size"]


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


explain_retraces = _env_flag("FUNCTRAX_EXPLAIN_RETRACES")
disable_jit = _env_flag("FUNCTRAX_DISABLE_JIT")
default_backend = os.environ.get("FUNCTRAX_BACKEND", "cpu").strip() or "cpu"
jit_cache_size = int(os.environ.get("FUNCTRAX_JIT_CACHE_SIZE", "4096"))

_NAMES = ("explain_retraces", "disable_jit", "default_backend", "jit_cache_size")


def update(name, value):
    """Set the switch ``name`` (one of explain_retraces, disable_jit, default_backend,
    jit_cache_size)."""
    if name not in _NAMES:
        raise AttributeError(f"functrax.config has no option {name!r}; options: "
                             f"{', '.join(_NAMES)}")
    if name == "jit_cache_size" and (not isinstance(value, int) or value < 1):
        raise ValueError(f"functrax.config: jit_cache_size must be a positive int, got "
                         f"{value!r}")
    globals()[name] = value
