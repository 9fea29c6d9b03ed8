"""Array creation with numpy's signatures: array, asarray, zeros/ones/full/empty and their
``*_like`` forms, arange, linspace, logspace, geomspace, eye, identity, meshgrid, tri and the
triangle index helpers, copy.

Eagerly the results are ``functrax.Array``; under ``jit``/``make_jaxpr`` an array built from
static arguments only is recorded in the trace (``zeros`` and friends as a broadcast of a
literal), and arguments that are traced (``full``'s fill value, ``linspace``'s ends) are
used as traced values.

>>> import functrax.numpy as fnp
>>> fnp.zeros((2, 3)).shape
(2, 3)
>>> fnp.linspace(0.0, 1.0, 5).tolist()
[0.0, 0.25, 0.5, 0.75, 1.0]
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes, lax
from ..core import Tracer, get_aval, wrap_array
from ..lax._util import array_namespace
from ._util import holds_tracer, user_line as _user_line

__all__ = ["array", "asarray", "zeros", "ones", "full", "empty", "zeros_like", "ones_like",
           "full_like", "empty_like", "arange", "linspace", "logspace", "geomspace", "eye",
           "identity", "meshgrid", "tri", "tril_indices", "triu_indices", "diag_indices",
           "tril_indices_from", "triu_indices_from", "copy", "asarray_copy"]


def _traced(x):
    return core._state.dynamic is not None or isinstance(x, Tracer)


@_user_line
def asarray(a, dtype=None, copy=None):
    """An array (functrax.Array eagerly, the tracer itself under a transformation)."""
    if isinstance(a, Tracer):
        return a if dtype is None else lax.convert_element_type(a, dtype)
    if isinstance(a, (list, tuple)) and holds_tracer(a):
        return array(a, dtype=dtype)
    # A GPU array stays on its device (np.asarray would copy it to the host, or refuse).
    out = array_namespace(a).asarray(a, dtype=dtype)
    if core._state.dynamic is not None:
        return out
    return wrap_array(out)


@_user_line
def array(object, dtype=None, copy=True, ndmin=0):  # noqa: A002 - numpy's name
    """Like numpy.array; nested lists holding traced values are stacked."""
    if isinstance(object, Tracer):
        out = object if dtype is None else lax.convert_element_type(object, dtype)
    elif isinstance(object, (list, tuple)) and holds_tracer(object):
        from .shape_ops import stack
        elems = [array(e) if isinstance(e, (list, tuple)) else e for e in object]
        avals = [get_aval(e) for e in elems]
        target = dtypes.promote_avals_dtype(avals)[0] if dtype is None else np.dtype(dtype)
        elems = [lax.convert_element_type(e, target) for e in elems]
        out = stack(elems)
    else:
        out = np.array(object, dtype=dtype, copy=True)
        out = out if core._state.dynamic is not None else wrap_array(out)
    if ndmin and get_aval(out).ndim < ndmin:
        out = lax.reshape(out, (1,) * (ndmin - get_aval(out).ndim) + get_aval(out).shape)
    return out


@_user_line
def copy(a, order="K"):
    """A copy of a (arrays are immutable, so this is only a new buffer eagerly)."""
    if isinstance(a, Tracer):
        return a
    return array(a)


asarray_copy = copy


def _shape(shape, name):
    return core.canonicalize_shape(shape, f"{name} shape")


@_user_line
def zeros(shape, dtype=None):
    return lax.full(_shape(shape, "zeros"), 0, dtypes.canonicalize(dtype))


@_user_line
def ones(shape, dtype=None):
    return lax.full(_shape(shape, "ones"), 1, dtypes.canonicalize(dtype))


@_user_line
def full(shape, fill_value, dtype=None):
    """An array of ``shape`` filled with ``fill_value``; an array fill value broadcasts."""
    shape = _shape(shape, "full")
    if dtype is None:
        if isinstance(fill_value, Tracer):
            dtype = get_aval(fill_value).dtype
        else:
            dtype = np.asarray(fill_value).dtype
    if core.is_array_like(fill_value) and get_aval(fill_value).ndim > 0:
        return lax.broadcast_to(lax.convert_element_type(fill_value, dtype), shape)
    return lax.full(shape, fill_value, dtype)


@_user_line
def empty(shape, dtype=None):
    """zeros: functrax arrays are never uninitialised."""
    return zeros(shape, dtype)


def _like(a, fill, dtype, shape):
    aval = get_aval(a if not isinstance(a, (list, tuple)) else np.asarray(a))
    return lax.full(aval.shape if shape is None else _shape(shape, "like"), fill,
                    aval.dtype if dtype is None else np.dtype(dtype))


@_user_line
def zeros_like(a, dtype=None, shape=None):
    return _like(a, 0, dtype, shape)


@_user_line
def ones_like(a, dtype=None, shape=None):
    return _like(a, 1, dtype, shape)


@_user_line
def full_like(a, fill_value, dtype=None, shape=None):
    aval = get_aval(a if not isinstance(a, (list, tuple)) else np.asarray(a))
    return full(aval.shape if shape is None else shape, fill_value,
                aval.dtype if dtype is None else dtype)


@_user_line
def empty_like(a, dtype=None, shape=None):
    return zeros_like(a, dtype, shape)


def _static(x, name):
    return None if x is None else core.concrete_or_error(
        x, f"{name} needs static arguments (the output's shape depends on them)")


@_user_line
def arange(start, stop=None, step=None, dtype=None):
    """numpy.arange with static bounds."""
    start, stop, step = (_static(v, "arange") for v in (start, stop, step))
    if stop is None:
        out = np.arange(start, dtype=dtype) if step is None else \
            np.arange(0, start, step, dtype=dtype)
    else:
        out = np.arange(start, stop, 1 if step is None else step, dtype=dtype)
    return asarray(out)


@_user_line
def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    """numpy.linspace; ``start`` and ``stop`` may be traced (arrays broadcast), ``num`` is
    static."""
    num = int(_static(num, "linspace num"))
    if num < 0:
        raise ValueError(f"linspace: number of samples, {num}, must be non-negative")
    from ._util import asarray_arg
    start, stop = asarray_arg(start), asarray_arg(stop)
    s_aval, e_aval = get_aval(start), get_aval(stop)
    comp = dtypes.promote_avals_dtype([s_aval, e_aval, core.ShapedArray((), np.float64)])[0]
    out_dtype = np.dtype(dtype) if dtype is not None else comp
    bshape = np.broadcast_shapes(s_aval.shape, e_aval.shape)
    start = lax.broadcast_to(lax.convert_element_type(start, comp), bshape)
    stop = lax.broadcast_to(lax.convert_element_type(stop, comp), bshape)
    div = (num - 1) if endpoint else num
    delta = lax.sub(stop, start)
    step = lax.div(delta, div) if div > 0 else lax.full(bshape, np.nan, comp)
    full_shape = (num,) + bshape
    dims = tuple(range(1, len(full_shape)))
    k = lax.broadcasted_iota(comp, full_shape, 0)
    if div > 0:
        # k * step + start, numpy's own formula, so that results agree to the last bit.
        out = lax.add(lax.mul(k, lax.broadcast_in_dim(step, full_shape, dims)),
                      lax.broadcast_in_dim(start, full_shape, dims))
    else:
        out = lax.broadcast_in_dim(start, full_shape, dims)
    if endpoint and num > 1:
        last = lax.broadcast_in_dim(stop, (1,) + bshape, dims)
        out = lax.concatenate([lax.slice_in_dim(out, 0, num - 1, 1, 0), last], 0)
    if axis:
        from .shape_ops import moveaxis
        out = moveaxis(out, 0, axis)
    if dtypes.is_integer(out_dtype):
        out = lax.floor(out)
    if get_aval(out).dtype != out_dtype:
        out = lax.convert_element_type(out, out_dtype)
    return (out, step) if retstep else out


@_user_line
def logspace(start, stop, num=50, endpoint=True, base=10.0, dtype=None, axis=0):
    """``base ** linspace(start, stop)``."""
    y = linspace(start, stop, num, endpoint=endpoint, axis=axis)
    from ._util import asarray_arg
    base = asarray_arg(base)
    out = lax.pow(lax.convert_element_type(base, get_aval(y).dtype), y)
    return out if dtype is None else lax.convert_element_type(out, dtype)


@_user_line
def geomspace(start, stop, num=50, endpoint=True, dtype=None, axis=0):
    """Numbers spaced evenly on a log scale between start and stop (same sign, nonzero)."""
    s = np.asarray(_static(start, "geomspace"), np.float64)
    e = np.asarray(_static(stop, "geomspace"), np.float64)
    if (s == 0).any() or (e == 0).any():
        raise ValueError("geomspace: geometric sequence cannot include zero")
    out = np.geomspace(s, e, num, endpoint=endpoint, axis=axis)
    return asarray(out if dtype is None else out.astype(dtype))


@_user_line
def eye(N, M=None, k=0, dtype=None):
    """A 2-D array with ones on the k-th diagonal."""
    n = int(_static(N, "eye"))
    m = n if M is None else int(_static(M, "eye"))
    if n < 0 or m < 0:
        raise ValueError(f"eye: negative dimensions are not allowed ({n}, {m})")
    dtype = dtypes.canonicalize(dtype)
    rows = lax.broadcasted_iota(np.int64, (n, m), 0)
    cols = lax.broadcasted_iota(np.int64, (n, m), 1)
    return lax.convert_element_type(lax.eq(cols, lax.add(rows, int(k)) if k else rows), dtype)


@_user_line
def identity(n, dtype=None):
    return eye(n, dtype=dtype)


@_user_line
def tri(N, M=None, k=0, dtype=None):
    """Ones at and below the k-th diagonal."""
    n = int(_static(N, "tri"))
    m = n if M is None else int(_static(M, "tri"))
    dtype = dtypes.canonicalize(dtype)
    rows = lax.broadcasted_iota(np.int64, (n, m), 0)
    cols = lax.broadcasted_iota(np.int64, (n, m), 1)
    return lax.convert_element_type(lax.le(cols, lax.add(rows, int(k)) if k else rows), dtype)


@_user_line
def meshgrid(*xi, copy=True, sparse=False, indexing="xy"):
    """numpy.meshgrid with indexing 'xy' (Cartesian) or 'ij' (matrix)."""
    if indexing not in ("xy", "ij"):
        raise ValueError(f"meshgrid: indexing must be 'xy' or 'ij', got {indexing!r}")
    from ._util import asarray_arg
    xs = [asarray_arg(x) for x in xi]
    xs = [lax.reshape(x, (get_aval(x).size,)) for x in xs]
    n = len(xs)
    sizes = [get_aval(x).shape[0] for x in xs]
    if indexing == "xy" and n >= 2:
        sizes[0], sizes[1] = sizes[1], sizes[0]
    out = []
    for i, x in enumerate(xs):
        dim = i
        if indexing == "xy" and n >= 2 and i < 2:
            dim = 1 - i
        if sparse:
            shape = [1] * n
            shape[dim] = sizes[dim]
            out.append(lax.reshape(x, tuple(shape)))
        else:
            out.append(lax.broadcast_in_dim(x, tuple(sizes), (dim,)))
    return out


def _triangle_indices(name, np_fn, n, k, m):
    rows, cols = np_fn(int(_static(n, name)), int(k), None if m is None else int(m))
    return asarray(rows), asarray(cols)


def _matrix_shape(name, arr):
    s = get_aval(arr).shape
    if len(s) != 2:
        raise ValueError(f"{name}: input array must be 2-d, got shape {s}")
    return s


@_user_line
def tril_indices(n, k=0, m=None):
    """Row and column indices of the lower triangle (static arguments)."""
    return _triangle_indices("tril_indices", np.tril_indices, n, k, m)


@_user_line
def triu_indices(n, k=0, m=None):
    """Row and column indices of the upper triangle (static arguments)."""
    return _triangle_indices("triu_indices", np.triu_indices, n, k, m)


@_user_line
def tril_indices_from(arr, k=0):
    s = _matrix_shape("tril_indices_from", arr)
    return tril_indices(s[0], k, s[1])


@_user_line
def triu_indices_from(arr, k=0):
    s = _matrix_shape("triu_indices_from", arr)
    return triu_indices(s[0], k, s[1])


@_user_line
def diag_indices(n, ndim=2):
    idx = asarray(np.arange(int(_static(n, "diag_indices"))))
    return (idx,) * int(ndim)
