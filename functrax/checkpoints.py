"""Checkpoints: save a pytree of arrays to one ``.npz`` file and load it back.

``save(path, tree)`` writes every leaf as an array of the archive (``leaf_0``, ``leaf_1``, ...
in ``tree_flatten`` order) and one JSON entry, ``__functrax_checkpoint__``, that describes the
tree: its nesting (dicts, lists, tuples, namedtuples, None, other registered nodes), each
leaf's path, shape and dtype. The file is a plain ``.npz``: ``numpy.load`` reads it without
functrax, and no pickle is involved.

``load(path, target=None)``:

* with a ``target`` pytree (arrays, or anything with ``.shape``/``.dtype`` such as
  ``ShapeDtypeStruct``), the stored tree must have the same structure, shapes and dtypes; the
  first difference raises a ``ValueError`` that names the path, what the target expects and
  what the file holds. The result has the target's structure (its own container classes).
* without a target, dicts, lists, tuples and None are rebuilt as saved; a namedtuple is
  rebuilt as its class when that class can be imported by name, else as a namedtuple of the
  same name and fields. Other registered node types (dataclasses, custom classes) cannot be
  rebuilt from the file alone: load them with a ``target``.

>>> import os, tempfile, functrax.numpy as fnp
>>> from functrax import checkpoints
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
>>> checkpoints.save(path, {"w": fnp.ones((2, 3)), "b": [fnp.zeros(3), None]})
>>> restored = checkpoints.load(path)
>>> restored["w"].shape, restored["b"][1] is None
((2, 3), True)
"""
from __future__ import annotations

import collections
import importlib
import json
import os
import tempfile

import numpy as np

from . import core
from .tree_util import (keystr, tree_flatten_with_path, tree_structure, tree_unflatten,
                        treedef_is_strict_leaf)

__all__ = ["save", "load", "restore_description"]

_META = "__functrax_checkpoint__"
_FORMAT = "functrax-checkpoint"
_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Describing a tree's structure as JSON


def _is_namedtuple(x):
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _class_name(cls):
    return f"{cls.__module__}:{cls.__qualname__}"


def _children(x):
    """(key, child) pairs of a pytree node, in tree_flatten order."""
    return [(p[0], c) for p, c in tree_flatten_with_path(x, is_leaf=lambda y: y is not x)[0]]


def _encode_key(k, path):
    if isinstance(k, str):
        return ["s", k]
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        return ["i", int(k)]
    raise ValueError(f"checkpoints.save: dict key {k!r} at {path or 'the root'} is neither a "
                     f"string nor an integer; checkpoints store string and integer keys only")


def _decode_key(k):
    return k[1] if k[0] == "s" else int(k[1])


def _describe(x, path=""):
    """A JSON-able description of the structure of ``x`` (leaves as {"t": "leaf"})."""
    if x is None:
        return {"t": "none"}
    if treedef_is_strict_leaf(tree_structure(x)):
        return {"t": "leaf"}
    kids = _children(x)
    sub = [_describe(c, path + str(k)) for k, c in kids]
    if isinstance(x, dict):
        keys = [_encode_key(k.key, path) for k, _ in kids]
        return {"t": "dict", "cls": _class_name(type(x)), "keys": keys, "c": sub}
    if _is_namedtuple(x):
        return {"t": "namedtuple", "cls": _class_name(type(x)),
                "fields": list(type(x)._fields), "c": sub}
    if type(x) is list:
        return {"t": "list", "c": sub}
    if type(x) is tuple:
        return {"t": "tuple", "c": sub}
    return {"t": "custom", "cls": _class_name(type(x)), "keys": [str(k) for k, _ in kids],
            "c": sub}


def _node_text(d):
    t = d["t"]
    if t == "leaf":
        return "an array leaf"
    if t == "none":
        return "None"
    if t == "dict":
        keys = [_decode_key(k) for k in d["keys"]]
        return f"a dict with keys {keys}"
    if t in ("list", "tuple"):
        return f"a {t} of length {len(d['c'])}"
    if t == "namedtuple":
        return f"a namedtuple {d['cls'].split(':')[-1]}{tuple(d['fields'])}"
    return f"a {d['cls'].split(':')[-1]} node with {len(d['c'])} children"


def _child_path(d, i):
    t = d["t"]
    if t == "dict":
        return f"[{_decode_key(d['keys'][i])!r}]"
    if t == "namedtuple":
        return f".{d['fields'][i]}"
    if t in ("list", "tuple"):
        return f"[{i}]"
    return f"[{d['keys'][i]}]"


def _first_difference(saved, expected, path=""):
    """None when the two descriptions agree, else (path, expected text, saved text)."""
    same_kind = saved["t"] == expected["t"]
    if same_kind and saved["t"] in ("dict",):
        same_kind = saved["keys"] == expected["keys"]
    if same_kind and saved["t"] in ("namedtuple", "custom"):
        same_kind = saved["cls"] == expected["cls"] and \
            saved.get("fields", saved.get("keys")) == expected.get("fields", expected.get("keys"))
    if same_kind and len(saved.get("c", ())) != len(expected.get("c", ())):
        same_kind = False
    if not same_kind:
        return path or "the root", _node_text(expected), _node_text(saved)
    for i, (s, e) in enumerate(zip(saved.get("c", ()), expected.get("c", ()))):
        diff = _first_difference(s, e, path + _child_path(expected, i))
        if diff is not None:
            return diff
    return None


# ---------------------------------------------------------------------------------------------
# Rebuilding a tree from its description (no target)


def _import_class(name):
    module, _, qualname = name.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError):
        return None


def restore_description(desc, leaves, path=""):
    """Rebuild a tree from its stored description and its leaves (in order)."""
    it = iter(leaves)

    def build(d, p):
        t = d["t"]
        if t == "leaf":
            return next(it)
        if t == "none":
            return None
        kids = [build(c, p + _child_path(d, i)) for i, c in enumerate(d["c"])]
        if t == "list":
            return kids
        if t == "tuple":
            return tuple(kids)
        if t == "dict":
            cls = _import_class(d["cls"])
            out = {_decode_key(k): v for k, v in zip(d["keys"], kids)}
            if cls is not None and issubclass(cls, dict) and cls is not dict and \
                    cls is not collections.defaultdict:
                try:
                    return cls(out)
                except TypeError:
                    return out
            return out
        if t == "namedtuple":
            cls = _import_class(d["cls"])
            if cls is None or not (isinstance(cls, type) and issubclass(cls, tuple)) or \
                    list(getattr(cls, "_fields", ())) != d["fields"]:
                cls = collections.namedtuple(d["cls"].split(":")[-1].split(".")[-1],
                                             d["fields"])
            return cls(*kids)
        raise ValueError(
            f"checkpoints.load: the node at {p or 'the root'} is a {d['cls'].split(':')[-1]} "
            f"(a registered custom pytree node); it cannot be rebuilt from the file alone. "
            f"Pass target= (a pytree of that structure) to load it.")

    return build(desc, path)


# ---------------------------------------------------------------------------------------------
# save / load


def _leaf_array(x, path):
    if isinstance(x, core.Tracer):
        raise TypeError(f"checkpoints.save: the leaf at {path} is a traced value; save "
                        f"concrete arrays (outside jit/grad/vmap)")
    try:
        arr = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise TypeError(f"checkpoints.save: the leaf at {path} ({type(x).__name__}) is not an "
                        f"array: {e}") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(f"checkpoints.save: the leaf at {path} ({type(x).__name__}, dtype "
                        f"{arr.dtype}) is not a numeric array")
    return arr


def save(path, tree):
    """Write ``tree`` (a pytree of arrays) to ``path`` as one ``.npz`` file (the name is
    used as given). The file is replaced atomically: a crash leaves the old one intact."""
    path = os.fspath(path)
    with_path, _ = tree_flatten_with_path(tree)
    paths = [keystr(p) or "the root" for p, _ in with_path]
    arrays = [_leaf_array(x, p) for p, (_, x) in zip(paths, with_path)]
    meta = {
        "format": _FORMAT, "version": _VERSION, "tree": _describe(tree),
        "leaves": [{"path": p, "shape": list(a.shape), "dtype": a.dtype.str}
                   for p, a in zip(paths, arrays)],
    }
    entries = {f"leaf_{i}": a for i, a in enumerate(arrays)}
    entries[_META] = np.array(json.dumps(meta))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path):
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if _META not in data.files:
                raise ValueError(f"checkpoints.load: {path} is an .npz file but not a functrax "
                                 f"checkpoint (no {_META} entry)")
            meta = json.loads(str(data[_META]))
            n = len(meta["leaves"])
            arrays = [data[f"leaf_{i}"] for i in range(n)]
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoints.load: no checkpoint at {path}") from None
    if meta.get("format") != _FORMAT or meta.get("version", 0) > _VERSION:
        raise ValueError(f"checkpoints.load: {path} has format {meta.get('format')!r} version "
                         f"{meta.get('version')!r}; this functrax reads {_FORMAT!r} up to "
                         f"version {_VERSION}")
    return meta, arrays


def _target_leaf_type(x, path):
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        try:
            aval = core.get_aval(x)
        except TypeError:
            raise TypeError(f"checkpoints.load: the target leaf at {path} ({type(x).__name__}) "
                            f"is not an array, a number or a ShapeDtypeStruct") from None
        shape, dtype = aval.shape, aval.dtype
    return tuple(shape), np.dtype(dtype)


def load(path, target=None):
    """Read a checkpoint written by ``save``. With ``target``, check that structure, shapes
    and dtypes match it (``ValueError`` naming the first mismatching path otherwise) and
    return a tree of the target's structure; without, rebuild the saved structure."""
    meta, arrays = _read(path)
    fname = os.fspath(path)
    leaves = [core.wrap_array(a) for a in arrays]
    if target is None:
        return restore_description(meta["tree"], leaves)
    diff = _first_difference(meta["tree"], _describe(target))
    if diff is not None:
        where, expected, found = diff
        raise ValueError(f"checkpoints.load: the structure of {fname} does not match the "
                         f"target at {where}: the target has {expected}, the file has "
                         f"{found}")
    with_path, treedef = tree_flatten_with_path(target)
    for (p, x), info, a in zip(with_path, meta["leaves"], arrays):
        where = keystr(p) or "the root"
        shape, dtype = _target_leaf_type(x, where)
        if tuple(a.shape) != shape:
            raise ValueError(f"checkpoints.load: shape mismatch at {where} in {fname}: the "
                             f"target expects {shape}, the file holds {tuple(a.shape)}")
        if a.dtype != dtype:
            raise ValueError(f"checkpoints.load: dtype mismatch at {where} in {fname}: the "
                             f"target expects {dtype.name}, the file holds {a.dtype.name}")
    return tree_unflatten(treedef, leaves)

