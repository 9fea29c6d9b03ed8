"""The pytree utilities under short names, as ``jax.tree`` offers them.

>>> from functrax import tree
>>> tree.map(lambda x: x + 1, {'a': 1, 'b': (2, None)})
{'a': 2, 'b': (3, None)}
>>> tree.leaves([1, [2, 3]])
[1, 2, 3]

Each name is the same object as its ``functrax.tree_util`` counterpart
(``tree.map is tree_util.tree_map``); see there for the contracts.
"""

from .tree_util import (
    tree_all as all,
    tree_flatten as flatten,
    tree_flatten_with_path as flatten_with_path,
    tree_leaves as leaves,
    tree_leaves_with_path as leaves_with_path,
    tree_map as map,
    tree_map_with_path as map_with_path,
    tree_reduce as reduce,
    tree_structure as structure,
    tree_transpose as transpose,
    tree_unflatten as unflatten,
)

__all__ = [
    "all",
    "flatten",
    "flatten_with_path",
    "leaves",
    "leaves_with_path",
    "map",
    "map_with_path",
    "reduce",
    "structure",
    "transpose",
    "unflatten",
]
