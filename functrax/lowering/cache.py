"""The kernel cache: generated kernel modules on disk, keyed by a hash of their source.

Kernel source is canonical (it depends only on the cluster's structure: ranks, broadcast
patterns, dtypes, operations; never on variable names or array sizes), so equal clusters in
different programs or processes hash the same. Each kernel module is written once to
``<cache dir>/kernels/k_<hash>.py`` and imported from there; numba's ``cache=True`` then keeps
the compiled machine code next to it (``__pycache__``), so a second process loads it instead
of compiling. The cache dir is ``~/.cache/functrax``, or ``$FUNCTRAX_CACHE_DIR``.

>>> from functrax.lowering import cache
>>> cache.source_key("x = 1\\n") == cache.source_key("x = 1\\n")
True
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile

__all__ = ["cache_dir", "source_key", "load_module", "compiled_on_disk", "clear_memory_cache",
           "CACHE_VERSION"]

# Bump when the code generator changes in a way that alters what a source string means.
CACHE_VERSION = "1"

_modules: dict = {}  # (directory, key) -> loaded module


def cache_dir() -> str:
    """The root of the on-disk cache (read from the environment on every call, so tests can
    point it elsewhere)."""
    d = os.environ.get("FUNCTRAX_CACHE_DIR")
    if not d:
        d = os.path.join(os.path.expanduser("~"), ".cache", "functrax")
    return d


def source_key(source: str) -> str:
    """The content hash naming a kernel module."""
    h = hashlib.sha256()
    h.update(CACHE_VERSION.encode())
    h.update(b"\0")
    h.update(source.encode())
    return h.hexdigest()[:24]


def _kernel_dir() -> str:
    d = os.path.join(cache_dir(), "kernels")
    os.makedirs(d, exist_ok=True)
    return d


def compiled_on_disk(source: str) -> bool:
    """Whether numba has already saved compiled code for the module holding ``source`` (an
    index file in its ``__pycache__``): loading it then costs far less than compiling."""
    key = source_key(source)
    if (_kernel_dir(), key) in _modules:
        return True
    pyc = os.path.join(_kernel_dir(), "__pycache__")
    try:
        names = os.listdir(pyc)
    except OSError:
        return False
    prefix = f"k_{key}."
    return any(n.startswith(prefix) and n.endswith(".nbi") for n in names)


def load_module(source: str):
    """Import the module holding ``source`` from the cache dir, writing the file first when it
    is missing. Returns (module, was_in_memory, file_existed)."""
    key = source_key(source)
    directory = _kernel_dir()
    mem_key = (directory, key)
    mod = _modules.get(mem_key)
    if mod is not None:
        return mod, True, True
    path = os.path.join(directory, f"k_{key}.py")
    existed = os.path.exists(path)
    if not existed:
        # Write atomically and never rewrite: numba's disk cache is invalidated by a change of
        # the source file's modification time.
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        try:
            os.link(tmp, path)  # fails if another process won the race: keep its file
        except FileExistsError:
            pass
        except OSError:
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    name = f"functrax_kernel_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    _modules[mem_key] = mod
    return mod, False, existed


def clear_memory_cache():
    """Forget the modules loaded in this process (the files stay): the next load of each
    reads it from disk, as a new process would."""
    for (_, key) in list(_modules):
        sys.modules.pop(f"functrax_kernel_{key}", None)
    _modules.clear()
