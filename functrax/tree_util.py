"""Pytrees: nested containers flattened into a list of leaves plus a structure.

A *pytree* is a nested Python value built from container *nodes* whose
non-container parts are *leaves*.  The built-in node types are ``tuple``,
``list``, ``dict`` (children in sorted key order), ``None`` (a node with no
children, so it is never a leaf), namedtuples (any ``tuple`` subclass with a
``_fields`` attribute), ``collections.OrderedDict`` (children in insertion
order) and ``collections.defaultdict`` (sorted key order).  More node types
can be added with :func:`register_pytree_node`,
:func:`register_pytree_node_class`, :func:`register_dataclass` and friends.
Everything else, arrays included, is a leaf.  Dispatch is on the exact type:
an unregistered subclass of ``dict`` or ``list`` is a leaf, as in JAX.

``tree_flatten`` splits a tree into its leaves and a :class:`PyTreeDef`
(a *treedef*): a hashable, comparable description of the containers.
``tree_unflatten`` is its inverse.

>>> leaves, treedef = tree_flatten({'b': [1, 2], 'a': (3, None)})
>>> leaves
[3, 1, 2]
>>> treedef
PyTreeDef({'a': (*, None), 'b': [*, *]})
>>> tree_unflatten(treedef, ['x', 'y', 'z'])
{'a': ('x', None), 'b': ['y', 'z']}

Treedefs are part of jit cache keys, so flattening, unflattening, hashing
and comparing are written for speed: the structure is a nested tuple that
Python compares and hashes in C, and the hash is cached on the treedef.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "PyTreeDef",
    "DictKey",
    "SequenceKey",
    "GetAttrKey",
    "FlattenedIndexKey",
    "KeyEntry",
    "KeyPath",
    "Partial",
    "all_leaves",
    "keystr",
    "register_dataclass",
    "register_pytree_node",
    "register_pytree_node_class",
    "register_pytree_with_keys",
    "register_pytree_with_keys_class",
    "register_static",
    "tree_all",
    "tree_flatten",
    "tree_flatten_with_path",
    "tree_leaves",
    "tree_leaves_with_path",
    "tree_map",
    "tree_map_with_path",
    "tree_reduce",
    "tree_structure",
    "tree_transpose",
    "tree_unflatten",
    "treedef_children",
    "treedef_is_leaf",
    "treedef_is_strict_leaf",
    "treedef_tuple",
]


# ---------------------------------------------------------------------------
# Structure representation
#
# A treedef wraps a *node*, which is one of
#   _LEAF                      a leaf
#   _NONE                      the None node
#   (kind, aux, children)      any other node: kind is a _NodeKind, aux the
#                              hashable node data, children either a tuple
#                              of child nodes or, when every child is a leaf,
#                              just their number (always that int form then,
#                              so each structure has exactly one spelling).
# Plain tuples keep == and hash() in C, which is what makes treedefs cheap
# jit cache keys; kinds compare by identity, so list vs tuple, dict vs
# OrderedDict and different registered classes never compare equal.


class _Marker:
    """A named singleton that pickles back to the same module global."""

    __slots__ = ("_text", "_global_name")

    def __init__(self, text, global_name):
        self._text = text
        self._global_name = global_name

    def __repr__(self):
        return self._text

    def __reduce__(self):
        return self._global_name


_LEAF = _Marker("*", "_LEAF")
_NONE = _Marker("None", "_NONE")


class _NodeKind:
    """How one node type is taken apart and put back together.

    ``flatten(x) -> (children, aux)``, ``unflatten(aux, children) -> x`` and
    ``flatten_with_keys(x) -> ([(key, child), ...], aux)``; ``aux`` must be
    the same object (up to ==) from both flatten functions.
    """

    __slots__ = ("type", "flatten", "unflatten", "flatten_with_keys", "label")

    def __init__(self, nodetype, flatten, unflatten, flatten_with_keys, label):
        self.type = nodetype
        self.flatten = flatten
        self.unflatten = unflatten
        self.flatten_with_keys = flatten_with_keys
        self.label = label

    def __repr__(self):
        return f"<pytree node kind {self.label}>"

    def __reduce__(self):
        # Pickle by reference, so an unpickled treedef compares equal to a
        # fresh one (kinds compare by identity).
        return (_kind_for_type, (self.type,))


def _kind_for_type(nodetype):
    if nodetype is _NamedTupleMarker:
        return _NAMEDTUPLE
    try:
        return _registry[nodetype]
    except KeyError:
        raise ValueError(f"{nodetype} is not a registered pytree node type") from None


class _NamedTupleMarker:
    """Stands in for 'any namedtuple type' as the type of the namedtuple kind."""


def _sorted_keys(d):
    """The keys of ``d`` as a sorted tuple.

    Keys of mixed, mutually unorderable types (``{1: ., 'a': .}``) are grouped
    by type name first, so every dict still has one deterministic order.
    """
    try:
        return tuple(sorted(d))
    except TypeError:
        pass
    groups = {}
    for k in d:
        t = type(k)
        groups.setdefault((t.__module__, t.__qualname__), []).append(k)
    out = []
    for name in sorted(groups):
        group = groups[name]
        try:
            group.sort()
        except TypeError:
            group.sort(key=repr)
        out.extend(group)
    return tuple(out)


# -- built-in kinds ---------------------------------------------------------


def _dict_flatten(x):
    keys = _sorted_keys(x)
    return [x[k] for k in keys], keys


def _dict_flatten_with_keys(x):
    keys = _sorted_keys(x)
    return [(DictKey(k), x[k]) for k in keys], keys


def _seq_flatten(x):
    return x, None


def _seq_flatten_with_keys(x):
    return [(SequenceKey(i), c) for i, c in enumerate(x)], None


def _namedtuple_flatten(x):
    return x, type(x)


def _namedtuple_flatten_with_keys(x):
    return [(GetAttrKey(f), c) for f, c in zip(type(x)._fields, x)], type(x)


def _ordereddict_flatten(x):
    return list(x.values()), tuple(x)


def _ordereddict_flatten_with_keys(x):
    return [(DictKey(k), c) for k, c in x.items()], tuple(x)


def _defaultdict_flatten(x):
    keys = _sorted_keys(x)
    return [x[k] for k in keys], (x.default_factory, keys)


def _defaultdict_flatten_with_keys(x):
    keys = _sorted_keys(x)
    return [(DictKey(k), x[k]) for k in keys], (x.default_factory, keys)


_DICT = _NodeKind(
    dict, _dict_flatten, lambda keys, values: dict(zip(keys, values)),
    _dict_flatten_with_keys, "dict")
_LIST = _NodeKind(
    list, _seq_flatten, lambda _, values: list(values), _seq_flatten_with_keys, "list")
_TUPLE = _NodeKind(
    tuple, _seq_flatten, lambda _, values: tuple(values), _seq_flatten_with_keys, "tuple")
_NONE_KIND = _NodeKind(
    type(None), lambda x: ((), None), lambda _, values: None,
    lambda x: ((), None), "None")
_NAMEDTUPLE = _NodeKind(
    _NamedTupleMarker, _namedtuple_flatten, lambda cls, values: cls(*values),
    _namedtuple_flatten_with_keys, "namedtuple")
_ORDEREDDICT = _NodeKind(
    collections.OrderedDict, _ordereddict_flatten,
    lambda keys, values: collections.OrderedDict(zip(keys, values)),
    _ordereddict_flatten_with_keys, "OrderedDict")
_DEFAULTDICT = _NodeKind(
    collections.defaultdict, _defaultdict_flatten,
    lambda aux, values: collections.defaultdict(aux[0], zip(aux[1], values)),
    _defaultdict_flatten_with_keys, "defaultdict")

# Explicit registrations: exact type -> kind.  Namedtuples are not listed:
# they are recognised structurally (a tuple subclass with `_fields`).
_registry: dict = {
    dict: _DICT,
    list: _LIST,
    tuple: _TUPLE,
    type(None): _NONE_KIND,
    collections.OrderedDict: _ORDEREDDICT,
    collections.defaultdict: _DEFAULTDICT,
}

# What flattening consults: every type seen so far -> its kind, or _IS_LEAF.
# Caching the leaf verdict turns the per-leaf test into one dict lookup
# (instead of a lookup plus the namedtuple isinstance/hasattr probe).
_IS_LEAF = _Marker("<leaf type>", "_IS_LEAF")
_dispatch: dict = dict(_registry)
_dispatch_get = _dispatch.get
_DISPATCH_CACHE_LIMIT = 4096


def _classify(t):
    """Kind (or _IS_LEAF) of an unregistered type; remembered in _dispatch."""
    kind = _NAMEDTUPLE if issubclass(t, tuple) and hasattr(t, "_fields") else _IS_LEAF
    if len(_dispatch) >= _DISPATCH_CACHE_LIMIT:
        # Bound the cache (types created in a loop would otherwise pile up).
        _dispatch.clear()
        _dispatch.update(_registry)
    _dispatch[t] = kind
    return kind


def _kind_of(x):
    """The node kind of ``x``, or None when ``x`` is a leaf."""
    t = type(x)
    kind = _dispatch_get(t) or _classify(t)
    return None if kind is _IS_LEAF else kind


def _children(node):
    """The child nodes of a non-leaf, non-None node, as a tuple."""
    ch = node[2]
    return (_LEAF,) * ch if type(ch) is int else ch


def _make_node(kind, aux, child_nodes):
    """Build a node in canonical form (see the note on structure above)."""
    for c in child_nodes:
        if c is not _LEAF:
            return (kind, aux, tuple(child_nodes))
    return (kind, aux, len(child_nodes))


# ---------------------------------------------------------------------------
# Flattening and unflattening (the hot paths)


_EMPTY_DICT_NODE = (_DICT, (), 0)


def _flatten_node(x, leaves, _get=_dispatch_get):
    t = type(x)
    kind = _get(t) or _classify(t)
    if kind is _IS_LEAF:
        leaves.append(x)
        return _LEAF
    if kind is _DICT:
        if not x:  # jit's (args, kwargs) usually has empty kwargs
            return _EMPTY_DICT_NODE
        aux = _sorted_keys(x)
        children = map(x.__getitem__, aux)
    elif kind is _LIST or kind is _TUPLE:
        aux = None
        children = x
    elif kind is _NONE_KIND:
        return _NONE
    else:
        children, aux = kind.flatten(x)
    start = len(leaves)
    nodes = None
    # Leaves are decided inline rather than by recursing (one Python call
    # saved per leaf), and the child-node list is only materialised once a
    # child turns out not to be a leaf.
    for c in children:
        t = type(c)
        k = _get(t) or _classify(t)
        if k is _IS_LEAF:
            leaves.append(c)
            if nodes is not None:
                nodes.append(_LEAF)
        else:
            if nodes is None:
                # Every child so far was a leaf and added exactly one.
                nodes = [_LEAF] * (len(leaves) - start)
            nodes.append(_flatten_node(c, leaves))
    if nodes is None:
        return (kind, aux, len(leaves) - start)
    return (kind, aux, tuple(nodes))


def _flatten_node_is_leaf(x, leaves, is_leaf):
    if is_leaf(x):
        leaves.append(x)
        return _LEAF
    kind = _kind_of(x)
    if kind is None:
        leaves.append(x)
        return _LEAF
    if kind is _NONE_KIND:
        return _NONE
    children, aux = kind.flatten(x)
    return _make_node(kind, aux, [_flatten_node_is_leaf(c, leaves, is_leaf) for c in children])


def _collect_leaves(x, leaves, _get=_dispatch_get):
    # _flatten_node without building the structure: tree_leaves is called on
    # every traced argument list, so it gets its own lean copy.
    t = type(x)
    kind = _get(t) or _classify(t)
    if kind is _IS_LEAF:
        leaves.append(x)
        return
    if kind is _DICT:
        if not x:
            return
        children = map(x.__getitem__, _sorted_keys(x))
    elif kind is _LIST or kind is _TUPLE:
        children = x
    elif kind is _NONE_KIND:
        return
    else:
        children = kind.flatten(x)[0]
    for c in children:
        t = type(c)
        if (_get(t) or _classify(t)) is _IS_LEAF:
            leaves.append(c)
        else:
            _collect_leaves(c, leaves)


def _collect_leaves_is_leaf(x, leaves, is_leaf):
    if is_leaf(x):
        leaves.append(x)
        return
    kind = _kind_of(x)
    if kind is None:
        leaves.append(x)
    elif kind is not _NONE_KIND:
        for c in kind.flatten(x)[0]:
            _collect_leaves_is_leaf(c, leaves, is_leaf)


def _unflatten_node(node, it, _islice=itertools.islice):
    if node is _LEAF:
        return next(it)
    if node is _NONE:
        return None
    kind, aux, children = node
    if type(children) is int:
        # All children are leaves: take them straight from the iterator.
        values = _islice(it, children)
        if kind is _DICT:
            return dict(zip(aux, values))
        if kind is _LIST:
            return list(values)
        if kind is _TUPLE:
            return tuple(values)
        values = list(values)
    else:
        values = [next(it) if c is _LEAF else _unflatten_node(c, it) for c in children]
        if kind is _DICT:
            return dict(zip(aux, values))
        if kind is _LIST:
            return values
        if kind is _TUPLE:
            return tuple(values)
    if kind is _NAMEDTUPLE:
        return aux(*values)
    if kind is _ORDEREDDICT or kind is _DEFAULTDICT:
        return kind.unflatten(aux, values)
    # Registered classes get a tuple, as JAX gives them.
    return kind.unflatten(aux, tuple(values))


def _count(node):
    """(num_leaves, num_nodes) of a node."""
    if node is _LEAF:
        return 1, 1
    if node is _NONE:
        return 0, 1
    ch = node[2]
    if type(ch) is int:
        return ch, ch + 1
    leaves, nodes = 0, 1
    for c in ch:
        cl, cn = _count(c)
        leaves += cl
        nodes += cn
    return leaves, nodes


# ---------------------------------------------------------------------------
# Structure matching (tree_map over several trees, flatten_up_to)


class _StructureMismatch(Exception):
    """Internal: carries the reason and, built while unwinding, the path."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason
        self.path_reversed = []

    def path(self):
        return tuple(reversed(self.path_reversed))


def _brief(x, limit=60):
    text = repr(x)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(x).__name__} {text}"


def _describe(kind, aux, num_children):
    if kind is _DICT:
        return f"a dict with keys {list(aux)}"
    if kind is _LIST or kind is _TUPLE:
        return f"a {kind.label} of length {num_children}"
    if kind is _NAMEDTUPLE:
        return f"namedtuple {aux.__qualname__}"
    if kind is _ORDEREDDICT:
        return f"an OrderedDict with keys {list(aux)}"
    if kind is _DEFAULTDICT:
        return f"a defaultdict with keys {list(aux[1])}"
    return f"a {kind.label} node"


def _aux_equal(a, b):
    try:
        return bool(a == b)
    except Exception:  # e.g. arrays in node data: fall back to identity
        return a is b


def _child_key(kind, x, i):
    keyed = kind.flatten_with_keys(x)[0]
    return list(keyed)[i][0]


def _flatten_up_to(node, x, out):
    """Append to ``out`` the subtrees of ``x`` sitting at the leaves of ``node``."""
    if node is _LEAF:
        out.append(x)
        return
    if node is _NONE:
        if x is not None:
            raise _StructureMismatch(f"expected None, got {_brief(x)}")
        return
    kind, aux, _ = node
    children = _children(node)
    xkind = _kind_of(x)
    if xkind is not kind:
        raise _StructureMismatch(
            f"expected {_describe(kind, aux, len(children))}, got {_brief(x)}")
    if kind is _DICT:
        keys = _sorted_keys(x)
        if keys != aux:
            raise _StructureMismatch(
                f"expected a dict with keys {list(aux)}, got one with keys {list(keys)}")
        kids = [x[k] for k in keys]
    elif kind is _LIST or kind is _TUPLE:
        kids = x
    elif kind is _NAMEDTUPLE:
        if type(x) is not aux:
            raise _StructureMismatch(
                f"expected namedtuple {aux.__qualname__}, got {type(x).__qualname__}")
        kids = x
    else:
        kids, xaux = kind.flatten(x)
        kids = list(kids)
        if not _aux_equal(xaux, aux):
            raise _StructureMismatch(
                f"{kind.label} node data differs: expected {aux!r}, got {xaux!r}")
    if len(kids) != len(children):
        if kind is _LIST or kind is _TUPLE:
            reason = (f"expected a {kind.label} of length {len(children)}, "
                      f"got one of length {len(kids)}")
        else:
            reason = (f"expected {_describe(kind, aux, len(children))} with "
                      f"{len(children)} children, got one with {len(kids)}")
        raise _StructureMismatch(reason)
    if type(node[2]) is int:
        out.extend(kids)
        return
    for i, (c, kid) in enumerate(zip(children, kids)):
        try:
            _flatten_up_to(c, kid, out)
        except _StructureMismatch as e:
            e.path_reversed.append(_child_key(kind, x, i))
            raise


def _path_text(path):
    return keystr(path) if path else "the root"


# ---------------------------------------------------------------------------
# PyTreeDef


class PyTreeDef:
    """The structure of a pytree: its containers, without its leaves.

    Treedefs are immutable, hashable and compare equal exactly when the trees
    they describe have the same node types, node data (dict keys, namedtuple
    and registered types, static fields) and nesting.

    >>> td = tree_structure({'a': 1, 'b': [2, 3]})
    >>> td
    PyTreeDef({'a': *, 'b': [*, *]})
    >>> td.num_leaves, td.num_nodes
    (3, 5)
    >>> td.children()
    [PyTreeDef(*), PyTreeDef([*, *])]
    >>> td.unflatten([10, 20, 30])
    {'a': 10, 'b': [20, 30]}
    >>> td == tree_structure({'b': ['x', 'y'], 'a': 'z'})
    True
    >>> td == tree_structure({'a': 1, 'b': (2, 3)})
    False
    """

    __slots__ = ("_node", "_num_leaves", "_num_nodes", "_hash")

    def __init__(self, node, num_leaves=None):
        # Not meant to be called by users: treedefs come from tree_structure
        # and friends.  `node` is the nested-tuple form described above.
        self._node = node
        if num_leaves is None:
            num_leaves = _count(node)[0]
        self._num_leaves = num_leaves
        self._num_nodes = None
        self._hash = None

    @property
    def num_leaves(self) -> int:
        """Number of leaves; None nodes and empty containers count zero."""
        return self._num_leaves

    @property
    def num_nodes(self) -> int:
        """Number of nodes, leaves and None included."""
        n = self._num_nodes
        if n is None:
            n = self._num_nodes = _count(self._node)[1]
        return n

    def children(self) -> list:
        """The treedefs of the root's children (empty for a leaf or None)."""
        node = self._node
        if node is _LEAF or node is _NONE:
            return []
        return [PyTreeDef(c) for c in _children(node)]

    def node_data(self):
        """``(type, aux_data)`` of the root node, or None for a leaf.

        For namedtuples the type is the namedtuple class; for dicts the aux
        data is the tuple of sorted keys.
        """
        node = self._node
        if node is _LEAF:
            return None
        if node is _NONE:
            return (type(None), None)
        kind, aux, _ = node
        if kind is _NAMEDTUPLE:
            return (aux, None)
        return (kind.type, aux)

    def unflatten(self, leaves: Iterable) -> Any:
        """Build the tree of this structure whose leaves are ``leaves``.

        Raises ValueError naming both counts when the number of leaves is
        not ``self.num_leaves``.
        """
        if type(leaves) is not list and type(leaves) is not tuple:
            leaves = list(leaves)
        n = len(leaves)
        if n != self._num_leaves:
            few = "few" if n < self._num_leaves else "many"
            raise ValueError(
                f"Too {few} leaves for PyTreeDef; expected {self._num_leaves}, got {n}. "
                f"Structure: {self!r}")
        node = self._node
        if node is _LEAF:
            return leaves[0]
        return _unflatten_node(node, iter(leaves))

    def flatten_up_to(self, tree: Any) -> list:
        """The subtrees of ``tree`` found at this structure's leaves.

        ``tree`` must have this structure as a prefix: it matches node for
        node, and may continue below any leaf.

        >>> tree_structure([1, 2]).flatten_up_to([(3, 4), {'a': 5}])
        [(3, 4), {'a': 5}]
        """
        out = []
        try:
            _flatten_up_to(self._node, tree, out)
        except _StructureMismatch as e:
            raise ValueError(
                f"Tree structure mismatch at {_path_text(e.path())}: {e.reason}.\n"
                f"  expected a tree with the prefix {self!r}\n"
                f"  got a tree with structure       {tree_structure(tree)!r}") from None
        return out

    def compose(self, inner: "PyTreeDef") -> "PyTreeDef":
        """The structure obtained by putting ``inner`` at each leaf of self."""
        return PyTreeDef(_compose(self._node, inner._node),
                         self._num_leaves * inner._num_leaves)

    def __eq__(self, other):
        if self is other:
            return True
        if type(other) is not PyTreeDef:
            return NotImplemented
        return self._num_leaves == other._num_leaves and self._node == other._node

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        h = self._hash
        if h is None:
            h = self._hash = hash(self._node)
        return h

    def __repr__(self):
        return f"PyTreeDef({_node_repr(self._node)})"

    def __reduce__(self):
        return (PyTreeDef, (self._node, self._num_leaves))


def _compose(node, inner):
    if node is _LEAF:
        return inner
    if node is _NONE:
        return _NONE
    kind, aux, _ = node
    return _make_node(kind, aux, [_compose(c, inner) for c in _children(node)])


def _node_repr(node):
    if node is _LEAF:
        return "*"
    if node is _NONE:
        return "None"
    kind, aux, _ = node
    parts = [_node_repr(c) for c in _children(node)]
    if kind is _TUPLE:
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    if kind is _LIST:
        return "[" + ", ".join(parts) + "]"
    if kind is _DICT:
        return "{" + ", ".join(f"{k!r}: {p}" for k, p in zip(aux, parts)) + "}"
    if kind is _NAMEDTUPLE:
        return f"CustomNode(namedtuple[{aux.__name__}], [{', '.join(parts)}])"
    return f"CustomNode({kind.label}[{aux!r}], [{', '.join(parts)}])"


# ---------------------------------------------------------------------------
# Key paths


class _KeyEntry:
    __slots__ = ()

    def _value(self):
        raise NotImplementedError

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._value() == other._value()

    def __hash__(self):
        return hash((type(self).__name__, self._value()))

    def __repr__(self):
        return f"{type(self).__name__}({self.__slots__[0]}={self._value()!r})"


class DictKey(_KeyEntry):
    """Path entry for a dict child: ``DictKey('a')`` prints as ``['a']``."""

    __slots__ = ("key",)
    __match_args__ = ("key",)

    def __init__(self, key):
        self.key = key

    def _value(self):
        return self.key

    def __str__(self):
        return f"[{self.key!r}]"


class SequenceKey(_KeyEntry):
    """Path entry for a list or tuple child: ``SequenceKey(0)`` prints as ``[0]``."""

    __slots__ = ("idx",)
    __match_args__ = ("idx",)

    def __init__(self, idx):
        self.idx = idx

    def _value(self):
        return self.idx

    def __str__(self):
        return f"[{self.idx}]"


class GetAttrKey(_KeyEntry):
    """Path entry for an attribute (namedtuple, dataclass): prints as ``.name``."""

    __slots__ = ("name",)
    __match_args__ = ("name",)

    def __init__(self, name):
        self.name = name

    def _value(self):
        return self.name

    def __str__(self):
        return f".{self.name}"


class FlattenedIndexKey(_KeyEntry):
    """Path entry for a child of a node registered without keys.

    It is the child's position in the node's flattened children and prints
    as ``[<flat index 0>]``.
    """

    __slots__ = ("key",)
    __match_args__ = ("key",)

    def __init__(self, key):
        self.key = key

    def _value(self):
        return self.key

    def __str__(self):
        return f"[<flat index {self.key}>]"


KeyEntry = Any  # DictKey | SequenceKey | GetAttrKey | FlattenedIndexKey | user keys
KeyPath = tuple


def _simple_key_str(k):
    if isinstance(k, DictKey):
        return str(k.key)
    if isinstance(k, SequenceKey):
        return str(k.idx)
    if isinstance(k, GetAttrKey):
        return str(k.name)
    if isinstance(k, FlattenedIndexKey):
        return str(k.key)
    return str(k)


def keystr(keys: Sequence, *, simple: bool = False, separator: str = "") -> str:
    """Render a key path as text.

    >>> path = (DictKey('params'), SequenceKey(0), GetAttrKey('w'))
    >>> keystr(path)
    "['params'][0].w"
    >>> keystr(path, simple=True, separator='/')
    'params/0/w'
    """
    to_str = _simple_key_str if simple else str
    return separator.join([to_str(k) for k in keys])


def _flatten_with_path_node(x, path, out, is_leaf):
    if is_leaf is not None and is_leaf(x):
        out.append((path, x))
        return _LEAF
    kind = _kind_of(x)
    if kind is None:
        out.append((path, x))
        return _LEAF
    if kind is _NONE_KIND:
        return _NONE
    keyed, aux = kind.flatten_with_keys(x)
    return _make_node(kind, aux, [_flatten_with_path_node(c, path + (k,), out, is_leaf)
                                  for k, c in keyed])


# ---------------------------------------------------------------------------
# Public functions


def tree_flatten(tree: Any, is_leaf: Callable[[Any], bool] | None = None):
    """Flatten ``tree`` into ``(leaves, treedef)``.

    Leaves come depth first, left to right, dict children in sorted key order.
    ``is_leaf(x)``, when given, is asked first at every node (the root
    included); a true answer makes ``x`` a leaf as a whole.

    >>> tree_flatten([1, {'b': 2, 'a': None}])
    ([1, 2], PyTreeDef([*, {'a': None, 'b': *}]))
    >>> tree_flatten([1, None], is_leaf=lambda x: x is None)
    ([1, None], PyTreeDef([*, *]))
    """
    leaves = []
    if is_leaf is None:
        node = _flatten_node(tree, leaves)
    else:
        node = _flatten_node_is_leaf(tree, leaves, is_leaf)
    return leaves, PyTreeDef(node, len(leaves))


def tree_unflatten(treedef: PyTreeDef, leaves: Iterable) -> Any:
    """Rebuild a tree of structure ``treedef`` from ``leaves``.

    Raises ValueError, naming both counts, if the number of leaves is wrong.

    >>> _, td = tree_flatten((1, [2]))
    >>> tree_unflatten(td, 'ab')
    ('a', ['b'])
    """
    return treedef.unflatten(leaves)


def tree_leaves(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list:
    """The leaves of ``tree``, in flattening order.

    >>> tree_leaves({'b': (1, None), 'a': [2, 3]})
    [2, 3, 1]
    """
    leaves = []
    if is_leaf is None:
        _collect_leaves(tree, leaves)
    else:
        _collect_leaves_is_leaf(tree, leaves, is_leaf)
    return leaves


def tree_structure(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> PyTreeDef:
    """The treedef of ``tree``.

    >>> tree_structure((1, [2, None]))
    PyTreeDef((*, [*, None]))
    """
    return tree_flatten(tree, is_leaf)[1]


def _map_rest_leaves(treedef, tree, rest):
    """Leaves of each tree in ``rest`` lined up with ``treedef``'s leaves."""
    node = treedef._node
    out_lists = []
    for i, r in enumerate(rest, 1):
        out = []
        try:
            _flatten_up_to(node, r, out)
        except _StructureMismatch as e:
            raise ValueError(
                f"tree_map: tree {i} does not match the structure of tree 0 at "
                f"{_path_text(e.path())}: {e.reason}.\n"
                f"  tree 0 structure: {treedef!r}\n"
                f"  tree {i} structure: {tree_structure(r)!r}\n"
                f"Every further tree must have the structure of the first one "
                f"(it may continue below the first tree's leaves).") from None
        out_lists.append(out)
    return out_lists


def tree_map(f: Callable[..., Any], tree: Any, *rest: Any,
             is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """Apply ``f`` leafwise, returning a tree of the same structure as ``tree``.

    With several trees, ``f`` receives one argument per tree.  The structure
    comes from ``tree`` (``is_leaf`` applies to it alone); every tree in
    ``rest`` must have it as a prefix, so a leaf of ``tree`` may face a whole
    subtree of another tree.  A mismatch raises ValueError showing both
    structures and the path of the first difference.

    >>> tree_map(lambda x: x * 10, {'a': 1, 'b': (2, None)})
    {'a': 10, 'b': (20, None)}
    >>> tree_map(lambda x, y: x + y, [1, 2], [10, 20])
    [11, 22]
    >>> tree_map(lambda x, y: (x, y), [1, 2], [(3, 4), 5])
    [(1, (3, 4)), (2, 5)]
    """
    leaves = []
    if is_leaf is None:
        node = _flatten_node(tree, leaves)
    else:
        node = _flatten_node_is_leaf(tree, leaves, is_leaf)
    if rest:
        others = _map_rest_leaves(PyTreeDef(node, len(leaves)), tree, rest)
        values = [f(*xs) for xs in zip(leaves, *others)]
    else:
        values = [f(x) for x in leaves]
    if node is _LEAF:
        return values[0]
    return _unflatten_node(node, iter(values))


def tree_flatten_with_path(tree: Any, is_leaf: Callable[[Any], bool] | None = None):
    """Like :func:`tree_flatten`, with each leaf paired with its key path.

    >>> pairs, td = tree_flatten_with_path({'a': [5, 6]})
    >>> pairs
    [((DictKey(key='a'), SequenceKey(idx=0)), 5), ((DictKey(key='a'), SequenceKey(idx=1)), 6)]
    >>> [keystr(p) for p, _ in pairs]
    ["['a'][0]", "['a'][1]"]
    """
    out = []
    node = _flatten_with_path_node(tree, (), out, is_leaf)
    return out, PyTreeDef(node, len(out))


def tree_leaves_with_path(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list:
    """The ``(key_path, leaf)`` pairs of ``tree``.

    >>> tree_leaves_with_path((7,))
    [((SequenceKey(idx=0),), 7)]
    """
    return tree_flatten_with_path(tree, is_leaf)[0]


def tree_map_with_path(f: Callable[..., Any], tree: Any, *rest: Any,
                       is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """Like :func:`tree_map`, but ``f(key_path, leaf, *other_leaves)``.

    >>> tree_map_with_path(lambda p, x: keystr(p) + '=' + str(x), {'a': 1, 'b': [2]})
    {'a': "['a']=1", 'b': ["['b'][0]=2"]}
    """
    pairs, treedef = tree_flatten_with_path(tree, is_leaf)
    if rest:
        others = _map_rest_leaves(treedef, tree, rest)
        values = [f(p, x, *ys) for (p, x), *ys in zip(pairs, *others)]
    else:
        values = [f(p, x) for p, x in pairs]
    return treedef.unflatten(values)


_NO_INITIALIZER = _Marker("<no initializer>", "_NO_INITIALIZER")


def tree_reduce(function: Callable[[Any, Any], Any], tree: Any,
                initializer: Any = _NO_INITIALIZER,
                is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """``functools.reduce`` over the leaves of ``tree``.

    >>> tree_reduce(lambda a, b: a + b, {'x': 1, 'y': [2, 3]})
    6
    >>> tree_reduce(max, [], initializer=0)
    0
    """
    leaves = tree_leaves(tree, is_leaf)
    if initializer is _NO_INITIALIZER:
        return functools.reduce(function, leaves)
    return functools.reduce(function, leaves, initializer)


def tree_all(tree: Any, *, is_leaf: Callable[[Any], bool] | None = None) -> bool:
    """True when every leaf of ``tree`` is truthy (and for a leafless tree).

    >>> tree_all([True, {'a': 1}]), tree_all([True, 0]), tree_all(None)
    (True, False, True)
    """
    return all(tree_leaves(tree, is_leaf))


def tree_transpose(outer_treedef: PyTreeDef, inner_treedef: PyTreeDef | None,
                   pytree_to_transpose: Any) -> Any:
    """Turn a tree of structure outer-of-inner into one of inner-of-outer.

    ``inner_treedef`` may be None, in which case it is read off the first
    subtree at an outer leaf.  A tree that is not ``outer`` composed with
    ``inner`` raises TypeError showing both structures.

    >>> outer = tree_structure([0, 0])
    >>> inner = tree_structure({'a': 0, 'b': 0})
    >>> tree_transpose(outer, inner, [{'a': 1, 'b': 2}, {'a': 3, 'b': 4}])
    {'a': [1, 3], 'b': [2, 4]}
    """
    if inner_treedef is None:
        subtrees = outer_treedef.flatten_up_to(pytree_to_transpose)
        if not subtrees:
            raise ValueError("tree_transpose: cannot infer inner_treedef when the "
                             "outer structure has no leaves")
        inner_treedef = tree_structure(subtrees[0])
    leaves, treedef = tree_flatten(pytree_to_transpose)
    expected = outer_treedef.compose(inner_treedef)
    if treedef != expected:
        raise TypeError(f"tree_transpose: the tree does not have the structure outer "
                        f"composed with inner.\n  got:      {treedef!r}\n"
                        f"  expected: {expected!r}")
    n_inner = inner_treedef.num_leaves
    # leaves are outer-major: leaf (o, i) sits at o * n_inner + i.
    columns = [outer_treedef.unflatten(leaves[i::n_inner]) for i in range(n_inner)]
    return inner_treedef.unflatten(columns)


def treedef_is_leaf(treedef: PyTreeDef) -> bool:
    """True when ``treedef`` has a single node: a leaf, None or an empty container.

    >>> treedef_is_leaf(tree_structure(1)), treedef_is_leaf(tree_structure(None))
    (True, True)
    >>> treedef_is_leaf(tree_structure([1]))
    False
    """
    return treedef.num_nodes == 1


def treedef_is_strict_leaf(treedef: PyTreeDef) -> bool:
    """True only for the structure of a single leaf.

    >>> treedef_is_strict_leaf(tree_structure(1)), treedef_is_strict_leaf(tree_structure(None))
    (True, False)
    """
    return treedef._node is _LEAF


def treedef_children(treedef: PyTreeDef) -> list:
    """Same as ``treedef.children()``."""
    return treedef.children()


def treedef_tuple(treedefs: Iterable[PyTreeDef]) -> PyTreeDef:
    """The structure of a tuple whose elements have the given structures.

    >>> treedef_tuple([tree_structure(1), tree_structure([1, 2])])
    PyTreeDef((*, [*, *]))
    """
    treedefs = list(treedefs)
    return PyTreeDef(_make_node(_TUPLE, None, [t._node for t in treedefs]),
                     sum(t._num_leaves for t in treedefs))


def all_leaves(iterable: Iterable, is_leaf: Callable[[Any], bool] | None = None) -> bool:
    """True when every element of ``iterable`` is a leaf (None is not).

    >>> all_leaves([1, 'a', object()]), all_leaves([1, None]), all_leaves([(1,)])
    (True, False, False)
    """
    if is_leaf is None:
        return all(_kind_of(x) is None for x in iterable)
    return all(is_leaf(x) or _kind_of(x) is None for x in iterable)


# ---------------------------------------------------------------------------
# Registration


def _register(nodetype, kind):
    if not isinstance(nodetype, type):
        raise TypeError(f"pytree node types must be classes, got {nodetype!r}")
    if nodetype in _registry:
        raise ValueError(f"Duplicate pytree node registration for {nodetype}.")
    _registry[nodetype] = kind
    # Overrides a cached leaf (or namedtuple) verdict for this type.
    _dispatch[nodetype] = kind


def register_pytree_node(nodetype: type, flatten_func: Callable, unflatten_func: Callable,
                         flatten_with_keys_func: Callable | None = None) -> None:
    """Make instances of ``nodetype`` pytree nodes.

    ``flatten_func(x)`` returns ``(children, aux_data)``; ``aux_data`` is kept
    in the treedef, so it must be hashable and comparable with ==.
    ``unflatten_func(aux_data, children)`` rebuilds the object (children come
    as a tuple).  Without ``flatten_with_keys_func`` the children's key paths
    are :class:`FlattenedIndexKey` entries.  A type may be registered once.

    >>> class Pair:
    ...     def __init__(self, a, b): self.a, self.b = a, b
    >>> register_pytree_node(Pair, lambda p: ((p.a, p.b), None),
    ...                      lambda aux, ch: Pair(*ch))
    >>> tree_flatten(Pair(1, [2]))
    ([1, 2], PyTreeDef(CustomNode(Pair[None], [*, [*]])))
    """
    if flatten_with_keys_func is None:
        def flatten_with_keys_func(x):
            children, aux = flatten_func(x)
            return [(FlattenedIndexKey(i), c) for i, c in enumerate(children)], aux
    _register(nodetype, _NodeKind(nodetype, flatten_func, unflatten_func,
                                  flatten_with_keys_func, nodetype.__name__))


def register_pytree_with_keys(nodetype: type, flatten_with_keys: Callable,
                              unflatten_func: Callable,
                              flatten_func: Callable | None = None) -> None:
    """Like :func:`register_pytree_node`, with key paths for the children.

    ``flatten_with_keys(x)`` returns ``([(key, child), ...], aux_data)``.
    ``flatten_func``, when given, is the faster key-less equivalent.

    >>> class Box:
    ...     def __init__(self, v): self.v = v
    >>> register_pytree_with_keys(Box, lambda b: ([(GetAttrKey('v'), b.v)], None),
    ...                           lambda aux, ch: Box(*ch))
    >>> keystr(tree_flatten_with_path([Box(3)])[0][0][0])
    '[0].v'
    """
    if flatten_func is None:
        def flatten_func(x):
            keyed, aux = flatten_with_keys(x)
            return [c for _, c in keyed], aux
    _register(nodetype, _NodeKind(nodetype, flatten_func, unflatten_func,
                                  flatten_with_keys, nodetype.__name__))


def register_pytree_node_class(cls: type) -> type:
    """Class decorator: register ``cls`` through its own methods.

    The class defines ``tree_flatten(self) -> (children, aux_data)`` and the
    classmethod ``tree_unflatten(cls, aux_data, children)``.

    >>> @register_pytree_node_class
    ... class Scaled:
    ...     def __init__(self, x, scale): self.x, self.scale = x, scale
    ...     def tree_flatten(self): return (self.x,), self.scale
    ...     @classmethod
    ...     def tree_unflatten(cls, scale, children): return cls(children[0], scale)
    >>> tree_structure(Scaled(1.0, 2))
    PyTreeDef(CustomNode(Scaled[2], [*]))
    """
    register_pytree_node(cls, lambda x: x.tree_flatten(), cls.tree_unflatten)
    return cls


def register_pytree_with_keys_class(cls: type) -> type:
    """Class decorator like :func:`register_pytree_node_class`, using the
    method ``tree_flatten_with_keys(self) -> ([(key, child), ...], aux_data)``
    (and ``tree_flatten`` when the class also defines it)."""
    flatten = (lambda x: x.tree_flatten()) if hasattr(cls, "tree_flatten") else None
    register_pytree_with_keys(cls, lambda x: x.tree_flatten_with_keys(),
                              cls.tree_unflatten, flatten)
    return cls


def register_static(cls: type) -> type:
    """Register ``cls`` as a node with no children: each instance is kept whole
    in the treedef (so it must be hashable) and contributes no leaves.

    >>> @register_static
    ... class Config:
    ...     def __eq__(self, other): return isinstance(other, Config)
    ...     def __hash__(self): return 0
    >>> tree_leaves([1, Config()])
    [1]
    """
    register_pytree_node(cls, lambda x: ((), x), lambda aux, _: aux)
    return cls


def register_dataclass(nodetype: type | None = None, data_fields: Sequence[str] | None = None,
                       meta_fields: Sequence[str] | None = None,
                       drop_fields: Sequence[str] = ()):
    """Register a dataclass-like class as a pytree node; usable as a decorator.

    ``data_fields`` are the children (traced under jit); ``meta_fields`` are
    static, kept in the treedef (hashable, part of jit cache keys).  With
    neither list, ``nodetype`` must be a dataclass: its ``init`` fields are
    data fields unless declared ``field(metadata=dict(static=True))``.
    Unflattening calls ``nodetype(**fields)``.  Called with only the field
    lists, it returns a decorator.

    >>> from dataclasses import dataclass, field
    >>> @register_dataclass
    ... @dataclass
    ... class Layer:
    ...     w: object
    ...     b: object
    ...     act: str = field(default='relu', metadata=dict(static=True))
    >>> leaves, td = tree_flatten(Layer(1.0, 2.0))
    >>> leaves, td
    ([1.0, 2.0], PyTreeDef(CustomNode(Layer[('relu',)], [*, *])))
    >>> td.unflatten([3.0, 4.0])
    Layer(w=3.0, b=4.0, act='relu')
    """
    if nodetype is None:
        return functools.partial(register_dataclass, data_fields=data_fields,
                                 meta_fields=meta_fields, drop_fields=drop_fields)
    is_dc = dataclasses.is_dataclass(nodetype)
    if data_fields is None and meta_fields is None:
        if not is_dc:
            raise TypeError(f"register_dataclass: {nodetype.__name__} is not a dataclass, "
                            f"so data_fields and meta_fields must be given.")
        data, meta = [], []
        for f in dataclasses.fields(nodetype):
            # Fields outside __init__ cannot be passed back to the constructor.
            if not f.init or f.name in drop_fields:
                continue
            (meta if f.metadata.get("static", False) else data).append(f.name)
    elif data_fields is None or meta_fields is None:
        raise TypeError("register_dataclass: give both data_fields and meta_fields, "
                        "or neither (for a dataclass).")
    else:
        data, meta = list(data_fields), list(meta_fields)
        if is_dc:
            init_fields = {f.name for f in dataclasses.fields(nodetype) if f.init}
            init_fields.difference_update(drop_fields)
            given = set(data) | set(meta)
            if given != init_fields:
                raise ValueError(
                    f"register_dataclass: data_fields and meta_fields must list exactly the "
                    f"init fields of {nodetype.__name__} not in drop_fields; missing "
                    f"{sorted(init_fields - given)}, unexpected {sorted(given - init_fields)}.")
    data = tuple(data)
    meta = tuple(meta)
    data_keys = tuple(GetAttrKey(n) for n in data)

    def flatten(x):
        return [getattr(x, n) for n in data], tuple([getattr(x, n) for n in meta])

    def flatten_with_keys(x):
        return ([(k, getattr(x, n)) for k, n in zip(data_keys, data)],
                tuple([getattr(x, n) for n in meta]))

    def unflatten(aux, children):
        kwargs = dict(zip(meta, aux))
        kwargs.update(zip(data, children))
        return nodetype(**kwargs)

    _register(nodetype, _NodeKind(nodetype, flatten, unflatten, flatten_with_keys,
                                  nodetype.__name__))
    return nodetype


# ---------------------------------------------------------------------------
# Partial


class _BoxedPartial:
    """A callable wrapper that hides a functools.partial from partial.__new__.

    ``partial(partial(f, a), b)`` is merged into ``partial(f, a, b)`` by
    Python, which would turn the inner (static) arguments into pytree
    children.  Boxing keeps the inner partial whole, as part of the treedef.
    """

    __slots__ = ("inner", "func", "args", "keywords")

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def __eq__(self, other):
        if isinstance(other, _BoxedPartial):
            return self.inner == other.inner
        return NotImplemented

    def __hash__(self):
        return hash(self.inner)

    def __repr__(self):
        return repr(self.inner)


class Partial(functools.partial):
    """A ``functools.partial`` that is a pytree: the bound arguments are its
    children and the function is static (kept in the treedef), so it can be
    passed through jit and other transformations.

    >>> import operator
    >>> p = Partial(operator.add, 1)
    >>> p(2)
    3
    >>> tree_leaves(p)
    [1]
    >>> tree_map(lambda x: x * 10, p)(2)
    12
    """

    def __new__(cls, func, *args, **kwargs):
        if isinstance(func, functools.partial):
            inner = func
            func = _BoxedPartial(inner)
            out = super().__new__(cls, func, *args, **kwargs)
            # Set only now: partial.__new__ would merge anything with `.func`.
            func.func, func.args, func.keywords = inner.func, inner.args, inner.keywords
            return out
        return super().__new__(cls, func, *args, **kwargs)


register_pytree_node(
    Partial,
    lambda p: ((p.args, p.keywords), p.func),
    lambda func, children: Partial(func, *children[0], **children[1]),
)
