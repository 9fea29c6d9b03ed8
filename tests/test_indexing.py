"""gather/scatter and numpy indexing: getitem, x.at[...] updates, take, take_along_axis,
where, nonzero, diagonals — against numpy, with derivatives, vmap and jaxpr round trips."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import lax
from functrax.core import eval_jaxpr
from functrax.numpy.indexing import getitem, index_update
from functrax.test_util import check_grads

rng = np.random.default_rng(1)


def _jaxpr_eval(f, *args):
    closed = ft.make_jaxpr(f)(*args)
    ft.typecheck_jaxpr(closed)
    return eval_jaxpr(closed.jaxpr, closed.consts, *args)[0]


def _traced(backend, f, *args):
    """f run traced: eagerly its jaxpr, typechecked and evaluated by the primitives' impls;
    on a jit back end the jitted f (which traces the same jaxpr and lowers it)."""
    return backend(f)(*args) if backend.is_jit else _jaxpr_eval(f, *args)


# ---------------------------------------------------------------------------------------------
# Index strategies: basic pieces, integer arrays, masks, None and Ellipsis


def _index_item(draw, size):
    kind = draw(st.sampled_from(["int", "slice", "array", "none"]))
    if kind == "int":
        return draw(st.integers(-size, size - 1)), 1
    if kind == "slice":
        a = draw(st.one_of(st.none(), st.integers(-size - 1, size + 1)))
        b = draw(st.one_of(st.none(), st.integers(-size - 1, size + 1)))
        c = draw(st.one_of(st.none(), st.sampled_from([1, 2, -1, -2, 3])))
        return slice(a, b, c), 1
    if kind == "array":
        n = draw(st.integers(1, 3))
        return np.array(draw(st.lists(st.integers(-size, size - 1), min_size=n, max_size=n))), 1
    return None, 0


@st.composite
def array_and_index(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    items, dim = [], 0
    n_items = draw(st.integers(1, len(shape) + 1))
    for _ in range(n_items):
        if dim >= len(shape):
            items.append(None)
            continue
        item, used = _index_item(draw, shape[dim])
        items.append(item)
        dim += used
    # Later index arrays keep one entry, so they broadcast against the first one (numpy's
    # broadcasting of index arrays).
    arrays = [i for i, it in enumerate(items) if isinstance(it, np.ndarray)]
    for i in arrays[1:]:
        items[i] = items[i][:1]
    if draw(st.booleans()):
        # After the consumed dims (or before, when they cover the array) it stays valid.
        items.append(Ellipsis) if dim < len(shape) or draw(st.booleans()) else \
            items.insert(0, Ellipsis)
    return shape, tuple(items)


@given(array_and_index())
def test_getitem_matches_numpy(backend, case):
    shape, index = case
    x = rng.standard_normal(shape)
    expect = x[index]
    f = lambda x: getitem(x, index)
    out = _traced(backend, f, x)
    np.testing.assert_allclose(np.asarray(out), expect)
    assert out.shape == expect.shape


@given(array_and_index())
def test_at_get_set_add_match_numpy(backend, case):
    shape, index = case
    x = rng.standard_normal(shape)
    target = x[index]
    v = rng.standard_normal(np.shape(target))
    for mode, ufunc in [("add", np.add), ("set", None), ("max", np.maximum)]:
        expect = x.copy()
        if ufunc is None:
            expect[index] = v
        else:
            ufunc.at(expect, index, v)
        traced = _traced(backend, lambda x, v: index_update(x, index, v, mode), x, v)
        eager = index_update(x, index, v, mode)
        if mode != "set" or _unique(shape, index):
            np.testing.assert_allclose(np.asarray(traced), expect)
            np.testing.assert_allclose(np.asarray(eager), expect)


def _unique(shape, index):
    pos = np.arange(int(np.prod(shape))).reshape(shape)[index]
    return len(np.unique(pos)) == np.size(pos)


def test_getitem_basic_cases(backend):
    x = np.arange(24.0).reshape(2, 3, 4)
    cases = [(0,), (-1, slice(None, None, -1)), (Ellipsis, 1), (None, 0, Ellipsis, None),
             (slice(None), [2, 0]), ([1, 0], slice(None), [3, 3]),
             (slice(None), [0, 2], [1, 1]), (0, [1, 2], None), ([[0], [1]], [[0, 2]]),
             (x[..., 0] > 5,), (slice(None), np.array([True, False, True])),
             ([0, 1], True), (slice(1, None, 2), Ellipsis, slice(None, None, -2)), ()]
    for index in cases:
        out = _traced(backend, lambda x: getitem(x, index), x)
        np.testing.assert_allclose(np.asarray(out), x[index], err_msg=str(index))


def test_getitem_traced_integer_scalar_uses_dynamic_slice(backend):
    x = np.arange(12.0).reshape(3, 4)
    f = lambda x, i: getitem(x, (i, slice(1, None)))
    closed = ft.make_jaxpr(f)(x, np.int64(-1))
    assert "dynamic_slice" in str(closed) and "gather" not in str(closed)
    run = backend(f) if backend.is_jit else \
        (lambda x, i: eval_jaxpr(closed.jaxpr, closed.consts, x, i)[0])
    for i in range(-3, 3):
        np.testing.assert_allclose(run(x, np.int64(i)), x[i, 1:])


def test_getitem_grads_and_vmap(backend):
    x = rng.standard_normal((4, 3))
    idx = np.array([0, 2, 2, -1])
    f = lambda x: getitem(x, (idx, slice(None, None, -1)))
    check_grads(backend.jit(f), (x,), order=2)
    if not backend.is_jit:  # the traced IR is the same for every back end: check it once
        ft.typecheck_jaxpr(ft.make_jaxpr(ft.grad(lambda x: (f(x) ** 2).sum()))(x))
    # Batched integer index array (operand shared), batched operand, and both.
    bidx = np.array([[0, 3], [1, 1], [-1, 2]])
    xs = rng.standard_normal((3, 4, 3))
    g = lambda x, i: getitem(x, i)
    np.testing.assert_allclose(backend(ft.vmap(g, in_axes=(None, 0)))(x, bidx),
                               np.stack([x[i] for i in bidx]))
    np.testing.assert_allclose(backend(ft.vmap(g, in_axes=(0, None)))(xs, idx),
                               np.stack([a[idx] for a in xs]))
    np.testing.assert_allclose(backend(ft.vmap(g))(xs, bidx),
                               np.stack([a[i] for a, i in zip(xs, bidx)]))
    # A batched traced scalar index.
    np.testing.assert_allclose(backend(ft.vmap(g, in_axes=(None, 0)))(x, np.array([0, -1, 2])),
                               x[[0, -1, 2]])
    check_grads(backend.jit(lambda x: ft.vmap(g, in_axes=(None, 0))(x, bidx)), (x,), order=2)


def test_at_updates_accumulate_and_never_mutate(backend):
    x = fnp.zeros(4)
    before = np.array(x)
    idx = np.array([1, 1, 3, 1])
    # The indices go in as arguments too, so a jit back end sees them as traced values.
    y = backend(lambda x, i: x.at[i].add(1.0))(x, idx)
    np.testing.assert_allclose(y, [0, 3, 0, 1])
    np.testing.assert_allclose(x, before)
    np.testing.assert_allclose(backend(lambda x: x.at[np.array([2, 2])].mul(3.0))(x), x)
    np.testing.assert_allclose(x, before)
    z = backend(lambda o, u: o.at[np.array([0, 0])].mul(u))(fnp.ones(3), np.array([2.0, 5.0]))
    np.testing.assert_allclose(z, [10, 1, 1])
    np.testing.assert_allclose(
        backend(lambda o, u: o.at[np.array([0, 0])].min(u))(fnp.zeros(3), np.array([-2.0, -5.0])),
        [-5, 0, 0])
    # Traced: same accumulation, and the traced (numpy) input is not changed either.
    f = lambda x: index_update(x, idx, 1.0, "add")
    np.testing.assert_allclose(_traced(backend, f, before), [0, 3, 0, 1])
    np.testing.assert_allclose(before, np.zeros(4))
    xs = np.arange(3.0)
    stacked = np.stack([xs, xs])
    out = backend(ft.vmap(lambda a: index_update(a, 0, 9.0, "set")))(stacked)
    np.testing.assert_allclose(out, [[9, 1, 2], [9, 1, 2]])
    np.testing.assert_allclose(xs, [0, 1, 2])
    np.testing.assert_allclose(stacked, [[0, 1, 2], [0, 1, 2]])


@pytest.mark.parametrize("mode", ["set", "add", "mul", "min", "max"])
def test_at_update_grads_with_repeated_indices(mode, backend):
    x = np.array([1.0, -2.0, 3.0, 0.5])
    u = np.array([0.7, -1.5, 2.0, 4.0])
    idx = np.array([0, 0, 2, 0])
    f = lambda x, u: index_update(x, idx, u, mode)
    check_grads(backend.jit(f), (x, u), order=2)
    if not backend.is_jit:  # the traced IR is the same for every back end: check it once
        ft.typecheck_jaxpr(ft.make_jaxpr(ft.grad(lambda x, u: (f(x, u) ** 2).sum(),
                                                 (0, 1)))(x, u))
    # vmap with batched operand, batched updates, and batched indices against a loop.
    xs, us = np.stack([x, x * 2]), np.stack([u, -u])
    bidx = np.array([[0, 0, 2, 0], [3, 1, 1, 1]])
    out = backend(ft.vmap(lambda x, u, i: index_update(x, i, u, mode)))(xs, us, bidx)
    loop = np.stack([np.asarray(index_update(a, i, b, mode)) for a, b, i in zip(xs, us, bidx)])
    np.testing.assert_allclose(out, loop)


def test_at_set_with_batched_index(backend):
    out = backend(ft.vmap(lambda i: index_update(np.zeros(3), i, 5.0, "set")))(
        np.array([0, 2, -1]))
    np.testing.assert_allclose(out, [[5, 0, 0], [0, 0, 5], [0, 0, 5]])
    out = backend(ft.vmap(lambda x, i: index_update(x, (i, slice(None)), 1.0, "add"),
                          in_axes=(None, 0)))(np.zeros((2, 2)), np.array([1, 0]))
    np.testing.assert_allclose(out, [[[0, 0], [1, 1]], [[1, 1], [0, 0]]])


def test_scalar_updates_and_mul_with_zeros_grad(backend):
    x = np.array([2.0, 3.0])
    u = np.array([0.0, 4.0, 0.0])
    idx = np.array([1, 1, 0])
    f = backend.jit(lambda x, u: index_update(x, idx, u, "mul"))
    # First derivatives are exact at zero updates; second ones only away from them.
    check_grads(f, (x, u), order=1)
    u = np.array([-1.5, 4.0, 5.0])
    check_grads(f, (x, u), order=2)


# ---------------------------------------------------------------------------------------------
# gather / scatter directly


def test_gather_with_batching_dims_and_fill_mode(backend):
    x = rng.standard_normal((3, 5, 2))
    idx = np.array([[[1], [4]], [[0], [0]], [[3], [2]]])  # (3, 2, 1): per-batch rows
    dn = lax.GatherDimensionNumbers(offset_dims=(2,), collapsed_slice_dims=(1,),
                                    start_index_map=(1,), operand_batching_dims=(0,),
                                    start_indices_batching_dims=(0,))
    f = lambda x: lax.gather(x, idx, dn, (1, 1, 2))
    expect = np.stack([x[b, idx[b, :, 0]] for b in range(3)])
    np.testing.assert_allclose(_traced(backend, f, x), expect)
    check_grads(backend.jit(f), (x,), order=2)
    dn1 = lax.GatherDimensionNumbers((), (0,), (0,))
    # The indices are arguments: a jit back end checks the bounds at run time.
    gather = lambda mode: backend(lambda x, i: lax.gather(x, i, dn1, (1,), mode=mode))
    out = gather("fill")(np.arange(4.0), np.array([[1], [7], [-1]]))
    np.testing.assert_allclose(out, [1, np.nan, np.nan])
    out = gather("clip")(np.arange(4.0), np.array([[1], [7], [-1]]))
    np.testing.assert_allclose(out, [1, 3, 0])
    g = backend(ft.grad(lambda x, i: lax.gather(x, i, dn1, (1,), mode="fill",
                                                fill_value=0.0).sum()))(
        np.arange(4.0), np.array([[1], [7]]))
    np.testing.assert_allclose(g, [0, 1, 0, 0])


def test_gather_transpose_is_scatter_add(backend):
    x = rng.standard_normal((4, 3))
    dn = lax.GatherDimensionNumbers((1,), (0,), (0,))
    f = lambda x: lax.gather(x, np.array([[1], [1], [3]]), dn, (1, 3))
    closed = ft.make_jaxpr(ft.grad(lambda x: f(x).sum()))(x)
    ft.typecheck_jaxpr(closed)
    assert "scatter_add" in str(closed)
    np.testing.assert_allclose(backend(ft.grad(lambda x: f(x).sum()))(x),
                               np.array([[0] * 3, [2] * 3, [0] * 3, [1] * 3]))


def test_scatter_window_and_drop_mode(backend):
    x = np.zeros((4, 3))
    dn = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0,),
                                     scatter_dims_to_operand_dims=(0,))
    upd = np.arange(6.0).reshape(2, 3)
    # The indices are arguments: a jit back end drops or clips them at run time.
    scatter_add = lambda mode: backend(lambda x, i, u: lax.scatter_add(x, i, u, dn, mode=mode))
    out = scatter_add(None)(x, np.array([[2], [9]]), upd)  # 9 is dropped
    expect = np.zeros((4, 3))
    expect[2] = upd[0]
    np.testing.assert_allclose(out, expect)
    out = scatter_add("clip")(x, np.array([[2], [9]]), upd)
    expect[3] = upd[1]
    np.testing.assert_allclose(out, expect)
    np.testing.assert_allclose(x, np.zeros((4, 3)))
    f = lambda x, u: lax.scatter_max(x, np.array([[1], [1]]), u, dn)
    check_grads(backend.jit(f), (rng.standard_normal((4, 3)), rng.standard_normal((2, 3))),
                order=2)
    for p in [lax.scatter, lax.scatter_add, lax.scatter_mul, lax.scatter_min, lax.scatter_max]:
        g = lambda x, u, i: p(x, i, u, dn)
        xs = rng.standard_normal((2, 4, 3))
        us = rng.standard_normal((2, 2, 3))
        ids = np.array([[[0], [3]], [[2], [1]]])
        out = backend(ft.vmap(g))(xs, us, ids)
        loop = np.stack([np.asarray(g(a, b, c)) for a, b, c in zip(xs, us, ids)])
        np.testing.assert_allclose(out, loop)
        out = backend(ft.vmap(g, in_axes=(0, 0, None)))(xs, us, ids[0])
        loop = np.stack([np.asarray(g(a, b, ids[0])) for a, b in zip(xs, us)])
        np.testing.assert_allclose(out, loop)


def test_gather_scatter_errors_name_op():
    dn = lax.GatherDimensionNumbers((), (0,), (0,))
    with pytest.raises(TypeError, match=r"(?s)gather.*test_indexing\.py"):
        ft.make_jaxpr(lambda x: lax.gather(x, np.array([[0.5]]), dn, (1,)))(np.ones(3))
    sdn = lax.ScatterDimensionNumbers((), (0,), (0,))
    with pytest.raises(TypeError, match=r"(?s)scatter_add.*dtype.*test_indexing\.py"):
        ft.make_jaxpr(lambda x: lax.scatter_add(x, np.array([[0]]), np.ones(1, np.float32),
                                                sdn))(np.ones(3))


# ---------------------------------------------------------------------------------------------
# numpy helpers


def test_indexing_errors():
    x = np.ones((2, 3))
    with pytest.raises(IndexError, match=r"(?s)out of bounds for axis 1 with size 3.*"
                                         r"test_indexing\.py"):
        ft.make_jaxpr(lambda x: getitem(x, (0, 5)))(x)
    with pytest.raises(IndexError, match="too many indices"):
        ft.make_jaxpr(lambda x: getitem(x, (0, 0, 0)))(x)
    with pytest.raises(IndexError, match="boolean mask indexing needs a concrete mask"):
        ft.make_jaxpr(lambda x: getitem(x, x > 0))(x)
    with pytest.raises(IndexError, match="valid indices"):
        ft.make_jaxpr(lambda x: getitem(x, 1.5))(x)
    with pytest.raises(IndexError, match="could not be broadcast"):
        ft.make_jaxpr(lambda x: getitem(x, (np.array([0, 1]), np.array([0, 1, 2]))))(x)
    with pytest.raises(ValueError, match="cannot be broadcast"):
        index_update(np.zeros(3), 0, np.ones(2), "set")
    with pytest.raises(ft.core.ConcretizationTypeError, match="slice bounds must be static"):
        ft.make_jaxpr(lambda x, i: getitem(x, slice(i, None)))(np.ones(3), np.int64(1))


def test_mask_under_grad_is_concrete():
    x = rng.standard_normal(5)
    g = ft.grad(lambda x: getitem(x, x > 0).sum())(x)
    np.testing.assert_allclose(g, (x > 0).astype(float))


@given(st.integers(0, 2), st.integers(1, 3))
def test_take_and_take_along_axis(backend, axis, n):
    x = rng.standard_normal((3, 4, 2))
    idx = rng.integers(-x.shape[axis], x.shape[axis], n)
    np.testing.assert_allclose(_traced(backend, lambda x: fnp.take(x, idx, axis=axis), x),
                               np.take(x, idx, axis=axis))
    np.testing.assert_allclose(backend(lambda x: fnp.take(x, idx))(x), np.take(x, idx))
    for mode in ("wrap", "clip"):
        # Concrete indices (folded in) and traced ones (mapped at run time) alike.
        np.testing.assert_allclose(
            backend(lambda x: fnp.take(x, idx + 10, axis=axis, mode=mode))(x),
            np.take(x, idx + 10, axis=axis, mode=mode))
        np.testing.assert_allclose(
            backend(lambda x, i: fnp.take(x, i, axis=axis, mode=mode))(x, idx + 10),
            np.take(x, idx + 10, axis=axis, mode=mode))
    ishape = list(x.shape)
    ishape[axis] = n
    ta = rng.integers(0, x.shape[axis], ishape)
    f = lambda x: fnp.take_along_axis(x, ta, axis)
    np.testing.assert_allclose(_traced(backend, f, x), np.take_along_axis(x, ta, axis))
    check_grads(backend.jit(f), (x,), order=2)
    # Broadcasting indices against the array outside the axis.
    ishape = [1] * 3
    ishape[axis] = n
    tb = rng.integers(0, x.shape[axis], ishape)
    np.testing.assert_allclose(backend(lambda x, i: fnp.take_along_axis(x, i, axis))(x, tb),
                               np.take_along_axis(x, tb, axis))


def test_take_fills_out_of_bounds_traced_indices(backend):
    f = lambda x, i: fnp.take(x, i)
    out = _traced(backend, f, np.arange(3.0), np.array([0, 5, -1]))
    np.testing.assert_allclose(out, [0, np.nan, 2])
    with pytest.raises(IndexError, match="out of bounds"):
        fnp.take(np.arange(3.0), np.array([5]))


def test_where_and_select(backend):
    c = np.array([[True, False], [False, True]])
    x, y = rng.standard_normal((2, 2)), rng.standard_normal(2)
    np.testing.assert_allclose(_traced(backend, lambda x, y: fnp.where(c, x, y), x, y),
                               np.where(c, x, y))
    np.testing.assert_allclose(backend(fnp.where)(c, x, y), np.where(c, x, y))
    out = backend(lambda c: fnp.where(c, 1, 2.5))(c)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.where(c, 1, 2.5))
    assert backend(lambda c: fnp.where(c, np.float32(1), 2))(c).dtype == np.float32
    check_grads(backend.jit(lambda x, y: fnp.where(c, x, y)), (x, y), order=2)
    conds = [x > 0, x < -0.5]
    np.testing.assert_allclose(
        backend(lambda x: fnp.select([x > 0, x < -0.5], [x, 2 * x], -1.0))(x),
        np.select(conds, [x, 2 * x], -1.0))


def test_nonzero_forms_need_concrete_values():
    # Eager only: nonzero and its relatives read their input's values (concrete input only).
    c = np.array([[True, False], [False, True]])
    x = rng.standard_normal((2, 2))
    for got, want in zip(fnp.where(c), np.where(c)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fnp.argwhere(c), np.argwhere(c))
    np.testing.assert_array_equal(fnp.flatnonzero(c), np.flatnonzero(c))
    np.testing.assert_array_equal(fnp.nonzero(np.array([0, 3, 0, 4]), size=3)[0], [1, 3, 0])
    with pytest.raises(Exception, match="nonzero"):
        ft.make_jaxpr(lambda x: fnp.nonzero(x))(x)


@given(st.integers(-3, 3), st.sampled_from([(3, 3), (2, 4), (4, 2), (2, 3, 4)]))
def test_diagonal_diag_tril_triu(backend, k, shape):
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(_traced(backend, lambda x: fnp.diagonal(x, k, -2, -1), x),
                               np.diagonal(x, k, -2, -1))
    np.testing.assert_allclose(backend(lambda x: fnp.tril(x, k))(x), np.tril(x, k))
    np.testing.assert_allclose(backend(lambda x: fnp.triu(x, k))(x), np.triu(x, k))
    check_grads(backend.jit(lambda x: fnp.diagonal(x, k, -1, -2)), (x,), order=2)
    check_grads(backend.jit(lambda x: fnp.tril(x, k)), (x,), order=1)
    v = rng.standard_normal(shape[-1])
    np.testing.assert_allclose(backend(lambda v: fnp.diag(v, k))(v), np.diag(v, k))
    check_grads(backend.jit(lambda v: fnp.diag(v, k)), (v,), order=2)
    if len(shape) == 2:
        np.testing.assert_allclose(backend(lambda x: fnp.diag(x, k))(x), np.diag(x, k))


# ---------------------------------------------------------------------------------------------
# x.at[...] keywords (JAX's out-of-bounds modes, fill_value, wrap_negative_indices, hints) and
# nonzero/argwhere/flatnonzero/where(cond) with size= under jit/vmap


def _ref_in_bounds(x, index, wrap):
    """numpy reference for JAX's modes: (index with integer parts clamped into range, the
    out-of-bounds mask over the broadcast integer-index shape). Cases keep the integer
    indices first, so that mask lines up with the result's leading dims."""
    parts = index if isinstance(index, tuple) else (index,)
    fixed, bad = [], np.zeros((), bool)
    for d, i in enumerate(parts):
        if isinstance(i, slice):
            fixed.append(i)
            continue
        n = x.shape[d]
        i = np.asarray(i)
        if wrap:
            i = np.where(i < 0, i + n, i)
        bad = bad | (i < 0) | (i >= n)
        fixed.append(np.clip(i, 0, n - 1))
    return tuple(fixed), bad


def _ref_get(x, index, mode, fill, wrap=True):
    fixed, bad = _ref_in_bounds(x, index, wrap)
    out = np.array(x[fixed])
    if mode in ("fill", "drop"):
        mask = bad.reshape(bad.shape + (1,) * (out.ndim - bad.ndim))
        out = np.where(mask, fill, out).astype(x.dtype)
    return out


def _ref_update(x, index, v, ufunc, mode, wrap=True):
    fixed, bad = _ref_in_bounds(x, index, wrap)
    out = x.copy()
    v = np.broadcast_to(v, x[fixed].shape)
    if mode != "clip":  # the default, 'drop' and 'fill' skip out-of-bounds updates
        keep = ~np.broadcast_to(bad, np.broadcast_shapes(
            *[np.shape(i) for i in fixed if not isinstance(i, slice)]))
        fixed = tuple(i if isinstance(i, slice) else np.broadcast_to(i, keep.shape)[keep]
                      for i in fixed)
        v = v[keep]
    if ufunc is None:
        out[fixed] = v
    else:
        ufunc.at(out, fixed, v)
    return out


def _both_ways(backend, f, x, index):
    """f(x, index) with the index's integer arrays closed over (static) and passed as
    arguments (traced under jit)."""
    parts = index if isinstance(index, tuple) else (index,)
    arrays = [p for p in parts if isinstance(p, np.ndarray)]

    def g(x, *arrs):
        it = iter(arrs)
        idx = tuple(next(it) if isinstance(p, np.ndarray) else p for p in parts)
        return f(x, idx if isinstance(index, tuple) else idx[0])
    return backend(lambda x: f(x, index))(x), backend(g)(x, *arrays)


_OOB_CASES = [6, -5, np.array([0, 5, -1, -9, 2, 2]), (np.array([1, 4, -1]), slice(None)),
              (np.array([0, 3, 7]), np.array([2, -4, 1])), (2, np.array([3, 0, -2]))]


@pytest.mark.parametrize("wrap", [True, False])
@pytest.mark.parametrize("index", _OOB_CASES, ids=range(len(_OOB_CASES)))
def test_at_get_modes_out_of_bounds(backend, index, wrap):
    x = fnp.asarray(rng.standard_normal((4, 3)))  # an Array: eager x.at needs it
    kw = dict(wrap_negative_indices=wrap)
    # The default ('promise_in_bounds') reads out-of-bounds indices clamped, as 'clip' does.
    for mode, fill, ref_mode in [(None, None, "clip"), ("promise_in_bounds", None, "clip"),
                                 ("clip", None, "clip"), ("fill", None, "fill"),
                                 ("drop", -1.5, "fill"), ("fill", 2, "fill")]:
        want = _ref_get(x, index, ref_mode, np.nan if fill is None else fill, wrap)
        for got in _both_ways(backend, lambda x, i: x.at[i].get(mode=mode, fill_value=fill,
                                                                 **kw), x, index):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, err_msg=f"{mode} {index}")
    # The hints do not change results.
    got = backend(lambda x: x.at[index].get(mode="fill", fill_value=0.0, indices_are_sorted=True,
                                           unique_indices=True, **kw))(x)
    np.testing.assert_allclose(got, _ref_get(x, index, "fill", 0.0, wrap))


@pytest.mark.parametrize("index", _OOB_CASES, ids=range(len(_OOB_CASES)))
def test_at_update_modes_out_of_bounds(backend, index):
    x = fnp.asarray(rng.standard_normal((4, 3)))
    target = _ref_in_bounds(x, index, True)[0]
    v = rng.standard_normal(x[target].shape)
    for op, ufunc in [("set", None), ("add", np.add), ("mul", np.multiply), ("min", np.minimum),
                      ("max", np.maximum)]:
        for mode in [None, "promise_in_bounds", "drop", "fill", "clip"]:
            if op == "set" and not _unique(x.shape, _ref_in_bounds(x, index, True)[0]):
                continue  # which repeated set wins is unspecified
            want = _ref_update(x, index, v, ufunc, mode)
            f = lambda x, i: index_update(x, i, v, op, mode=mode)
            for got in _both_ways(backend, f, x, index):
                np.testing.assert_allclose(got, want, err_msg=f"{op} {mode} {index}")
    # The methods pass the keywords on: subtract/divide/power/apply too.
    idx = np.array([1, 9, -2])  # distinct after clamping: power reads, then sets
    xs = fnp.asarray(np.abs(x[:, 0]) + 0.5)
    u = np.array([2.0, 3.0, 0.5])
    for name, ref in [("subtract", lambda a, b: a - b), ("divide", lambda a, b: a / b),
                      ("power", lambda a, b: a ** b)]:
        for mode in [None, "drop", "clip"]:
            got = backend(lambda x, u: getattr(x.at[idx], name)(u, mode=mode))(xs, u)
            want = xs.copy()
            keep = slice(None) if mode == "clip" else np.array([True, False, True])
            for i, b in zip(np.clip(idx, -4, 3)[keep], u[keep]):
                want[i] = ref(want[i], b)
            np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"{name} {mode}")
    got = backend(lambda x: x.at[idx].apply(fnp.sin, mode="clip"))(xs)
    want = xs.copy()
    want[[1, 3, 2]] = np.sin(xs[[1, 3, 2]])
    np.testing.assert_allclose(got, want)
    # Negative indices out of bounds: dropped (or clamped to 0 with 'clip').
    f = lambda x: x.at[np.array([-1, 2])].add(10.0, wrap_negative_indices=False,
                                              unique_indices=True)
    np.testing.assert_allclose(backend(f)(xs), xs + [0, 0, 10, 0])
    f = lambda x: x.at[-1].set(7.0, wrap_negative_indices=False, mode="clip")
    np.testing.assert_allclose(backend(f)(xs), [7.0, *xs[1:]])


def test_at_get_default_fill_per_dtype(backend):
    cases = [(np.arange(3.0), np.nan), (np.arange(3, dtype=np.float32), np.nan),
             (np.arange(3, dtype=np.int32), np.iinfo(np.int32).min),
             (np.arange(3, dtype=np.int64), np.iinfo(np.int64).min),
             (np.arange(3, dtype=np.uint8), 255), (np.array([False, False, True]), True),
             (np.arange(3) + 1j, np.nan)]
    for x, fill in cases:
        x = fnp.asarray(x)
        got = backend(lambda x: x.at[np.array([1, 3])].get(mode="fill"))(x)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, np.array([x[1], fill], dtype=x.dtype))


def test_at_modes_grads_and_vmap(backend):
    # check_grads evaluates f on numpy arrays too: the functional forms of x.at[...] here.
    x = rng.standard_normal(4)
    idx = np.array([0, 6, -2, 2, -7])
    for mode in ["clip", "fill"]:
        # Filled entries are constants: their derivative is zero.
        check_grads(backend.jit(lambda x: getitem(x, idx, mode=mode, fill_value=0.5) ** 2),
                    (x,), order=2)
    u = rng.standard_normal(5)
    for mode in [None, "clip"]:
        check_grads(backend.jit(lambda x, u: index_update(x, idx, u, "mul", mode=mode)),
                    (x, u), order=2)
        check_grads(backend.jit(lambda x, u: index_update(x, idx, u, "add", mode=mode)),
                    (x, u), order=1)
    bidx = np.array([[0, 9], [-1, -5], [4, 2]])
    x = fnp.asarray(x)  # unbatched: an Array, for eager x.at
    g = lambda x, i: x.at[i].get(mode="fill", fill_value=-3.0)
    np.testing.assert_allclose(backend(ft.vmap(g, in_axes=(None, 0)))(x, bidx),
                               np.stack([_ref_get(x, i, "fill", -3.0) for i in bidx]))
    h = lambda x, i: x.at[i].add(1.0, mode="clip")
    np.testing.assert_allclose(backend(ft.vmap(h, in_axes=(None, 0)))(x, bidx),
                               np.stack([_ref_update(x, i, 1.0, np.add, "clip") for i in bidx]))
    h = lambda x, i: x.at[i].add(1.0)
    np.testing.assert_allclose(backend(ft.vmap(h, in_axes=(None, 0)))(x, bidx),
                               np.stack([_ref_update(x, i, 1.0, np.add, None) for i in bidx]))


def test_at_keyword_errors():
    # Eager only: argument checking.
    x = fnp.arange(3.0)
    for call in [lambda: x.at[0].get(mode="wrap"), lambda: x.at[0].set(1.0, mode="raise"),
                 lambda: x.at[0].add(1.0, mode="bogus"), lambda: x.at[0].apply(fnp.sin, mode=3),
                 lambda: index_update(x, 0, 1.0, "add", mode="add")]:
        with pytest.raises(ValueError, match="valid modes are None, 'promise_in_bounds', "
                                             "'clip', 'drop', 'fill'"):
            call()
    with pytest.raises(ValueError, match="unknown mode 'wrap'"):
        ft.jit(lambda x: x.at[0].get(mode="wrap"))(x)
    for call in [lambda: x.at[0].set(1.0, foo=1), lambda: x.at[0].get(fill=0.0),
                 lambda: x.at[0].add(1.0, sorted=True), lambda: x.at[0].min(1.0, fill_value=0),
                 lambda: x.at[0].apply(fnp.sin, fill_value=0), lambda: x.at[0].get(1)]:
        with pytest.raises(TypeError, match="argument"):
            call()
    with pytest.raises(ValueError, match="fill_value must be a scalar"):
        x.at[5].get(mode="fill", fill_value=np.zeros(2))
    with pytest.raises(ft.core.ConcretizationTypeError, match="fill_value"):
        ft.jit(lambda x, f: x.at[5].get(mode="fill", fill_value=f))(x, 1.0)
    with pytest.raises(ValueError, match="unknown op"):
        index_update(x, 0, 1.0, "divide")
    # Plain indexing keeps numpy's IndexError for concrete out-of-bounds indices.
    with pytest.raises(IndexError, match="out of bounds"):
        ft.make_jaxpr(lambda x: x[np.array([0, 3])])(x)


def _ref_nonzero(a, size, fill):
    out = np.nonzero(a)
    fills = fill if isinstance(fill, tuple) else (0 if fill is None else fill,) * a.ndim
    return tuple(np.concatenate([o[:size], np.full(max(size - len(o), 0), f, np.int64)])
                 for o, f in zip(out, fills))


_NZ_ARRAYS = [np.array([0, 3, 0, 0, -2, 1]), rng.integers(-1, 2, (3, 4)),
              rng.integers(0, 2, (2, 3, 2)).astype(bool), np.array([0.0, -0.0, np.nan, 2.5]),
              np.zeros((2, 3)), np.zeros((0,)), np.zeros((2, 0))]


@pytest.mark.parametrize("a", _NZ_ARRAYS, ids=range(len(_NZ_ARRAYS)))
def test_nonzero_family_with_size_traces(backend, a):
    count = np.count_nonzero(a)
    fills = [None, -1] + ([tuple(range(7, 7 + a.ndim))] if a.ndim > 1 else [])
    for size in sorted({0, 1, count, count + 2}):
        for fill in fills:
            want = _ref_nonzero(a, size, fill)
            for fn in [lambda a: fnp.nonzero(a, size=size, fill_value=fill),
                       lambda a: fnp.where(a, size=size, fill_value=fill)]:
                got = backend(fn)(a)
                assert len(got) == a.ndim
                for g, w in zip(got, want):
                    assert g.shape == (size,) and g.dtype == np.int64
                    np.testing.assert_array_equal(g, w)
            cols = [w.reshape(size, 1) for w in want]
            got = backend(lambda a: fnp.argwhere(a, size=size, fill_value=fill))(a)
            np.testing.assert_array_equal(got, np.concatenate(cols, 1))
        for fill in [None, -1]:
            want = _ref_nonzero(a.ravel(), size, fill)[0]
            got = backend(lambda a: fnp.flatnonzero(a, size=size, fill_value=fill))(a)
            np.testing.assert_array_equal(got, want)


def test_nonzero_with_size_vmap_grad_and_0d(backend):
    m = rng.integers(-1, 2, (4, 5))
    f = lambda r: fnp.nonzero(r, size=3, fill_value=-1)[0]
    np.testing.assert_array_equal(backend(ft.vmap(f))(m),
                                  np.stack([_ref_nonzero(r, 3, -1)[0] for r in m]))
    g = lambda r: fnp.argwhere(r, size=4)
    np.testing.assert_array_equal(backend(ft.vmap(g))(m),
                                  np.stack([np.concatenate(_ref_nonzero(r, 4, None)).reshape(
                                      1, 4).T for r in m]))
    # The indices feed a gather, which differentiates as usual (x is kept away from 0 so the
    # finite differences do not change the mask).
    x = np.array([0.7, -1.2, 1.5, -0.4, 2.0])
    check_grads(backend.jit(lambda x: x[fnp.flatnonzero(x > 0, size=4)] ** 2), (x,), order=2)
    # A 0-d input: argwhere gives (size, 0), as numpy's (N, 0).
    assert backend(lambda a: fnp.argwhere(a, size=2))(np.float64(3.0)).shape == (2, 0)


def test_nonzero_family_errors():
    # Eager only: errors at trace time.
    x = np.array([0.0, 1.0, 2.0])
    for name, fn in [("nonzero", fnp.nonzero), ("argwhere", fnp.argwhere),
                     ("flatnonzero", fnp.flatnonzero), ("nonzero", fnp.where)]:
        with pytest.raises(ft.core.ConcretizationTypeError,
                           match=f"{name} without size=.*pass size=N"):
            ft.jit(fn)(x)
        with pytest.raises(ft.core.ConcretizationTypeError, match="size=N"):
            ft.vmap(fn)(np.ones((2, 3)))
    with pytest.raises(ValueError, match="size must be non-negative"):
        fnp.nonzero(x, size=-1)
    with pytest.raises(TypeError, match="size must be an integer"):
        fnp.nonzero(x, size=2.5)
    with pytest.raises(ft.core.ConcretizationTypeError, match="size"):
        ft.jit(lambda x, n: fnp.nonzero(x, size=n))(x, 2)
    with pytest.raises(ValueError, match="a scalar or a tuple of 2 scalars"):
        fnp.nonzero(np.ones((2, 2)), size=2, fill_value=(1, 2, 3))
    with pytest.raises(ValueError, match="a scalar or a tuple of 1 scalars"):
        fnp.nonzero(x, size=2, fill_value=np.zeros(2))
    with pytest.raises(ValueError, match="0d arrays"):
        fnp.nonzero(np.float64(1.0), size=1)
    with pytest.raises(ValueError, match="one-argument form"):
        fnp.where(x > 0, x, -x, size=2)


def test_gather_of_one_scalar_keeps_rank_zero(backend):
    # Regression: the gather impl returned shape (1,) for a 0-d result (ascontiguousarray is
    # at least 1-d), so eager x.at[i].get(mode=...) of one element was not a scalar.
    dn = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,),
                                    start_index_map=(0,))
    out = backend(lambda x: lax.gather(x, np.array([2]), dn, (1,)))(np.arange(4.0))
    assert out.shape == () and out == 2.0
