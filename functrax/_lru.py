"""A bounded least-recently-used mapping for jit's global caches.

The executable cache and the caches of programs derived from jitted functions (their JVPs,
transposes, partial evaluations and batched forms) keep the jaxprs they are keyed on alive, so
without a bound a long session that jits many distinct functions would grow without limit.
The bound is read on every insertion from ``functrax.config.jit_cache_size`` (environment
``FUNCTRAX_JIT_CACHE_SIZE``, default 4096 entries per cache), so it can change at run time.

>>> from functrax._lru import LRUCache
>>> c = LRUCache(lambda: 2)
>>> c["a"] = 1; c["b"] = 2; c.get("a"); c["c"] = 3
1
>>> sorted(c.keys())
['a', 'c']
"""
from __future__ import annotations

from collections import OrderedDict

__all__ = ["LRUCache"]


class LRUCache:
    """``get`` refreshes an entry; ``cache[key] = value`` inserts and evicts the entries used
    longest ago beyond ``maxsize()`` (a callable, so the bound follows the config)."""

    __slots__ = ("_data", "_maxsize", "evictions")

    def __init__(self, maxsize):
        self._data = OrderedDict()
        self._maxsize = maxsize
        self.evictions = 0

    def get(self, key, default=None):
        data = self._data
        try:
            value = data[key]
        except KeyError:
            return default
        data.move_to_end(key)
        return value

    def __setitem__(self, key, value):
        data = self._data
        data[key] = value
        data.move_to_end(key)
        limit = max(1, int(self._maxsize()))
        while len(data) > limit:
            data.popitem(last=False)
            self.evictions += 1

    def __contains__(self, key):
        return key in self._data

    def __len__(self):
        return len(self._data)

    def keys(self):
        return self._data.keys()

    def clear(self):
        self._data.clear()
