"""Tests for functrax.tree_util and functrax.tree (pytrees)."""

import collections
import dataclasses
import doctest
import functools
import operator
import pickle
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import functrax.tree as tree
import functrax.tree_util as tu
from functrax.tree_util import (
    DictKey,
    FlattenedIndexKey,
    GetAttrKey,
    Partial,
    PyTreeDef,
    SequenceKey,
    keystr,
    tree_flatten,
    tree_flatten_with_path,
    tree_leaves,
    tree_map,
    tree_map_with_path,
    tree_structure,
    tree_unflatten,
)


# ---------------------------------------------------------------------------
# Node types used throughout (module level, so treedefs holding them pickle)


class Point(NamedTuple):
    x: Any
    y: Any


class Other(NamedTuple):
    x: Any
    y: Any


class Tagged:
    """Registered with register_pytree_node; `tag` is node data."""

    def __init__(self, a, b, tag):
        self.a, self.b, self.tag = a, b, tag

    def __repr__(self):
        return f"Tagged({self.a!r}, {self.b!r}, {self.tag!r})"


tu.register_pytree_node(
    Tagged, lambda t: ((t.a, t.b), t.tag), lambda tag, ch: Tagged(ch[0], ch[1], tag))


@tu.register_pytree_node_class
class Wrapper:
    def __init__(self, value):
        self.value = value

    def tree_flatten(self):
        return (self.value,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        assert aux is None
        return cls(*children)

    def __repr__(self):
        return f"Wrapper({self.value!r})"


@tu.register_dataclass
@dataclasses.dataclass
class Layer:
    w: Any
    b: Any
    act: str = dataclasses.field(default="relu", metadata=dict(static=True))


# ---------------------------------------------------------------------------
# Structural equality that also checks container types exactly


def same(a, b):
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    t = type(a)
    if t in (list, tuple) or isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if t is collections.OrderedDict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if t is collections.defaultdict:
        if a.default_factory is not b.default_factory:
            return False
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if t is dict:
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if t is Tagged:
        return a.tag == b.tag and same(a.a, b.a) and same(a.b, b.b)
    if t is Wrapper:
        return same(a.value, b.value)
    if t is Layer:
        return a.act == b.act and same(a.w, b.w) and same(a.b, b.b)
    if t is np.ndarray:
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.all(a == b))
    return a == b


def ids(xs):
    return [id(x) for x in xs]


# ---------------------------------------------------------------------------
# Hypothesis strategies: arbitrary nested pytrees over every node type

leaf_values = (
    st.integers(-5, 5)
    | st.text(max_size=2)
    | st.booleans()
    | st.floats(allow_nan=False, width=32)
    | st.builds(lambda n: np.arange(n, dtype=np.float32), st.integers(0, 3))
)
dict_keys = st.text(alphabet="abcdef", min_size=1, max_size=2)


def extend(children):
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(dict_keys, children, max_size=4),
        st.builds(Point, children, children),
        st.dictionaries(dict_keys, children, max_size=3).map(
            lambda d: collections.OrderedDict(reversed(list(d.items())))),
        st.dictionaries(dict_keys, children, max_size=3).map(
            lambda d: collections.defaultdict(list, d)),
        st.builds(Tagged, children, children, st.sampled_from(["p", "q"])),
        st.builds(Wrapper, children),
        st.builds(Layer, children, children, st.sampled_from(["relu", "tanh"])),
    )


pytrees = st.recursive(leaf_values | st.none(), extend, max_leaves=25)


# ---------------------------------------------------------------------------
# Properties


@settings(max_examples=300, deadline=None)
@given(pytrees)
def test_round_trip(t):
    leaves, td = tree_flatten(t)
    assert td.num_leaves == len(leaves)
    assert same(tree_unflatten(td, leaves), t)
    assert same(td.unflatten(iter(leaves)), t)  # any iterable of leaves
    assert ids(tree_leaves(t)) == ids(leaves)
    assert tree_structure(t) == td
    assert hash(tree_structure(t)) == hash(td)


@settings(max_examples=200, deadline=None)
@given(pytrees)
def test_all_flatten_paths_agree(t):
    # The fast path, the is_leaf path and the key-path path are separate code;
    # they must produce the same leaves and equal treedefs.
    leaves, td = tree_flatten(t)
    leaves2, td2 = tree_flatten(t, is_leaf=lambda x: False)
    pairs, td3 = tree_flatten_with_path(t)
    assert td == td2 == td3
    assert hash(td) == hash(td2) == hash(td3)
    assert ids(leaves) == ids(leaves2)
    assert ids([x for _, x in pairs]) == ids(leaves)
    assert ids(tree_leaves(t, is_leaf=lambda x: False)) == ids(leaves)
    assert repr(td) == repr(td2) == repr(td3)


@settings(max_examples=200, deadline=None)
@given(pytrees)
def test_structure_ignores_leaf_values(t):
    td = tree_structure(t)
    relabelled = tree_map(lambda x: object(), t)
    assert tree_structure(relabelled) == td
    assert hash(tree_structure(relabelled)) == hash(td)
    assert ids(td.flatten_up_to(t)) == ids(tree_leaves(t))


@settings(max_examples=200, deadline=None)
@given(pytrees)
def test_tree_map_over_two_trees_pairs_leaves(t):
    tags = tree_map(lambda x: object(), t)
    pairs = tree_map(lambda a, b: (a, b), t, tags)
    # The pairs sit exactly where t's leaves were.
    flat = tree_structure(t).flatten_up_to(pairs)
    assert ids([a for a, _ in flat]) == ids(tree_leaves(t))
    assert ids([b for _, b in flat]) == ids(tree_leaves(tags))


@settings(max_examples=200, deadline=None)
@given(pytrees)
def test_children_and_node_counts(t):
    td = tree_structure(t)
    kids = td.children()
    if tu.treedef_is_strict_leaf(td) or t is None:
        assert kids == []
        assert td.num_nodes == 1
    else:
        assert td.num_nodes == 1 + sum(k.num_nodes for k in kids)
        assert td.num_leaves == sum(k.num_leaves for k in kids)


@settings(max_examples=100, deadline=None)
@given(pytrees, pytrees)
def test_compose_matches_nested_trees(outer, inner):
    outer_td, inner_td = tree_structure(outer), tree_structure(inner)
    nested = tree_map(lambda _: inner, outer)
    assert tree_structure(nested) == outer_td.compose(inner_td)
    assert outer_td.compose(inner_td).num_leaves == outer_td.num_leaves * inner_td.num_leaves


builtin_pytrees = st.recursive(
    st.integers() | st.none(),
    lambda c: st.lists(c, max_size=3) | st.lists(c, max_size=3).map(tuple)
    | st.dictionaries(dict_keys, c, max_size=3) | st.builds(Point, c, c)
    | st.builds(Tagged, c, c, st.just("t")) | st.builds(Layer, c, c),
    max_leaves=15)


@settings(max_examples=100, deadline=None)
@given(builtin_pytrees)
def test_treedef_pickles(t):
    leaves, td = tree_flatten(t)
    td2 = pickle.loads(pickle.dumps(td))
    assert td2 == td and hash(td2) == hash(td)
    assert same(td2.unflatten(leaves), t)


# ---------------------------------------------------------------------------
# None, is_leaf


def test_none_is_a_node_without_children():
    assert tree_leaves(None) == []
    assert tree_leaves([None, 1, (None,)]) == [1]
    td = tree_structure(None)
    assert td.num_leaves == 0 and td.num_nodes == 1
    assert repr(td) == "PyTreeDef(None)"
    assert tree_unflatten(td, []) is None
    assert tree_map(lambda x: x + 1, {"a": None, "b": 1}) == {"a": None, "b": 2}
    assert tree_structure([None]) != tree_structure([1])


def test_is_leaf():
    t = [None, (1, 2), {"a": [3]}]
    assert tree_leaves(t, is_leaf=lambda x: x is None) == [None, 1, 2, 3]
    assert tree_leaves(t, is_leaf=lambda x: isinstance(x, tuple)) == [(1, 2), 3]
    leaves, td = tree_flatten(t, is_leaf=lambda x: isinstance(x, list))
    assert leaves == [t] and td == tree_structure(0)  # asked at the root too
    out = tree_map(lambda x: "L", t, is_leaf=lambda x: isinstance(x, tuple))
    assert out == [None, "L", {"a": ["L"]}]
    assert tu.tree_structure(t, is_leaf=lambda x: x is None).num_leaves == 4


def test_is_leaf_applies_to_first_tree_only():
    out = tree_map(lambda a, b: (a, b), [(1, 2)], [(3, 4)], is_leaf=lambda x: isinstance(x, tuple))
    assert out == [((1, 2), (3, 4))]


# ---------------------------------------------------------------------------
# Node types


def test_dict_children_in_sorted_key_order():
    leaves, td = tree_flatten({"b": 1, "a": 2, "c": 3})
    assert leaves == [2, 1, 3]
    assert repr(td) == "PyTreeDef({'a': *, 'b': *, 'c': *})"
    assert list(td.unflatten([1, 2, 3])) == ["a", "b", "c"]
    assert tree_structure({"a": 1, "b": 2}) == tree_structure({"b": 0, "a": 0})
    assert tree_structure({"a": 1, "b": 2}) != tree_structure({"a": 1, "c": 2})
    assert tree_structure({"a": 1}) != tree_structure({"a": 1, "b": 2})


def test_dict_with_unorderable_keys():
    d = {1: "int", "a": "str", None: "none"}
    leaves, td = tree_flatten(d)
    assert sorted(leaves) == ["int", "none", "str"]
    assert td.unflatten(leaves) == d
    # One deterministic order regardless of insertion order.
    assert tree_flatten({"a": "str", None: "none", 1: "int"}) == (leaves, td)


def test_list_vs_tuple_and_unregistered_subclasses():
    assert tree_structure([1, 2]) != tree_structure((1, 2))
    assert repr(tree_structure((1,))) == "PyTreeDef((*,))"
    assert repr(tree_structure([1, (2, 3), [4, 5]])) == "PyTreeDef([*, (*, *), [*, *]])"

    class MyList(list):
        pass

    class MyDict(dict):
        pass

    # Dispatch is on the exact type: unregistered subclasses are leaves.
    assert tree_leaves([MyList([1, 2]), MyDict(a=1)]) == [MyList([1, 2]), MyDict(a=1)]


def test_namedtuples():
    leaves, td = tree_flatten(Point(1, (2, 3)))
    assert leaves == [1, 2, 3]
    assert repr(td) == "PyTreeDef(CustomNode(namedtuple[Point], [*, (*, *)]))"
    out = td.unflatten([4, 5, 6])
    assert type(out) is Point and out == Point(4, (5, 6))
    assert tree_structure(Point(1, 2)) != tree_structure(Other(1, 2))
    assert tree_structure(Point(1, 2)) != tree_structure((1, 2))
    assert td.node_data() == (Point, None)
    pairs, _ = tree_flatten_with_path(Point(1, 2))
    assert [p for p, _ in pairs] == [(GetAttrKey("x"),), (GetAttrKey("y"),)]
    # collections.namedtuple as well as typing.NamedTuple
    P3 = collections.namedtuple("P3", "a b c")
    assert tree_leaves(P3(1, None, [2])) == [1, 2]


def test_ordered_dict_keeps_insertion_order():
    od = collections.OrderedDict([("b", 1), ("a", 2)])
    leaves, td = tree_flatten(od)
    assert leaves == [1, 2]
    out = td.unflatten([10, 20])
    assert type(out) is collections.OrderedDict and list(out.items()) == [("b", 10), ("a", 20)]
    assert td != tree_structure(collections.OrderedDict([("a", 1), ("b", 2)]))
    assert td != tree_structure({"b": 1, "a": 2})
    pairs, _ = tree_flatten_with_path(od)
    assert [keystr(p) for p, _ in pairs] == ["['b']", "['a']"]


def test_defaultdict():
    dd = collections.defaultdict(list, {"b": 1, "a": [2, 3]})
    leaves, td = tree_flatten(dd)
    assert leaves == [2, 3, 1]
    out = td.unflatten([4, 5, 6])
    assert type(out) is collections.defaultdict and out.default_factory is list
    assert dict(out) == {"a": [4, 5], "b": 6}
    assert td != tree_structure(collections.defaultdict(dict, {"b": 1, "a": [2, 3]}))


def test_registered_class():
    t = Tagged(1, [2, 3], "tag")
    leaves, td = tree_flatten(t)
    assert leaves == [1, 2, 3]
    assert repr(td) == "PyTreeDef(CustomNode(Tagged['tag'], [*, [*, *]]))"
    out = td.unflatten(["a", "b", "c"])
    assert isinstance(out, Tagged) and out.tag == "tag" and out.b == ["b", "c"]
    assert td != tree_structure(Tagged(1, [2, 3], "other"))  # node data is compared
    pairs, _ = tree_flatten_with_path(t)
    assert pairs[0][0] == (FlattenedIndexKey(0),)
    assert keystr(pairs[1][0]) == "[<flat index 1>][0]"
    with pytest.raises(ValueError, match="Duplicate"):
        tu.register_pytree_node(Tagged, lambda t: ((), None), lambda a, c: None)
    with pytest.raises(ValueError, match="Duplicate"):
        tu.register_pytree_node(dict, lambda t: ((), None), lambda a, c: None)


def test_registration_overrides_cached_leaf_verdict():
    class Late:
        def __init__(self, v):
            self.v = v

    assert tree_leaves([Late(1)])[0].v == 1  # seen (and cached) as a leaf first
    tu.register_pytree_node(Late, lambda x: ((x.v,), None), lambda _, c: Late(*c))
    assert tree_leaves([Late(1)]) == [1]


def test_register_pytree_node_class():
    leaves, td = tree_flatten([Wrapper(1), Wrapper((2, 3))])
    assert leaves == [1, 2, 3]
    out = td.unflatten([4, 5, 6])
    assert isinstance(out[1], Wrapper) and out[1].value == (5, 6)


def test_register_pytree_with_keys():
    class Box:
        def __init__(self, inner):
            self.inner = inner

    tu.register_pytree_with_keys(
        Box, lambda b: ([(GetAttrKey("inner"), b.inner)], None), lambda _, c: Box(*c))
    pairs, td = tree_flatten_with_path({"k": Box([7])})
    assert keystr(pairs[0][0]) == "['k'].inner[0]"
    assert tree_leaves(Box([7, 8])) == [7, 8]
    assert td.unflatten([9])["k"].inner == [9]

    @tu.register_pytree_with_keys_class
    class Box2:
        def __init__(self, v):
            self.v = v

        def tree_flatten_with_keys(self):
            return [(GetAttrKey("v"), self.v)], None

        @classmethod
        def tree_unflatten(cls, aux, children):
            return cls(*children)

    assert keystr(tu.tree_leaves_with_path(Box2(1))[0][0]) == ".v"


def test_register_static():
    @tu.register_static
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        depth: int

    leaves, td = tree_flatten([1, Cfg(3)])
    assert leaves == [1]
    assert td.unflatten([2]) == [2, Cfg(3)]
    assert td != tree_structure([1, Cfg(4)])


def test_register_dataclass_inferred_fields():
    layer = Layer(np.ones(2), 0.5, act="tanh")
    leaves, td = tree_flatten(layer)
    assert len(leaves) == 2 and leaves[1] == 0.5
    assert repr(td) == "PyTreeDef(CustomNode(Layer[('tanh',)], [*, *]))"
    out = td.unflatten([1, 2])
    assert out == Layer(1, 2, "tanh")
    assert td != tree_structure(Layer(1, 2, "relu"))  # static field in the treedef
    pairs, _ = tree_flatten_with_path(layer)
    assert [keystr(p) for p, _ in pairs] == [".w", ".b"]


def test_register_dataclass_explicit_fields_and_errors():
    @functools.partial(tu.register_dataclass, data_fields=["x"], meta_fields=["n"])
    @dataclasses.dataclass
    class A:
        x: Any
        n: int

    assert tree_leaves(A([1, 2], 3)) == [1, 2]
    assert tree_structure(A(1, 3)) != tree_structure(A(1, 4))

    @tu.register_dataclass(data_fields=["x"], meta_fields=[])
    @dataclasses.dataclass
    class B:
        x: Any

    assert tree_leaves(B(5)) == [5]

    @tu.register_dataclass
    @dataclasses.dataclass
    class C:
        x: Any
        cache: Any = dataclasses.field(init=False, default=None)

    assert tree_leaves(C(1)) == [1]  # init=False fields are not part of the tree

    class NotDC:
        pass

    with pytest.raises(TypeError):
        tu.register_dataclass(NotDC)

    @dataclasses.dataclass
    class D:
        x: Any
        y: Any

    with pytest.raises(ValueError, match="missing"):
        tu.register_dataclass(D, data_fields=["x"], meta_fields=[])
    with pytest.raises(TypeError):
        tu.register_dataclass(D, data_fields=["x", "y"])

    class Plain:  # explicit fields work for non-dataclasses too
        def __init__(self, x, n):
            self.x, self.n = x, n

    tu.register_dataclass(Plain, data_fields=["x"], meta_fields=["n"])
    out = tree_map(lambda v: v * 2, Plain(3, "n"))
    assert (out.x, out.n) == (6, "n")


def test_partial():
    p = Partial(operator.add, 1)
    assert p(2) == 3
    assert tree_leaves(p) == [1]
    q = tree_map(lambda x: x * 10, p)
    assert isinstance(q, Partial) and q(2) == 12
    assert tree_structure(p) == tree_structure(Partial(operator.add, 5))
    assert tree_structure(p) != tree_structure(Partial(operator.mul, 5))
    def sub(a, b):
        return a - b

    kw = Partial(sub, b=3)
    assert tree_leaves(kw) == [3] and kw(7) == 4
    assert tree_map(lambda x: x + 1, kw)(7) == 3
    # A partial of a partial keeps the inner arguments static.
    nested = Partial(Partial(operator.add, 1))
    assert tree_leaves(nested) == [] and nested(4) == 5
    assert tree_leaves(Partial(functools.partial(operator.add, 1), 2)) == [2]
    assert nested.func.func is operator.add


# ---------------------------------------------------------------------------
# tree_map over several trees and its errors


def test_tree_map_several_trees():
    a = {"x": [1, 2], "y": (3, None)}
    b = {"x": [10, 20], "y": (30, None)}
    assert tree_map(lambda u, v, w: u + v + w, a, b, a) == {"x": [12, 24], "y": (36, None)}
    # The first tree may be a prefix of the others.
    assert tree_map(lambda u, v: (u, v), [1, 2], [(3, 4), {"k": 5}]) == [(1, (3, 4)), (2, {"k": 5})]
    assert tree_map(lambda u, v: v, [1], [None]) == [None]


@pytest.mark.parametrize(
    "first, second, path, fragment",
    [
        ({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2, 3]}, "['b']", "length 2"),
        ({"a": 1, "b": 2}, {"a": 1, "c": 2}, "the root", "keys"),
        ([1, (2, 3)], [1, [2, 3]], "[1]", "tuple"),
        (Point(1, 2), Other(1, 2), "the root", "Point"),
        ([None], [1], "[0]", "None"),
        ({"t": Tagged(1, 2, "p")}, {"t": Tagged(1, 2, "q")}, "['t']", "node data"),
        ({"l": Layer(1, [2, 3])}, {"l": Layer(1, [2])}, "['l'].b", "length 2"),
        ({"w": Wrapper((1, 2))}, {"w": Wrapper((1,))}, "['w'][<flat index 0>]", "length"),
    ],
)
def test_tree_map_mismatch_message_shows_both_structures(first, second, path, fragment):
    with pytest.raises(ValueError) as info:
        tree_map(lambda *xs: None, first, second)
    msg = str(info.value)
    assert repr(tree_structure(first)) in msg
    assert repr(tree_structure(second)) in msg
    assert f"at {path}:" in msg
    assert fragment in msg


def test_tree_map_mismatch_names_the_offending_tree():
    with pytest.raises(ValueError) as info:
        tree_map(lambda *xs: None, [1, 2], [1, 2], (1, 2))
    msg = str(info.value)
    assert "tree 2" in msg and "PyTreeDef([*, *])" in msg and "PyTreeDef((*, *))" in msg


def test_flatten_up_to():
    td = tree_structure({"a": 0, "b": [0, 0]})
    assert td.flatten_up_to({"a": (1, 2), "b": [3, {"c": 4}]}) == [(1, 2), 3, {"c": 4}]
    with pytest.raises(ValueError) as info:
        td.flatten_up_to({"a": 1, "b": 2})
    assert "PyTreeDef({'a': *, 'b': [*, *]})" in str(info.value)
    assert "['b']" in str(info.value)


def test_unflatten_wrong_number_of_leaves():
    td = tree_structure([1, (2, 3)])
    with pytest.raises(ValueError, match="expected 3, got 2"):
        tree_unflatten(td, [1, 2])
    with pytest.raises(ValueError, match="expected 3, got 4"):
        td.unflatten([1, 2, 3, 4])
    with pytest.raises(ValueError, match="expected 1, got 0"):
        tree_unflatten(tree_structure(1), [])


# ---------------------------------------------------------------------------
# Other functions


def test_tree_transpose():
    outer = tree_structure([0, 0, 0])
    inner = tree_structure({"a": 0, "b": (0, 0)})
    t = [{"a": i, "b": (10 * i, 100 * i)} for i in range(3)]
    out = tu.tree_transpose(outer, inner, t)
    assert out == {"a": [0, 1, 2], "b": ([0, 10, 20], [0, 100, 200])}
    assert tu.tree_transpose(outer, None, t) == out
    assert tree.transpose(inner, outer, out) == t
    with pytest.raises(TypeError) as info:
        tu.tree_transpose(outer, tree_structure((0, 0)), t)
    assert repr(tree_structure(t)) in str(info.value)


def test_reduce_all_and_leaf_predicates():
    assert tu.tree_reduce(operator.add, {"a": 1, "b": [2, 3]}) == 6
    assert tu.tree_reduce(operator.add, [], initializer=10) == 10
    assert tu.tree_reduce(operator.add, [[1], [2]], is_leaf=lambda x: isinstance(x, list)
                          and len(x) == 1) == [1, 2]
    with pytest.raises(TypeError):
        tu.tree_reduce(operator.add, [])
    assert tu.tree_all([True, (1, None)]) and not tu.tree_all({"a": 0}) and tu.tree_all(())
    assert tu.treedef_is_leaf(tree_structure(1))
    assert tu.treedef_is_leaf(tree_structure(None))
    assert tu.treedef_is_leaf(tree_structure(()))
    assert not tu.treedef_is_leaf(tree_structure([1]))
    assert tu.treedef_is_strict_leaf(tree_structure(np.ones(3)))
    assert not tu.treedef_is_strict_leaf(tree_structure(None))
    assert tu.all_leaves([1, "a", np.ones(2)])
    assert not tu.all_leaves([1, None])
    assert not tu.all_leaves([1, (2,)])
    assert tu.all_leaves([1, (2,)], is_leaf=lambda x: isinstance(x, tuple))


def test_treedef_tuple_children_node_data():
    a, b = tree_structure([1, 2]), tree_structure({"k": 1})
    td = tu.treedef_tuple([a, b])
    assert td == tree_structure(([1, 2], {"k": 1}))
    assert tu.treedef_children(td) == [a, b]
    assert td.node_data() == (tuple, None)
    assert b.node_data() == (dict, ("k",))
    assert tree_structure(1).node_data() is None
    assert tu.treedef_tuple([tree_structure(1), tree_structure(2)]) == tree_structure((1, 2))


# ---------------------------------------------------------------------------
# Key paths


def test_key_paths():
    t = {"params": [np.zeros(1), {"w": 1}], "state": Point(2, None)}
    pairs, td = tree_flatten_with_path(t)
    paths = [p for p, _ in pairs]
    assert paths == [
        (DictKey("params"), SequenceKey(0)),
        (DictKey("params"), SequenceKey(1), DictKey("w")),
        (DictKey("state"), GetAttrKey("x")),
    ]
    assert td == tree_structure(t)
    assert [keystr(p) for p in paths] == ["['params'][0]", "['params'][1]['w']", "['state'].x"]
    assert keystr(paths[1], simple=True, separator="/") == "params/1/w"
    assert tu.tree_leaves_with_path(t) == pairs
    assert repr(DictKey("a")) == "DictKey(key='a')"
    assert repr(SequenceKey(0)) == "SequenceKey(idx=0)"
    assert repr(GetAttrKey("x")) == "GetAttrKey(name='x')"
    assert repr(FlattenedIndexKey(2)) == "FlattenedIndexKey(key=2)"
    assert str(FlattenedIndexKey(2)) == "[<flat index 2>]"
    assert DictKey(0) != SequenceKey(0) and hash(DictKey("a")) == hash(DictKey("a"))
    assert keystr(()) == ""

    match DictKey("a"):
        case DictKey(key):
            assert key == "a"


def test_tree_map_with_path():
    t = {"a": 1, "b": [2, None]}
    out = tree_map_with_path(lambda p, x: keystr(p), t)
    assert out == {"a": "['a']", "b": ["['b'][0]", None]}
    out = tree_map_with_path(lambda p, x, y: (keystr(p), x + y), t, {"a": 10, "b": [20, None]})
    assert out == {"a": ("['a']", 11), "b": [("['b'][0]", 22), None]}
    out = tree_map_with_path(lambda p, x: len(p), t, is_leaf=lambda x: isinstance(x, list))
    assert out == {"a": 1, "b": 1}
    with pytest.raises(ValueError, match=r"PyTreeDef\(\{'a': \*\}\)"):
        tree_map_with_path(lambda p, x, y: x, {"a": 1, "b": [2]}, {"a": 1})


# ---------------------------------------------------------------------------
# Treedefs as cache keys


def test_treedef_hash_and_equality():
    structures = [
        1, None, (), [], {}, (1,), [1], (1, 2), [1, 2], {"a": 1}, {"b": 1}, {"a": 1, "b": 2},
        {"a": (1,)}, {"a": [1]}, Point(1, 2), Other(1, 2), (1, (2,)), ((1,), 2),
        collections.OrderedDict(a=1), collections.defaultdict(list, a=1),
        Tagged(1, 2, "p"), Tagged(1, 2, "q"), Wrapper(1), Layer(1, 2), Layer(1, 2, "tanh"),
        [None], [None, None], (None,),
    ]
    tds = [tree_structure(s) for s in structures]
    for i, a in enumerate(tds):
        for j, b in enumerate(tds):
            assert (a == b) == (i == j), (structures[i], structures[j])
            assert (a != b) == (i != j)
    # Equal structures built independently hash equal and share a dict slot.
    cache = {td: i for i, td in enumerate(tds)}
    for i, s in enumerate(structures):
        assert cache[tree_structure(tree_map(lambda x: object(), s))] == i
    assert tds[0] != "PyTreeDef(*)" and tds[0] is not None


def test_repr_formats():
    assert repr(tree_structure(1)) == "PyTreeDef(*)"
    assert repr(tree_structure({"a": 1, "b": [2, 3]})) == "PyTreeDef({'a': *, 'b': [*, *]})"
    assert repr(tree_structure((1, None))) == "PyTreeDef((*, None))"
    assert repr(tree_structure([])) == "PyTreeDef([])"
    assert repr(tree_structure(Wrapper([1]))) == "PyTreeDef(CustomNode(Wrapper[None], [[*]]))"


def test_large_and_deep_trees():
    big = {f"k{i}": [np.zeros(1)] * 3 for i in range(200)}
    leaves, td = tree_flatten(big)
    assert len(leaves) == 600 and same(td.unflatten(leaves), big)
    deep = 0
    for _ in range(200):
        deep = [deep, None]
    assert tree_leaves(deep) == [0]
    assert tree_structure(deep).unflatten([5]) == tree_map(lambda x: 5, deep)


# ---------------------------------------------------------------------------
# functrax.tree and the docstring examples


def test_tree_module_short_names():
    assert tree.flatten is tu.tree_flatten
    assert tree.unflatten is tu.tree_unflatten
    assert tree.leaves is tu.tree_leaves
    assert tree.structure is tu.tree_structure
    assert tree.map is tu.tree_map
    assert tree.reduce is tu.tree_reduce
    assert tree.all is tu.tree_all
    assert tree.transpose is tu.tree_transpose
    assert tree.map_with_path is tu.tree_map_with_path
    assert tree.flatten_with_path is tu.tree_flatten_with_path
    assert tree.map(lambda x, y: x * y, [1, 2], [3, 4]) == [3, 8]


@pytest.mark.parametrize("module", [tu, tree], ids=["tree_util", "tree"])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
