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
