"""Shared pieces for primitive definitions: shape checks with clear messages, and the
abstract-eval helpers for elementwise primitives."""
from __future__ import annotations

import numpy as np

from .. import core, dtypes
from ..array import Array
from ..core import ShapedArray


def broadcast_shapes(name, *shapes):
    """numpy's broadcasting of shapes, raising ``TypeError`` that names the operation."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(ndim):
        size = 1
        for s in shapes:
            j = i - (ndim - len(s))
            if j < 0:
                continue
            d = s[j]
            if d == 1:
                continue
            if size == 1:
                size = d
            elif d != size:
                pretty = " and ".join(str(tuple(s)) for s in shapes)
                raise TypeError(f"{name}: shapes {pretty} do not broadcast")
        out.append(size)
    return tuple(out)


def standard_elementwise_abstract_eval(name, *avals, out_dtype=None, require=None,
                                       require_msg="", **params):
    """Broadcast the shapes, promote the dtypes (NEP 50), optionally check the dtype kind.
    Static ``params`` of the primitive (integer_pow's exponent, ...) do not change the type."""
    shape = avals[0].shape if len(avals) == 1 else broadcast_shapes(
        name, *[a.shape for a in avals])
    dtype, weak = dtypes.promote_avals_dtype(avals)
    if require is not None and not require(dtype):
        got = ", ".join(a.dtype.name for a in avals)
        raise TypeError(f"{name}: {require_msg} (got {got})")
    if out_dtype is not None:
        return ShapedArray(shape, out_dtype, False)
    return ShapedArray(shape, dtype, weak)


def check_axes(name, axes, ndim):
    """Normalize and check a tuple of axes (negative allowed) for an array of rank ``ndim``."""
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}: axis {a} is out of bounds for an array of rank {ndim}")
        out.append(a % ndim if ndim else a)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: repeated axis in {tuple(axes)}")
    return tuple(out)


def asarray_np(x):
    return np.asarray(x)


def array_namespace(*xs):
    """numpy, or CuPy when an operand is a CuPy array: impls run through the array's module."""
    for x in xs:
        mod = type(x).__module__
        if mod.startswith("cupy"):
            import cupy
            return cupy
        if mod == "functrax.devices":
            # The CUDA simulator's stand-in device arrays keep their device through sim_numpy.
            from ..devices import sim_numpy
            return sim_numpy
    return np


def is_cupy(xp) -> bool:
    """Whether the array namespace ``xp`` is CuPy (a real GPU)."""
    return getattr(xp, "__name__", None) == "cupy"


def scipy_namespace(xp, name):
    """``scipy.<name>`` ('special', 'linalg') for the arrays of namespace ``xp``: scipy's for
    numpy, ``cupyx.scipy.<name>`` for CuPy (the work stays on the GPU), and for the simulated
    GPU scipy's with results handed back as simulated device arrays."""
    import importlib
    if xp is np:
        return importlib.import_module(f"scipy.{name}")
    if is_cupy(xp):
        return importlib.import_module(f"cupyx.scipy.{name}")
    return xp.scipy(name)


def linalg_errors_raise(xp):
    """A context in which a failed factorization raises ``numpy.linalg.LinAlgError``: numpy
    always raises; CuPy only checks the solver's status under ``cupyx.errstate(linalg=
    'raise')`` (which waits for the GPU), else it returns garbage silently."""
    if is_cupy(xp):
        import cupyx
        return cupyx.errstate(linalg="raise")
    import contextlib
    return contextlib.nullcontext()


def ufunc_at(xp, name, out, index, values):
    """``getattr(numpy, name).at(out, index, values)`` (repeated indices accumulate) in the
    namespace of ``out``. CuPy spells add/max/min as ``cupyx.scatter_*``; it has no scatter
    product, so that one moves to the host and back, explicitly (one round trip)."""
    if xp is not np:
        # Host index arrays (x.at[np.array(...)] on a GPU array) move to the device
        # explicitly: they are small, and the device's scatter cannot read host memory.
        def dev(i):
            return xp.asarray(i) if type(i) in (np.ndarray, Array) else i
        index = tuple(dev(i) for i in index) if isinstance(index, tuple) else dev(index)
    if not is_cupy(xp):
        getattr(np, name).at(out, index, values)  # numpy, or the simulated GPU's arrays
        return
    import cupyx
    fn = {"add": cupyx.scatter_add, "maximum": cupyx.scatter_max,
          "minimum": cupyx.scatter_min}.get(name)
    if fn is not None:
        fn(out, index, values)
        return
    host = xp.asnumpy(out)
    host_index = tuple(xp.asnumpy(i) if hasattr(i, "get") else i for i in index) \
        if isinstance(index, tuple) else (xp.asnumpy(index) if hasattr(index, "get") else index)
    getattr(np, name).at(host, host_index, xp.asnumpy(values))
    out[...] = xp.asarray(host)


def aval_of(x) -> ShapedArray:
    return core.get_aval(x)
