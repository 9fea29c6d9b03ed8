"""functrax.checkpoints: round trips of nested pytrees through one .npz file, loading into a
target, and the errors for mismatched structure, shapes and dtypes.

Only the training-step round trip takes ``backend`` (its step runs eagerly and under ``jit`` on
every back end); the rest is file I/O with no computation to jit."""
import collections
import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax
import functrax.numpy as fnp
from functrax import checkpoints, optim
from functrax.api import ShapeDtypeStruct
from functrax.tree_util import register_dataclass, tree_flatten, tree_map, tree_structure

Point = collections.namedtuple("Point", ["x", "y"])


def _tree():
    return {
        "params": {"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(3, np.float32)},
        "layers": [np.ones((2, 2), np.int32), (np.array(3.5), None)],
        "step": np.int64(7),
        "flag": np.array([True, False]),
        "point": Point(np.array([1.0]), np.array([2.0])),
        3: np.uint8(9),
        "empty": {},
    }


def _assert_same(a, b):
    la, ta = tree_flatten(a)
    lb, tb = tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_round_trip_without_target(tmp_path):
    path = tmp_path / "ckpt.npz"
    tree = _tree()
    checkpoints.save(path, tree)
    out = checkpoints.load(path)
    _assert_same(out, tree)
    assert type(out["layers"]) is list and type(out["layers"][1]) is tuple
    assert out["layers"][1][1] is None
    assert type(out["point"]) is Point  # importable namedtuple class is reused
    assert isinstance(out["params"]["w"], functrax.Array)


def test_plain_npz_readable_without_functrax(tmp_path):
    path = str(tmp_path / "c.npz")
    checkpoints.save(path, {"a": np.arange(3)})
    assert os.path.exists(path) and os.listdir(tmp_path) == ["c.npz"]  # no temp files left
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["leaf_0"], np.arange(3))


def test_round_trip_with_target(tmp_path):
    path = tmp_path / "ckpt.npz"
    tree = _tree()
    checkpoints.save(path, tree)
    target = tree_map(lambda x: ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)
    _assert_same(checkpoints.load(path, target), tree)
    _assert_same(checkpoints.load(path, tree_map(np.zeros_like, tree)), tree)


def test_optimizer_state_round_trip(tmp_path, backend):
    params = {"w": fnp.ones((3, 2)), "b": fnp.zeros(2)}
    opt = optim.adam(0.1)
    state = opt.init(params)
    grad = backend(functrax.grad(lambda p: fnp.sum(p["w"] ** 2) + fnp.sum(p["b"])))
    update = backend(opt.update)
    g = grad(params)
    _, state = update(g, state, params)
    path = tmp_path / "train.npz"
    checkpoints.save(path, {"params": params, "opt": state})
    loaded = checkpoints.load(path, {"params": params, "opt": state})
    _assert_same(loaded, {"params": params, "opt": state})
    assert type(loaded["opt"][0]) is optim.ScaleByAdamState
    # without a target the optimizer's NamedTuple classes are found by name
    free = checkpoints.load(path)
    assert type(free["opt"][0]) is optim.ScaleByAdamState
    updates, _ = update(g, free["opt"], free["params"])
    assert updates["w"].shape == (3, 2)
    # training resumes from the loaded state exactly as from the saved one
    _assert_same(updates, update(g, state, params)[0])


def test_unimportable_namedtuple_becomes_generic(tmp_path):
    Local = collections.namedtuple("Local", ["a", "b"])
    path = tmp_path / "c.npz"
    checkpoints.save(path, Local(np.ones(2), np.zeros(1)))
    out = checkpoints.load(path)
    assert out._fields == ("a", "b") and type(out).__name__ == "Local"
    np.testing.assert_array_equal(out.a, np.ones(2))


def test_custom_node_needs_target(tmp_path):
    @dataclasses.dataclass
    class Layer:
        w: np.ndarray
        b: np.ndarray
    register_dataclass(Layer, data_fields=["w", "b"], meta_fields=[])
    path = tmp_path / "c.npz"
    layer = Layer(np.ones((2, 2)), np.zeros(2))
    checkpoints.save(path, {"layer": layer})
    with pytest.raises(ValueError, match=r"\['layer'\].*Layer.*target="):
        checkpoints.load(path)
    out = checkpoints.load(path, {"layer": Layer(np.zeros((2, 2)), np.ones(2))})
    assert isinstance(out["layer"], Layer)
    np.testing.assert_array_equal(out["layer"].w, np.ones((2, 2)))


def test_shape_mismatch_names_path(tmp_path):
    path = tmp_path / "c.npz"
    checkpoints.save(path, {"params": {"w": np.zeros((2, 3)), "b": np.zeros(3)}})
    with pytest.raises(ValueError, match=r"shape mismatch at \['params'\]\['w'\].*"
                                         r"expects \(3, 2\).*holds \(2, 3\)"):
        checkpoints.load(path, {"params": {"w": np.zeros((3, 2)), "b": np.zeros(3)}})


def test_dtype_mismatch_names_path(tmp_path):
    path = tmp_path / "c.npz"
    checkpoints.save(path, [np.zeros(2), np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match=r"dtype mismatch at \[1\].*expects float64.*"
                                         r"holds float32"):
        checkpoints.load(path, [np.zeros(2), np.zeros(2)])


def test_structure_mismatch_names_path(tmp_path):
    path = tmp_path / "c.npz"
    checkpoints.save(path, {"a": [np.zeros(1), np.zeros(2)], "b": np.zeros(1)})
    with pytest.raises(ValueError, match=r"at \['a'\]: the target has a list of length 3, "
                                         r"the file has a list of length 2"):
        checkpoints.load(path, {"a": [np.zeros(1)] * 3, "b": np.zeros(1)})
    with pytest.raises(ValueError, match=r"at the root: the target has a dict with keys "
                                         r"\['a', 'c'\]"):
        checkpoints.load(path, {"a": [np.zeros(1), np.zeros(2)], "c": np.zeros(1)})
    with pytest.raises(ValueError, match=r"at \['a'\]: the target has a tuple"):
        checkpoints.load(path, {"a": (np.zeros(1), np.zeros(2)), "b": np.zeros(1)})
    with pytest.raises(ValueError, match=r"at \['b'\]: the target has None"):
        checkpoints.load(path, {"a": [np.zeros(1), np.zeros(2)], "b": None})


def test_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match=r"leaf at \['s'\].*not a numeric array"):
        checkpoints.save(tmp_path / "x.npz", {"s": "text"})
    with pytest.raises(ValueError, match="dict key"):
        checkpoints.save(tmp_path / "x.npz", {(1, 2): np.zeros(1)})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(1))
    with pytest.raises(ValueError, match="not a functrax checkpoint"):
        checkpoints.load(tmp_path / "plain.npz")


def test_scalars_and_root_leaf(tmp_path):
    path = tmp_path / "c.npz"
    checkpoints.save(path, np.arange(4.0))
    np.testing.assert_array_equal(checkpoints.load(path), np.arange(4.0))
    checkpoints.save(path, {"lr": 0.5, "n": 3})
    out = checkpoints.load(path)
    assert float(out["lr"]) == 0.5 and int(out["n"]) == 3
    assert tree_structure(out) == tree_structure({"lr": 0.5, "n": 3})


leaf = st.builds(lambda shape, dt: (np.arange(int(np.prod(shape))) % 3).astype(dt).reshape(shape),
                 st.lists(st.integers(0, 3), max_size=3),
                 st.sampled_from([np.float64, np.float32, np.int32, np.bool_]))
trees = st.recursive(st.one_of(leaf, st.none()),
                     lambda children: st.one_of(
                         st.lists(children, max_size=3),
                         st.lists(children, max_size=3).map(tuple),
                         st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), children,
                                         max_size=3)),
                     max_leaves=8)


@given(trees)
def test_round_trip_property(tree):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.npz")
        checkpoints.save(path, tree)
        _assert_same(checkpoints.load(path), tree)
        _assert_same(checkpoints.load(path, tree), tree)
