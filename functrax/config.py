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

>>> from functrax import config
>>> config.update("explain_retraces", True); config.explain_retraces
True
>>> config.update("explain_retraces", False)
"""
from __future__ import annotations

import os

__all__ = ["update", "explain_retraces", "disable_jit", "default_backend"]


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


explain_retraces = _env_flag("FUNCTRAX_EXPLAIN_RETRACES")
disable_jit = _env_flag("FUNCTRAX_DISABLE_JIT")
default_backend = os.environ.get("FUNCTRAX_BACKEND", "cpu").strip() or "cpu"

_NAMES = ("explain_retraces", "disable_jit", "default_backend")


def update(name, value):
    """Set the switch ``name`` (one of explain_retraces, disable_jit, default_backend)."""
    if name not in _NAMES:
        raise AttributeError(f"functrax.config has no option {name!r}; options: "
                             f"{', '.join(_NAMES)}")
    globals()[name] = value
