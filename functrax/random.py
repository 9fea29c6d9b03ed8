"""``functrax.random``: counter-based, splittable pseudo-random numbers (Threefry-2x32, as JAX).

A key is a uint32 array of shape ``(2,)`` (JAX's raw ``PRNGKey``). Every sampler is a pure
function of its key: the same key gives the same numbers, and there is no hidden state. To get
fresh numbers, ``split`` a key into new keys (or ``fold_in`` an integer) and never reuse a key
for two purposes. Samplers follow JAX's constructions: the key encrypts a counter (an ``iota``)
with ``lax.threefry2x32``, so they trace under ``jit``/``make_jaxpr``, map over a batch of keys
under ``vmap`` (keys of shape ``(n, 2)`` in, a batch of samples out) and are differentiable
with respect to distribution parameters (``uniform``'s bounds, ``truncated_normal``'s limits,
``multivariate_normal``'s mean and covariance: reparameterized samples).

``key``, ``split``, ``fold_in``, ``bits`` and ``uniform`` use JAX's exact constructions (the
same counters, the same halving of the counter array, the same mantissa bits), so with 64-bit
floats (JAX's ``jax_enable_x64``) they should give JAX's numbers; ``split(key(0))`` is checked
against the values in JAX's documentation.

>>> from functrax import random
>>> key = random.key(0)
>>> key.tolist()
[0, 0]
>>> k1, k2 = random.split(key)
>>> k1.tolist(), k2.tolist()
([4146024105, 967050713], [2718843009, 1272950319])
>>> x = random.normal(k1, (3,))
>>> x.shape, x.dtype.name
((3,), 'float64')
"""
from __future__ import annotations

import math

import numpy as np

from . import core, dtypes, lax
from . import numpy as fnp
from .core import Tracer, get_aval

__all__ = [
    "PRNGKey", "key", "key_data", "split", "fold_in", "bits", "uniform", "normal",
    "truncated_normal", "bernoulli", "categorical", "randint", "permutation", "choice",
    "gumbel", "exponential", "laplace", "multivariate_normal", "threefry_2x32",
]

_U32 = np.dtype(np.uint32)
_U64 = np.dtype(np.uint64)
_MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Small helpers over lax (usable on concrete values and tracers alike)


def _stack(parts):
    """Stack equal-shape arrays along a new leading axis, with elementwise operations only
    (a selection by a broadcast iota), so it runs under every transformation."""
    aval = get_aval(parts[0])
    n = len(parts)
    shape = (n,) + aval.shape
    dims = tuple(range(1, len(shape)))
    cases = [lax.broadcast_in_dim(p, shape, dims) for p in parts]
    which = lax.broadcasted_iota(np.int32, shape, 0)
    return lax.select_n(which, *cases)


def _take1(x, i):
    """x[i] along the leading axis (static i), as a slice and a reshape."""
    aval = get_aval(x)
    piece = lax.slice_in_dim(x, i, i + 1, axis=0)
    return lax.reshape(piece, aval.shape[1:])


def _shape(name, shape):
    if shape is None:
        return None
    return core.canonicalize_shape(shape, f"random.{name} shape")


def _float_dtype(name, dtype):
    dtype = dtypes.canonicalize(dtype)
    if not dtypes.is_float(dtype):
        raise TypeError(f"random.{name}: dtype must be a floating-point dtype, got {dtype.name}")
    return dtype


def _check_key(name, key):
    aval = get_aval(key)
    if aval.shape != (2,) or aval.dtype != _U32:
        raise TypeError(
            f"random.{name}: expected a PRNG key (a uint32 array of shape (2,), from "
            f"random.key(seed) or random.split), got {aval.str_short()}. To map over a batch of "
            f"keys use functrax.vmap.")
    return key


def _check_broadcast(name, shape, *param_shapes):
    """Sample shape must be a broadcast of the parameters' shapes, as in JAX."""
    for ps in param_shapes:
        try:
            out = np.broadcast_shapes(tuple(shape), tuple(ps))
        except ValueError:
            out = None
        if out != tuple(shape):
            raise ValueError(f"random.{name}: shape {tuple(shape)} is not broadcast-compatible "
                             f"with the parameter shape {tuple(ps)}")


# ---------------------------------------------------------------------------------------------
# Keys


def threefry_2x32(keypair, count):
    """Threefry-2x32 of a uint32 array of counters under a key (JAX's ``threefry_2x32``):
    the flattened counters are cut into two halves that form the cipher's input pairs (an odd
    count is padded with one zero), and the two output halves are joined back."""
    _check_key("threefry_2x32", keypair)
    k1, k2 = _take1(keypair, 0), _take1(keypair, 1)
    aval = get_aval(count)
    if aval.dtype != _U32:
        raise TypeError(f"random.threefry_2x32: counters must be uint32, got {aval.str_short()}")
    n = aval.size
    flat = lax.reshape(count, (n,))
    odd = n % 2
    if odd:
        flat = lax.pad(flat, np.uint32(0), ((0, 1, 0),))
    half = (n + odd) // 2
    x1 = lax.slice_in_dim(flat, 0, half)
    x2 = lax.slice_in_dim(flat, half, 2 * half)
    y1, y2 = lax.threefry2x32(k1, k2, x1, x2)
    out = lax.reshape(_stack([y1, y2]), (2 * half,))
    if odd:
        out = lax.slice_in_dim(out, 0, n)
    return lax.reshape(out, aval.shape)


def PRNGKey(seed):
    """A key from an integer seed: the words ``(seed >> 32, seed & 0xFFFFFFFF)`` of the seed
    as a 64-bit integer (negative seeds in two's complement), as JAX's ``PRNGKey``."""
    if isinstance(seed, Tracer):
        aval = get_aval(seed)
        if aval.shape != () or not dtypes.is_integer(aval.dtype):
            raise TypeError(f"random.key: the seed must be a scalar integer, got "
                            f"{aval.str_short()}")
        s = lax.convert_element_type(lax.convert_element_type(seed, np.int64), _U64)
        hi = lax.convert_element_type(lax.div(s, np.uint64(1 << 32)), _U32)
        lo = lax.convert_element_type(lax.rem(s, np.uint64(1 << 32)), _U32)
        return _stack([hi, lo])
    s = np.asarray(seed)
    if s.shape != () or not (dtypes.is_integer(s.dtype) or s.dtype == np.bool_):
        raise TypeError(f"random.key: the seed must be a scalar integer, got {seed!r}")
    v = int(s) & ((1 << 64) - 1)
    return core.wrap_array(np.array([v >> 32, v & _MASK32], dtype=np.uint32))


key = PRNGKey


def key_data(keys):
    """The raw uint32 words of keys (keys are already raw here)."""
    return keys


def split(key, num=2):
    """``num`` new independent keys from ``key`` (shape ``(num, 2)``; ``num`` may be a
    shape tuple, giving ``(*num, 2)``)."""
    _check_key("split", key)
    shape = _shape("split", num)
    size = int(np.prod(shape, dtype=np.int64))
    words = threefry_2x32(key, lax.iota(_U32, 2 * size))
    return lax.reshape(words, shape + (2,))


def fold_in(key, data):
    """A new key from ``key`` and an integer ``data`` (e.g. a step or a layer index)."""
    _check_key("fold_in", key)
    if isinstance(data, Tracer):
        d = lax.convert_element_type(data, _U32)
    else:
        d = np.uint32(int(np.asarray(data)) & _MASK32)
    count = _stack([lax.full((), 0, _U32), lax.broadcast_in_dim(d, (), ())])
    return threefry_2x32(key, count)


def _random_bits(key, bit_width, shape):
    size = int(np.prod(shape, dtype=np.int64))
    n_words = -(-bit_width * size // 32)
    if n_words >= 1 << 32:
        raise ValueError(f"random: {size} samples of {bit_width} bits exceed one key's counter "
                         f"range; split the key and draw in pieces")
    words = threefry_2x32(key, lax.iota(_U32, n_words)) if n_words else \
        lax.full((0,), 0, _U32)
    if bit_width == 32:
        return lax.reshape(words, shape)
    if bit_width == 64:
        hi = lax.convert_element_type(lax.slice_in_dim(words, 0, size), _U64)
        lo = lax.convert_element_type(lax.slice_in_dim(words, size, 2 * size), _U64)
        return lax.reshape(lax.add(lax.mul(hi, np.uint64(1 << 32)), lo), shape)
    # 8 and 16 bits: each word yields 32 // bit_width values, lowest bits first.
    per = 32 // bit_width
    out_dtype = np.dtype(f"uint{bit_width}")
    grid = (n_words, per)
    w = lax.broadcast_in_dim(words, grid, (0,))
    shifts = np.array([1 << (bit_width * j) for j in range(per)], dtype=np.uint32)
    parts = lax.rem(lax.div(w, lax.broadcast_in_dim(shifts, grid, (1,))),
                    np.uint32(1 << bit_width))
    flat = lax.reshape(lax.convert_element_type(parts, out_dtype), (n_words * per,))
    return lax.reshape(lax.slice_in_dim(flat, 0, size), shape)


def bits(key, shape=(), dtype=np.uint32):
    """Uniform random bits: an unsigned integer array of ``shape`` and ``dtype``
    (uint8, uint16, uint32 or uint64)."""
    _check_key("bits", key)
    dtype = np.dtype(dtype)
    if dtype.kind != "u" or dtype.itemsize not in (1, 2, 4, 8):
        raise TypeError(f"random.bits: dtype must be an unsigned integer dtype, got {dtype.name}")
    return _random_bits(key, dtype.itemsize * 8, _shape("bits", shape))


# ---------------------------------------------------------------------------------------------
# Continuous distributions


def uniform(key, shape=(), dtype=np.float64, minval=0.0, maxval=1.0):
    """Uniform floats in ``[minval, maxval)``, differentiable in ``minval`` and ``maxval``.

    The top ``nmant`` bits of ``nbits`` random bits form the mantissa of a number in [0, 1),
    exactly as JAX builds it (JAX ORs them into the bits of 1.0 and subtracts 1; the integer
    scaled by 2**-nmant is the same number)."""
    _check_key("uniform", key)
    dtype = _float_dtype("uniform", dtype)
    shape = _shape("uniform", shape)
    minval = lax.convert_element_type(minval, dtype)
    maxval = lax.convert_element_type(maxval, dtype)
    _check_broadcast("uniform", shape, get_aval(minval).shape, get_aval(maxval).shape)
    fi = np.finfo(dtype)
    nbits, nmant = fi.bits, fi.nmant
    raw = _random_bits(key, nbits, shape)
    udt = raw.dtype
    mant = lax.div(raw, np.array(1 << (nbits - nmant), dtype=udt))
    floats = lax.mul(lax.convert_element_type(mant, dtype), np.array(2.0 ** -nmant, dtype))
    # minval/maxval broadcast inside the arithmetic (checked above): broadcasting them first
    # would make host arrays of the full shape, which may not meet a GPU key's samples.
    lo, hi = minval, maxval
    out = lax.add(lax.mul(floats, lax.sub(hi, lo)), lo)
    # Rounding of the affine map can land just below minval; clamp as JAX does.
    return lax.max(lo, out)


def normal(key, shape=(), dtype=np.float64):
    """Standard normal samples: ``sqrt(2) * erfinv(u)`` with u uniform in (-1, 1), as JAX.
    For N(mu, sigma**2) use ``mu + sigma * normal(key, shape)`` (differentiable)."""
    _check_key("normal", key)
    dtype = _float_dtype("normal", dtype)
    shape = _shape("normal", shape)
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
    u = uniform(key, shape, dtype, lo, np.array(1.0, dtype))
    return lax.mul(np.array(np.sqrt(2.0), dtype), lax.erf_inv(u))


def truncated_normal(key, lower, upper, shape=None, dtype=np.float64):
    """Standard normal samples conditioned on ``lower < x < upper`` (inverse-CDF sampling,
    differentiable in ``lower`` and ``upper``). ``shape`` defaults to the broadcast of the
    bounds' shapes."""
    _check_key("truncated_normal", key)
    dtype = _float_dtype("truncated_normal", dtype)
    lower = lax.convert_element_type(lower, dtype)
    upper = lax.convert_element_type(upper, dtype)
    b_shape = np.broadcast_shapes(get_aval(lower).shape, get_aval(upper).shape)
    shape = b_shape if shape is None else _shape("truncated_normal", shape)
    _check_broadcast("truncated_normal", shape, get_aval(lower).shape, get_aval(upper).shape)
    sqrt2 = np.array(np.sqrt(2.0), dtype)
    a = lax.erf(lax.div(lower, sqrt2))
    b = lax.erf(lax.div(upper, sqrt2))
    u = uniform(key, shape, dtype, a, b)
    out = lax.mul(sqrt2, lax.erf_inv(u))
    # erf saturates in the tails: keep samples inside the requested interval.
    return lax.min(lax.max(out, lax.broadcast_to(lower, shape)), lax.broadcast_to(upper, shape))


def gumbel(key, shape=(), dtype=np.float64):
    """Standard Gumbel samples, ``-log(-log(u))``."""
    _check_key("gumbel", key)
    dtype = _float_dtype("gumbel", dtype)
    u = uniform(key, _shape("gumbel", shape), dtype, np.finfo(dtype).tiny, 1.0)
    return lax.neg(lax.log(lax.neg(lax.log(u))))


def exponential(key, shape=(), dtype=np.float64):
    """Standard exponential samples, ``-log(1 - u)``."""
    _check_key("exponential", key)
    dtype = _float_dtype("exponential", dtype)
    u = uniform(key, _shape("exponential", shape), dtype)
    return lax.neg(lax.log1p(lax.neg(u)))


def laplace(key, shape=(), dtype=np.float64):
    """Standard Laplace samples, ``sign(u) * log(1 - |u|)`` with u uniform in (-1, 1)."""
    _check_key("laplace", key)
    dtype = _float_dtype("laplace", dtype)
    lo = np.array(-1.0 + np.finfo(dtype).epsneg, dtype)
    u = uniform(key, _shape("laplace", shape), dtype, lo, np.array(1.0, dtype))
    return lax.mul(lax.sign(u), lax.log1p(lax.neg(lax.abs(u))))


def multivariate_normal(key, mean, cov, shape=None, dtype=None, method="cholesky"):
    """Samples of N(mean, cov): ``mean + L z`` with ``L L^T = cov`` (``method="cholesky"``)
    or ``L = U sqrt(s)`` from ``eigh`` (``method="eigh"``); differentiable in mean and cov.

    ``mean`` has shape ``(..., n)``, ``cov`` ``(..., n, n)``; the result has shape
    ``shape + (n,)`` with ``shape`` defaulting to the broadcast batch shape."""
    _check_key("multivariate_normal", key)
    if method not in ("cholesky", "eigh"):
        raise ValueError(f"random.multivariate_normal: method must be 'cholesky' or 'eigh', "
                         f"got {method!r}")
    m_aval, c_aval = get_aval(mean), get_aval(cov)
    if dtype is None:
        dtype = dtypes.promote_avals_dtype([m_aval, c_aval])[0]
        if not dtypes.is_float(dtype):
            dtype = dtypes.default_float
    dtype = _float_dtype("multivariate_normal", dtype)
    if m_aval.ndim < 1 or c_aval.ndim < 2 or c_aval.shape[-1] != c_aval.shape[-2] or \
            c_aval.shape[-1] != m_aval.shape[-1]:
        raise ValueError(f"random.multivariate_normal: mean must have shape (..., n) and cov "
                         f"shape (..., n, n); got mean {m_aval.shape} and cov {c_aval.shape}")
    n = m_aval.shape[-1]
    batch = np.broadcast_shapes(m_aval.shape[:-1], c_aval.shape[:-2])
    shape = batch if shape is None else _shape("multivariate_normal", shape)
    _check_broadcast("multivariate_normal", shape, m_aval.shape[:-1], c_aval.shape[:-2])
    mean = lax.convert_element_type(mean, dtype)
    cov = lax.convert_element_type(cov, dtype)
    if method == "cholesky":
        factor = lax.linalg.cholesky(cov)
    else:
        v, w = lax.linalg.eigh(cov)
        # Columns of v scaled by sqrt of their eigenvalues (clipped at 0 for round-off).
        root = lax.sqrt(lax.max(w, np.array(0.0, dtype)))
        factor = lax.mul(v, lax.expand_dims(root, (get_aval(root).ndim - 1,)))
    z = normal(key, shape + (n,), dtype)
    # (factor @ z) over the last axis, as a broadcast product and a sum: batched factors and
    # batched samples line up with numpy broadcasting.
    f_shape = get_aval(factor).shape
    full = shape + (n, n)
    f = lax.broadcast_to(factor, full) if f_shape != full else factor
    zz = lax.broadcast_in_dim(z, full, tuple(range(len(shape))) + (len(shape) + 1,))
    lz = lax.reduce_sum(lax.mul(f, zz), (len(full) - 1,))
    return lax.add(lax.broadcast_to(mean, shape + (n,)), lz)


# ---------------------------------------------------------------------------------------------
# Discrete distributions


def bernoulli(key, p=0.5, shape=None):
    """Booleans that are True with probability ``p``; ``shape`` defaults to ``p``'s shape."""
    _check_key("bernoulli", key)
    p_aval = get_aval(p)
    dtype = p_aval.dtype if dtypes.is_float(p_aval.dtype) else dtypes.default_float
    shape = p_aval.shape if shape is None else _shape("bernoulli", shape)
    _check_broadcast("bernoulli", shape, p_aval.shape)
    return lax.lt(uniform(key, shape, dtype), lax.convert_element_type(p, dtype))


def categorical(key, logits, axis=-1, shape=None):
    """Samples of category indices from unnormalized log-probabilities ``logits`` (the
    Gumbel-max trick). ``shape`` defaults to ``logits``' shape without ``axis``; a longer
    ``shape`` draws that many independent samples (its trailing dims match the batch)."""
    _check_key("categorical", key)
    l_aval = get_aval(logits)
    if l_aval.ndim == 0:
        raise ValueError("random.categorical: logits must have at least one dimension")
    axis = axis % l_aval.ndim
    batch = l_aval.shape[:axis] + l_aval.shape[axis + 1:]
    shape = batch if shape is None else _shape("categorical", shape)
    if len(shape) < len(batch) or np.broadcast_shapes(shape[len(shape) - len(batch):],
                                                      batch) != shape[len(shape) - len(batch):]:
        raise ValueError(f"random.categorical: shape {shape} is not compatible with the batch "
                         f"shape {batch} of logits {l_aval.shape} (axis {axis})")
    prefix = shape[:len(shape) - len(batch)]
    sample_logits_shape = list(shape[len(shape) - len(batch):])
    sample_logits_shape.insert(axis, l_aval.shape[axis])
    dtype = l_aval.dtype if dtypes.is_float(l_aval.dtype) else dtypes.default_float
    full = prefix + tuple(sample_logits_shape)
    g = gumbel(key, full, dtype)
    lg = lax.broadcast_in_dim(lax.convert_element_type(logits, dtype), full,
                              tuple(range(len(prefix), len(full))))
    return lax.argmax(lax.add(g, lg), len(prefix) + axis, np.int64)


def _clip_int(name, v, dtype):
    """``v`` clipped to ``dtype``'s range and cast to it, and whether it was above the range
    (None when it cannot be)."""
    info = np.iinfo(dtype)
    if isinstance(v, Tracer):
        v_dtype = get_aval(v).dtype
        if not dtypes.is_integer(v_dtype):
            raise TypeError(f"random.{name}: bounds must be integers, got {v_dtype.name}")
        vinfo = np.iinfo(v_dtype)
        above = None
        if vinfo.max > info.max:
            top = np.array(info.max, v_dtype)
            above = lax.gt(v, top)
            v = lax.min(v, top)
        if vinfo.min < info.min:
            v = lax.max(v, np.array(info.min, v_dtype))
        return lax.convert_element_type(v, dtype), above
    arr = np.asarray(v)
    if not (dtypes.is_integer(arr.dtype) or arr.dtype == object):
        raise TypeError(f"random.{name}: bounds must be integers, got {arr.dtype.name}")
    vals = [int(e) for e in arr.ravel()]
    clipped = np.array([min(max(e, info.min), info.max) for e in vals],
                       dtype=dtype).reshape(arr.shape)
    above = np.array([e > info.max for e in vals], dtype=bool).reshape(arr.shape)
    return clipped, (above if above.any() else None)


def randint(key, shape, minval, maxval, dtype=np.int64):
    """Uniform integers in ``[minval, maxval)``; bounds outside ``dtype``'s range are
    clipped, and a ``maxval`` above it includes ``dtype``'s maximum (``randint(k, s, 0, 256,
    'uint8')`` covers all bytes). An empty range gives ``minval``.

    Two draws of random bits are combined modulo the span, as JAX does, so the bias of a
    plain modulo is negligible even for spans close to 2**bits."""
    _check_key("randint", key)
    dtype = np.dtype(dtype)
    if not dtypes.is_integer(dtype):
        raise TypeError(f"random.randint: dtype must be an integer dtype, got {dtype.name}")
    shape = _shape("randint", shape)
    nbits = dtype.itemsize * 8
    udt = np.dtype(f"uint{nbits}")
    lo, _ = _clip_int("randint", minval, dtype)
    hi, above = _clip_int("randint", maxval, dtype)
    _check_broadcast("randint", shape, get_aval(lo).shape, get_aval(hi).shape)
    lo = lax.broadcast_to(lo, shape)
    hi = lax.broadcast_to(hi, shape)
    pair = split(key)
    higher = _random_bits(_take1(pair, 0), nbits, shape)
    lower = _random_bits(_take1(pair, 1), nbits, shape)
    # The difference wraps correctly in the unsigned type even when it overflows dtype.
    span = lax.sub(lax.convert_element_type(hi, udt), lax.convert_element_type(lo, udt))
    empty = lax.le(hi, lo)
    span = lax.select_n(empty, span, lax.full(shape, 1, udt))
    if above is not None:
        grow = lax.bitwise_and(lax.broadcast_to(above, shape), lax.bitwise_not(empty))
        span = lax.select_n(grow, span, lax.add(span, np.array(1, udt)))
    # A span that wrapped to 0 is the full range of the type: the raw bits are the offset.
    full_range = lax.eq(span, np.array(0, udt))
    safe = lax.select_n(full_range, span, lax.full(shape, 1, udt))
    mult = lax.rem(np.array(1 << (nbits // 2), udt), safe)
    mult = lax.rem(lax.mul(mult, mult), safe)
    offset = lax.add(lax.mul(lax.rem(higher, safe), mult), lax.rem(lower, safe))
    offset = lax.select_n(full_range, lax.rem(offset, safe), lower)
    return lax.add(lo, lax.convert_element_type(offset, dtype))


def _shuffle_rounds(n):
    # Enough rounds of sorting by random 32-bit keys that ties (which keep order) are rare.
    return max(1, math.ceil(3 * math.log(max(1, n)) / math.log(2.0 ** 32 - 1)))


def _shuffle(key, x, axis):
    """Shuffle x along axis by sorting it by random 32-bit keys. The keys vary along ``axis``
    only, so every slice of a multi-dimensional x moves by the same permutation."""
    aval = get_aval(x)
    n = aval.shape[axis]
    for _ in range(_shuffle_rounds(n)):
        pair = split(key)
        key, sub = _take1(pair, 0), _take1(pair, 1)
        sort_keys = lax.broadcast_in_dim(_random_bits(sub, 32, (n,)), aval.shape, (axis,))
        _, x = lax.sort((sort_keys, x), dimension=axis, num_keys=1)
    return x


def _shuffle_independent(key, x, axis):
    """Shuffle every slice of x along axis independently."""
    aval = get_aval(x)
    for _ in range(_shuffle_rounds(aval.shape[axis])):
        pair = split(key)
        key, sub = _take1(pair, 0), _take1(pair, 1)
        _, x = lax.sort((_random_bits(sub, 32, aval.shape), x), dimension=axis, num_keys=1)
    return x


def permutation(key, x, axis=0, independent=False):
    """A random permutation of ``arange(x)`` (an int ``x``), or of ``x`` along ``axis``
    (the same shuffle for every slice, unless ``independent=True``)."""
    _check_key("permutation", key)
    if not isinstance(x, Tracer) and np.ndim(x) == 0 and dtypes.is_integer(np.asarray(x).dtype):
        n = int(x)
        return _shuffle(key, lax.iota(np.int64, n), 0)
    aval = get_aval(x)
    if aval.ndim == 0:
        raise TypeError("random.permutation: x must be an integer or an array of rank >= 1")
    axis = axis % aval.ndim
    if independent:
        return _shuffle_independent(key, x, axis)
    return _shuffle(key, x, axis)


def choice(key, a, shape=(), replace=True, p=None, axis=0):
    """Random samples from ``a`` (an array, or ``arange(a)`` for an int) along ``axis``:
    with or without replacement, uniformly or with probabilities ``p``."""
    _check_key("choice", key)
    shape = _shape("choice", shape)
    if not isinstance(a, Tracer) and np.ndim(a) == 0:
        n_inputs = int(a)
        arr = None
    else:
        a_aval = get_aval(a)
        if a_aval.ndim == 0:
            raise ValueError("random.choice: a must be an integer or an array of rank >= 1")
        axis = axis % a_aval.ndim
        n_inputs = a_aval.shape[axis]
        arr = a
    n_draws = int(np.prod(shape, dtype=np.int64))
    if n_draws and n_inputs <= 0:
        raise ValueError("random.choice: a must be non-empty")
    if not replace and n_draws > n_inputs:
        raise ValueError(f"random.choice: cannot take a larger sample ({n_draws}) than the "
                         f"population ({n_inputs}) when replace=False")
    if p is not None:
        p_aval = get_aval(p)
        if p_aval.shape != (n_inputs,):
            raise ValueError(f"random.choice: p must have shape ({n_inputs},) (one probability "
                             f"per element of a along axis), got {p_aval.shape}")
    if p is None:
        if replace:
            ind = randint(key, shape, 0, n_inputs)
        else:
            ind = lax.slice_in_dim(permutation(key, n_inputs), 0, n_draws)
            ind = lax.reshape(ind, shape)
    else:
        pf = lax.convert_element_type(p, dtypes.default_float if not dtypes.is_float(
            p_aval.dtype) else p_aval.dtype)
        if replace:
            # Inverse CDF: count the cumulative probabilities below a uniform draw.
            cdf = lax.cumsum(pf)
            total = _take1(lax.reshape(lax.slice_in_dim(cdf, n_inputs - 1, n_inputs), (1,)), 0)
            u = uniform(key, shape, get_aval(pf).dtype)
            r = lax.mul(total, lax.sub(np.array(1.0, get_aval(pf).dtype), u))
            grid = shape + (n_inputs,)
            below = lax.lt(lax.broadcast_in_dim(cdf, grid, (len(shape),)),
                           lax.broadcast_in_dim(r, grid, tuple(range(len(shape)))))
            ind = lax.reduce_sum(lax.convert_element_type(below, np.int64), (len(shape),))
            ind = lax.min(ind, np.int64(n_inputs - 1))
        else:
            # Gumbel top-k: the k largest of log p + Gumbel noise are a sample without
            # replacement with probabilities p.
            pdt = get_aval(pf).dtype
            pos = lax.gt(pf, np.array(0, pdt))
            # log(0) = -inf excludes zero-probability entries (without numpy's warning).
            logp = lax.select(pos, lax.log(lax.select(pos, pf, lax.full_like(pf, 1))),
                              lax.full_like(pf, -np.inf))
            g = lax.add(gumbel(key, (n_inputs,), pdt), logp)
            _, order = lax.sort((lax.neg(g), lax.iota(np.int64, n_inputs)), dimension=0,
                                num_keys=1)
            ind = lax.reshape(lax.slice_in_dim(order, 0, n_draws), shape)
    if arr is None:
        return ind
    flat_ind = lax.reshape(ind, (n_draws,))
    picked = fnp.take(arr, flat_ind, axis=axis)
    a_shape = get_aval(arr).shape
    return lax.reshape(picked, a_shape[:axis] + shape + a_shape[axis + 1:])
