"""Devices: where arrays live, and moving arrays between them.

The CPU is always present. GPU devices exist when CuPy sees an NVIDIA GPU (arrays on it are
CuPy arrays, and eager ``functrax.numpy`` calls on them run on the GPU through CuPy), or, for
testing without a GPU, when numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``
in the environment before the process starts): then there is one simulated GPU whose arrays
are ``SimulatedGpuArray`` (numpy arrays that remember they are "on the device", so the rules
about mixing devices can be tested on a CPU-only machine).

* ``devices(backend=None)`` / ``local_devices(backend=None)``: the devices of a platform
  (``"cpu"`` or ``"gpu"``; ``None`` is the default platform);
* ``default_backend()``: ``"gpu"`` when a GPU (real or simulated) exists, else ``"cpu"``;
* ``device_put(x, device=None)``: copy a pytree of arrays onto a device (the default device
  when none is given); ``device_get(x)``: a pytree of device arrays as host ``Array``s;
* ``device_of(x)``: the ``Device`` an array lives on; ``infer_backend(leaves)``: ``"cuda"``
  when any leaf lives on a GPU (how ``jit`` picks its back end from its arguments).

An operation mixing an array on the GPU with a (non-scalar) host array raises a TypeError that
names the operation, both devices and the fix (``device_put``); ``check_same_device`` is that
check, usable by any layer that sees all the operands of an operation.

>>> import numpy as np
>>> from functrax.devices import devices, device_put, device_get
>>> devices("cpu")
[CpuDevice(id=0)]
>>> x = device_put({"w": np.ones(2)}, devices("cpu")[0])
>>> type(x["w"]).__name__, device_get(x)["w"].tolist()
('Array', [1.0, 1.0])
"""
from __future__ import annotations

import os

import numpy as np

from .array import Array

# The package star-imports these, so ``functrax.devices`` is then the function (as in JAX);
# the module's other helpers are reached with ``from functrax.devices import ...``.
__all__ = ["Device", "devices", "local_devices", "default_backend", "device_put", "device_get"]


class Device:
    """A place arrays live: ``platform`` is 'cpu' or 'gpu', ``id`` counts from 0 within the
    platform; ``device_kind`` says what it is (a GPU's name, or 'simulated GPU')."""

    __slots__ = ("platform", "id", "device_kind")

    def __init__(self, platform: str, id: int = 0, device_kind: str | None = None):
        self.platform = platform
        self.id = id
        self.device_kind = device_kind or ("cpu" if platform == "cpu" else "gpu")

    @property
    def simulated(self) -> bool:
        return self.device_kind == "simulated GPU"

    def __repr__(self):
        return f"{'CpuDevice' if self.platform == 'cpu' else 'CudaDevice'}(id={self.id})"

    def __eq__(self, other):
        return isinstance(other, Device) and (self.platform, self.id) == (other.platform, other.id)

    def __hash__(self):
        return hash((self.platform, self.id))


_CPU = Device("cpu", 0)


def cpu_device() -> Device:
    return _CPU


# ---------------------------------------------------------------------------------------------
# Discovering GPUs


def simulator_enabled() -> bool:
    """Whether numba's CUDA simulator is on for this process. The environment is read rather
    than numba.cuda, because importing numba.cuda fixes the choice and costs a second."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "").strip() not in ("", "0")


_gpus = None


def _cupy():
    try:
        import cupy
    except Exception:  # not installed, or installed without a usable CUDA runtime
        return None
    return cupy


def _discover():
    global _gpus
    if _gpus is not None:
        return _gpus
    found = []
    if simulator_enabled():
        # The simulator stands in for the GPU even on a machine that has one: numba.cuda's
        # kernels then run on the CPU and cannot take CuPy arrays.
        found = [Device("gpu", 0, "simulated GPU")]
    else:
        cp = _cupy()
        if cp is not None:
            try:
                n = int(cp.cuda.runtime.getDeviceCount())
            except Exception:
                n = 0
            for i in range(n):
                try:
                    props = cp.cuda.runtime.getDeviceProperties(i)
                    name = props["name"]
                    name = name.decode() if isinstance(name, bytes) else str(name)
                except Exception:
                    name = "gpu"
                found.append(Device("gpu", i, name))
    _gpus = found
    return found


def gpu_available() -> bool:
    """Whether a GPU device (real or simulated) exists."""
    return bool(_discover())


_PLATFORMS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}


def default_backend() -> str:
    """The default platform: 'gpu' when a GPU (or the simulator) is present, else 'cpu'."""
    return "gpu" if _discover() else "cpu"


def devices(backend: str | None = None) -> list:
    """The devices of ``backend`` ('cpu', 'gpu' or 'cuda'; None: the default platform)."""
    plat = default_backend() if backend is None else _PLATFORMS.get(str(backend).lower())
    if plat is None:
        raise ValueError(f"devices: unknown backend {backend!r}; use 'cpu' or 'gpu'")
    if plat == "cpu":
        return [_CPU]
    gpus = _discover()
    if not gpus:
        raise RuntimeError(
            "devices: no GPU backend in this process: CuPy is not installed or sees no CUDA "
            "device (install the 'cuda' extra on a machine with an NVIDIA GPU, or set "
            "NUMBA_ENABLE_CUDASIM=1 before starting Python to use numba's simulated GPU)")
    return list(gpus)


def local_devices(backend: str | None = None) -> list:
    """Devices attached to this process (all of them: functrax runs in one process)."""
    return devices(backend)


# ---------------------------------------------------------------------------------------------
# Arrays on the simulated GPU


class SimulatedGpuArray(Array):
    """A numpy array standing for an array in a simulated GPU's memory.

    numpy operations on it return arrays of this type (as CuPy's return CuPy arrays), and an
    operation that mixes it with a non-scalar host array raises, as it would on a GPU."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        check_same_device(f"{ufunc.__name__}" + ("" if method == "__call__" else f".{method}"),
                          inputs)
        args = [np.asarray(a) if isinstance(a, SimulatedGpuArray) else a for a in inputs]
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, SimulatedGpuArray) else o
                                  for o in out)
        res = getattr(ufunc, method)(*args, **kwargs)
        if method == "at":
            return None
        if isinstance(res, tuple):
            return tuple(_to_sim(r) for r in res)
        return _to_sim(res)

    def __array_function__(self, func, types, args, kwargs):
        # CuPy implements numpy's functions on device arrays and returns device arrays; so
        # does the simulated GPU (numpy would otherwise hand back plain host arrays).
        flat = _flat_arrays(args) + _flat_arrays(tuple(kwargs.values()))
        check_same_device(func.__name__, flat)
        res = func(*_unwrap(args), **_unwrap(kwargs))
        return _rewrap(res)

    def __getitem__(self, index):
        # An element of a CuPy array is a 0-d device array, not a host scalar.
        res = super().__getitem__(index)
        return _to_sim(res) if isinstance(res, np.generic) else res

    @property
    def device(self):
        return _discover()[0]

    def block_until_ready(self):
        return self

    def __repr__(self):
        body = np.array2string(np.asarray(self), separator=", ", prefix="Array(")
        extra = "" if self.dtype in (np.float64, np.int64, np.bool_) else f", dtype={self.dtype}"
        return f"Array({body}{extra}, device=gpu:sim)"


def _to_sim(x):
    # Like CuPy, results on the device stay arrays (0-d for reductions to a scalar).
    if isinstance(x, SimulatedGpuArray):
        return x
    if isinstance(x, np.ndarray):
        return x.view(SimulatedGpuArray)
    if isinstance(x, np.generic):
        return np.asarray(x).view(SimulatedGpuArray)
    return x


class _SimNumpy:
    """The array namespace of the simulated GPU (what CuPy is to a real one): numpy, except
    that the functions creating or converting arrays create them on the simulated device."""

    def __getattr__(self, name):
        return getattr(np, name)

    def _on_device(fn):  # noqa: N805 - a decorator used in the class body
        def wrapped(self, *args, **kwargs):
            return _to_sim(fn(*_unwrap(args), **_unwrap(kwargs)))
        wrapped.__name__ = fn.__name__
        return wrapped

    asarray = _on_device(np.asarray)
    array = _on_device(np.array)
    ascontiguousarray = _on_device(np.ascontiguousarray)
    empty = _on_device(np.empty)
    zeros = _on_device(np.zeros)
    ones = _on_device(np.ones)
    full = _on_device(np.full)
    arange = _on_device(np.arange)
    eye = _on_device(np.eye)

    class lib:  # noqa: N801 - mirrors numpy.lib / cupy.lib
        class stride_tricks:  # noqa: N801
            @staticmethod
            def as_strided(x, *args, **kwargs):
                return _to_sim(np.lib.stride_tricks.as_strided(np.asarray(x), *args, **kwargs))

    del _on_device

    @staticmethod
    def scipy(name):
        """The simulated GPU's ``cupyx.scipy.<name>``: scipy's module, its functions returning
        simulated device arrays (scipy itself converts its operands to host arrays)."""
        import importlib
        return _SimModule(importlib.import_module(f"scipy.{name}"))


class _SimModule:
    """A module of host functions whose results are put on the simulated GPU."""

    def __init__(self, mod):
        self._mod = mod

    def __getattr__(self, name):
        fn = getattr(self._mod, name)
        if not callable(fn):
            return fn

        def wrapped(*args, **kwargs):
            return _rewrap(fn(*_unwrap(args), **_unwrap(kwargs)))
        wrapped.__name__ = name
        return wrapped


sim_numpy = _SimNumpy()


def _flat_arrays(xs):
    out = []
    for x in xs:
        if isinstance(x, (list, tuple)):
            out += _flat_arrays(x)
        elif isinstance(x, np.ndarray):
            out.append(x)
    return out


def _unwrap(x):
    if isinstance(x, SimulatedGpuArray):
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _rewrap(x):
    if isinstance(x, (np.ndarray, np.generic)):
        return _to_sim(x)
    if isinstance(x, tuple):
        return tuple(_rewrap(v) for v in x)
    if isinstance(x, list):
        return [_rewrap(v) for v in x]
    return x


def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _on_gpu(x) -> bool:
    return isinstance(x, SimulatedGpuArray) or _is_cupy(x)


def device_of(x) -> Device:
    """The device ``x`` lives on (numbers and host arrays: the CPU)."""
    if isinstance(x, SimulatedGpuArray):
        return _discover()[0]
    if _is_cupy(x):
        dev = getattr(x, "device", None)
        i = int(getattr(dev, "id", 0) or 0)
        gpus = _discover()
        return gpus[i] if i < len(gpus) else Device("gpu", i)
    return _CPU


def check_same_device(op: str, args) -> None:
    """Raise a TypeError when ``args`` mix GPU arrays with non-scalar host arrays."""
    gpu = host = None
    for a in args:
        if _on_gpu(a):
            gpu = gpu if gpu is not None else a
        elif isinstance(a, np.ndarray) and a.ndim > 0:
            host = host if host is not None else a
    if gpu is not None and host is not None:
        from .core import _locate
        raise _locate(TypeError(
            f"{op}: operands live on different devices: an array of shape {tuple(gpu.shape)} "
            f"on {device_of(gpu)} and an array of shape {tuple(host.shape)} on "
            f"{device_of(host)}. Move one explicitly: functrax.device_put(x, "
            f"functrax.devices('gpu')[0]) to bring the host array to the GPU, or "
            f"functrax.device_get(y) to bring the GPU array to the host"))


def infer_backend(leaves):
    """'cuda' when any of ``leaves`` lives on a GPU, else None (the caller's default)."""
    for x in leaves:
        if _on_gpu(x):
            return "cuda"
    return None


# ---------------------------------------------------------------------------------------------
# Moving arrays


def _put_leaf(x, dev: Device):
    if dev.platform == "cpu":
        return _get_leaf(x)
    if dev.simulated:
        if _is_cupy(x):
            x = x.get()
        return np.array(x, copy=True).view(SimulatedGpuArray)
    cp = _cupy()
    host = np.asarray(x) if not _is_cupy(x) else x
    with cp.cuda.Device(dev.id):
        return cp.array(host, copy=True)


def _get_leaf(x):
    if _is_cupy(x):
        return x.get().view(Array)
    if isinstance(x, (np.ndarray, np.generic, int, float, complex, bool)):
        return np.array(x, copy=True).view(Array)
    return x


def _resolve(device):
    if device is None:
        return devices()[0]
    if isinstance(device, Device):
        if device.platform == "gpu" and device not in _discover():
            raise ValueError(f"device_put: {device} does not exist in this process "
                             f"(devices: {devices('gpu') if _discover() else devices('cpu')})")
        return device
    if isinstance(device, str):
        return devices(device)[0]
    raise TypeError(f"device_put: expected a functrax Device (from functrax.devices()) or a "
                    f"platform name, got {type(device).__name__}")


def device_put(x, device=None):
    """Copy every array leaf of the pytree ``x`` to ``device`` (default: the first device of
    the default platform). Python numbers become 0-d arrays there."""
    from .tree_util import tree_map
    dev = _resolve(device)
    return tree_map(lambda leaf: _put_leaf(leaf, dev), x)


def device_get(x):
    """Every array leaf of the pytree ``x`` as a host ``functrax.Array``."""
    from .tree_util import tree_map
    return tree_map(_get_leaf, x)
