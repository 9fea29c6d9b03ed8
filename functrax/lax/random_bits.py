"""Random bits: the Threefry-2x32 block cipher as a primitive (the counter-based generator
behind ``functrax.random``, as in JAX).

``threefry2x32(key1, key2, x1, x2)`` encrypts the counter pairs ``(x1, x2)`` under the key
``(key1, key2)`` with 20 rounds of Threefry-2x32 (Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", SC 2011). All four operands are uint32 arrays that broadcast against each
other; the two uint32 outputs have the broadcast shape. Additions wrap modulo 2**32.

>>> import numpy as np
>>> from functrax import lax
>>> k = np.uint32([0x13198a2e, 0x03707344])
>>> [hex(int(v)) for v in lax.threefry2x32(k[0], k[1], np.uint32(0x243f6a88),
...                                        np.uint32(0x85a308d3))]
['0xc4923a9c', '0x483df7a0']
"""
from __future__ import annotations

import numpy as np

from ..core import Primitive, ShapedArray
from ..interpreters import batching
from ..interpreters import jvp as ad
from ._util import array_namespace, broadcast_shapes

__all__ = ["threefry2x32_p", "threefry2x32"]

# Threefry-2x32 rotation distances: the first group of four rounds uses the first row, the
# next group the second row, alternating; the key is re-injected after every four rounds.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
# The Skein key-schedule parity constant: the third key word is k0 ^ k1 ^ this.
_KS_PARITY = 0x1BD11BDA


def _threefry2x32_impl(key1, key2, x1, x2):
    xp = array_namespace(key1, key2, x1, x2)
    arrays = [xp.asarray(a) for a in (key1, key2, x1, x2)]
    if any(a.dtype != np.uint32 for a in arrays):
        # Same contract as under tracing: bind re-raises the abstract eval's message.
        raise TypeError("threefry2x32: operands must be uint32")
    shape = np.broadcast_shapes(*[a.shape for a in arrays])
    # Work on flat 1-d copies: ufuncs on arrays wrap modulo 2**32 silently, whereas numpy's
    # scalar arithmetic (what 0-d operands decay to) warns on overflow.
    k0, k1, v0, v1 = [xp.broadcast_to(a, shape).reshape(-1).copy() for a in arrays]
    k2 = k0 ^ k1 ^ np.uint32(_KS_PARITY)
    ks = (k0, k1, k2)

    def rotl(v, d):
        return (v << np.uint32(d)) | (v >> np.uint32(32 - d))

    v0 += k0
    v1 += k1
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            v0 += v1
            v1 = rotl(v1, r)
            v1 ^= v0
        # Key injection number s = group + 1 adds ks[s % 3], ks[(s + 1) % 3] + s.
        s = group + 1
        v0 += ks[s % 3]
        v1 += ks[(s + 1) % 3]
        v1 += np.uint32(s)
    return [v0.reshape(shape), v1.reshape(shape)]


def _threefry2x32_abstract_eval(key1, key2, x1, x2):
    avals = (key1, key2, x1, x2)
    if any(a.dtype != np.uint32 for a in avals):
        got = ", ".join(a.dtype.name for a in avals)
        raise TypeError(f"threefry2x32: all four operands (key1, key2, x1, x2) must be uint32, "
                        f"got {got}")
    shape = broadcast_shapes("threefry2x32", *[a.shape for a in avals])
    out = ShapedArray(shape, np.uint32)
    return [out, out]


threefry2x32_p = Primitive("threefry2x32")
threefry2x32_p.multiple_results = True
threefry2x32_p.def_impl(_threefry2x32_impl)
threefry2x32_p.def_abstract_eval(_threefry2x32_abstract_eval)


def threefry2x32(key1, key2, x1, x2):
    """Threefry-2x32 (20 rounds) of the counters ``(x1, x2)`` under the key ``(key1, key2)``.

    The four uint32 operands broadcast numpy-style; returns ``[y1, y2]``."""
    return threefry2x32_p.bind(key1, key2, x1, x2)


# Random bits are integers: nothing flows through them to a derivative.
ad.defjvp_zero(threefry2x32_p)


def _threefry2x32_batch(vals, dims):
    # The cipher is elementwise over its broadcast operands, so batching is broadcasting:
    # one call on the whole batch, both outputs carrying the batch dim where the helper put it.
    outs, out_dim = batching.broadcast_batcher(threefry2x32_p, vals, dims)
    return outs, [out_dim, out_dim]


batching.batching_rules[threefry2x32_p] = _threefry2x32_batch
