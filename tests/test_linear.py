"""functrax.numpy products — dot, matmul (@), vdot, inner, outer, tensordot, einsum, kron,
trace, cross — against numpy (float64), with derivatives (check_grads order 2), vmap against a
loop, and typechecks of the traced and transformed IR."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import lax
from functrax.core import eval_jaxpr
from functrax.test_util import check_grads

rng = np.random.default_rng(1)


def _check(backend, f, np_f, *args, grads=True, rtol=1e-11):
    """Values of f (run on `backend`) against numpy, derivatives of the jitted f, and (once,
    on the eager run: the traced IR is the same for every back end) typechecks of the IR."""
    out = backend(f)(*args)
    np.testing.assert_allclose(np.asarray(out), np_f(*args), rtol=rtol, atol=1e-11)
    assert np.shape(out) == np.shape(np_f(*args))
    if not backend.is_jit:
        closed = ft.make_jaxpr(f)(*args)
        ft.typecheck_jaxpr(closed)
        np.testing.assert_allclose(np.asarray(eval_jaxpr(closed.jaxpr, closed.consts, *args)[0]),
                                   np.asarray(out), rtol=1e-12, atol=1e-12)
    if grads:
        check_grads(backend.jit(f), args, order=2)
        if not backend.is_jit:
            n = len(args)
            ft.typecheck_jaxpr(ft.make_jaxpr(
                ft.grad(lambda *a: (f(*a) ** 2).sum(), argnums=tuple(range(n))))(*args))
            ft.typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f))(*[np.stack([a, a]) for a in args]))


@st.composite
def matmul_shapes(draw):
    """Two broadcast-compatible operand shapes: a common batch shape, of which each operand
    keeps a suffix with some entries set to 1; either operand may be a vector."""
    common = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    m, k, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))

    def operand(tail):
        keep = draw(st.integers(0, len(common)))
        dims = [d if not draw(st.booleans()) else 1 for d in common[len(common) - keep:]]
        return tuple(dims) + tail
    sa = (k,) if draw(st.booleans()) else operand((m, k))
    sb = (k,) if draw(st.booleans()) else operand((k, n))
    return sa, sb


@given(matmul_shapes())
def test_matmul_broadcasting_matches_numpy(backend, shapes):
    sa, sb = shapes
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    _check(backend, fnp.matmul, np.matmul, a, b, grads=False)
    np.testing.assert_allclose(backend(ft.vmap(fnp.matmul))(np.stack([a, a]), np.stack([b, -b])),
                               np.stack([a @ b, a @ -b]), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)),
                                   ((2, 3), (3, 4)), ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)),
                                   ((5, 2, 3), (5, 3, 4)), ((5, 1, 2, 3), (4, 3, 2))])
def test_matmul_and_dot_grads(sa, sb, backend):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    _check(backend, fnp.matmul, np.matmul, a, b)
    _check(backend, fnp.dot, np.dot, a, b)


def test_matmul_is_one_dot_general_and_operator_works_on_tracers(backend):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    closed = ft.make_jaxpr(lambda a, b: a @ b)(a, b)
    assert [e.primitive for e in closed.eqns] == [lax.dot_general_p]
    closed = ft.make_jaxpr(lambda a, b: fnp.matmul(a, b))(rng.standard_normal((6, 4, 3)), b)
    assert [e.primitive for e in closed.eqns] == [lax.dot_general_p]
    g = backend(ft.grad(lambda a: (a @ b).sum()))(a)
    np.testing.assert_allclose(g, np.ones((4, 2)) @ b.T)


def test_matmul_vmap(backend):
    a, b = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 3, 5))
    for axes in [(0, 0), (0, None), (None, 0)]:
        aa = a if axes[0] is not None else a[0]
        bb = b if axes[1] is not None else b[0]
        out = backend(ft.vmap(fnp.matmul, in_axes=axes))(aa, bb)
        loop = np.stack([(aa[i] if axes[0] is not None else aa) @
                         (bb[i] if axes[1] is not None else bb) for i in range(4)])
        np.testing.assert_allclose(out, loop, rtol=1e-12)


def test_matmul_and_dot_errors():
    with pytest.raises(ValueError, match="matmul"):
        fnp.matmul(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="scalar"):
        fnp.matmul(np.ones(3), 2.0)
    with pytest.raises(TypeError, match=r"(?s)dot_general.*test_linear\.py"):
        fnp.dot(np.ones((2, 3)), np.ones((4, 2)))
    assert fnp.dot(2.0, np.ones(3)).shape == (3,)


def test_vdot_inner_outer_tensordot(backend):
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    _check(backend, fnp.vdot, np.vdot, x, y)
    _check(backend, fnp.inner, np.inner, x, rng.standard_normal((2, 5, 4)))
    _check(backend, fnp.outer, np.outer, x, rng.standard_normal(5))
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 3, 5))
    _check(backend, lambda a, b: fnp.tensordot(a, b, ((1, 2), (1, 0))),
           lambda a, b: np.tensordot(a, b, ((1, 2), (1, 0))), a, b)
    c = rng.standard_normal((3, 4, 2))
    _check(backend, lambda a, c: fnp.tensordot(a, c, 2), lambda a, c: np.tensordot(a, c, 2),
           a, c)
    _check(backend, lambda a, c: fnp.tensordot(a, c, 0), lambda a, c: np.tensordot(a, c, 0),
           a[0], c[0], grads=False)
    _check(backend, lambda a, b: fnp.tensordot(a, b, (2, 0)),
           lambda a, b: np.tensordot(a, b, (2, 0)), a, b)
    z = rng.standard_normal(3) + 1j * rng.standard_normal(3)
    np.testing.assert_allclose(backend(fnp.vdot)(z, z), np.vdot(z, z))
    with pytest.raises(ValueError, match="tensordot"):
        fnp.tensordot(a, b, 4)


EINSUM_CASES = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,jk", [(2, 3), (3, 4)]),
    ("ii->i", [(3, 3)]),
    ("ii", [(3, 3)]),
    ("iij->j", [(3, 3, 2)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),
    ("bij,bjk,bkl->bil", [(2, 3, 4), (2, 4, 5), (2, 5, 3)]),
    ("i,i", [(3,), (3,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ijk->kji", [(2, 3, 4)]),
    ("ab,bc,cd,de->ae", [(2, 3), (3, 4), (4, 5), (5, 2)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("i...->...", [(3, 4, 5)]),
    ("ij,kj->ikj", [(2, 3), (4, 3)]),
    ("ijk,jl->il", [(2, 3, 4), (3, 5)]),
    ("ij,j,jk->", [(2, 3), (3,), (3, 2)]),
    ("...i,...i->...", [(2, 3), (1, 3)]),
]


@pytest.mark.parametrize("spec,shapes", EINSUM_CASES)
def test_einsum_matches_numpy(spec, shapes, backend):
    ops = [rng.standard_normal(s) for s in shapes]
    f = lambda *ops: fnp.einsum(spec, *ops)
    _check(backend, f, lambda *ops: np.einsum(spec, *ops), *ops, grads=len(ops) <= 3)


def test_einsum_forms_and_options(backend):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(
        backend(lambda a, b: fnp.einsum(a, [0, 1], b, [2, 1], [0, 2]))(a, b),
        np.einsum(a, [0, 1], b, [2, 1], [0, 2]))
    np.testing.assert_allclose(
        backend(lambda a, b: fnp.einsum(a, [Ellipsis, 1], b, [2, 1]))(a, b),
        np.einsum(a, [Ellipsis, 1], b, [2, 1]))
    ops = [rng.standard_normal(s) for s in [(2, 3), (3, 4), (4, 5)]]
    np.testing.assert_allclose(
        backend(lambda *o: fnp.einsum("ab,bc,cd->ad", *o, optimize=False))(*ops),
        np.einsum("ab,bc,cd->ad", *ops))
    # Three operands: two products, whatever order the path picks.
    closed = ft.make_jaxpr(lambda *o: fnp.einsum("ab,bc,cd->ad", *o))(*ops)
    assert [e.primitive for e in closed.eqns].count(lax.dot_general_p) == 2
    out = backend(lambda a, b: fnp.einsum("ij,jk->ik", a, b, preferred_element_type=np.float64))(
        np.ones((2, 3), np.int32), np.ones((3, 2), np.int32))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="einsum"):
        fnp.einsum("ij,jk->ik", np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="einsum"):
        fnp.einsum("ij->k", np.ones((2, 3)))


def test_einsum_vmap_and_per_example(backend):
    xs, w = rng.standard_normal((5, 3)), rng.standard_normal((3, 2))
    f = lambda x, w: fnp.einsum("i,ij->j", x, w)
    out = backend(ft.vmap(f, in_axes=(0, None)))(xs, w)
    np.testing.assert_allclose(out, xs @ w, rtol=1e-12)
    g = backend(ft.vmap(ft.grad(lambda w, x: (fnp.tanh(f(x, w)) ** 2).sum()),
                        in_axes=(None, 0)))(w, xs)
    for i in range(5):
        np.testing.assert_allclose(g[i], ft.grad(lambda w: (fnp.tanh(f(xs[i], w)) ** 2).sum())(w),
                                   rtol=1e-12)


def test_kron_trace_cross(backend):
    _check(backend, fnp.kron, np.kron, rng.standard_normal((2, 3)),
           rng.standard_normal((3, 2, 2)))
    _check(backend, fnp.kron, np.kron, rng.standard_normal(3), rng.standard_normal((2, 2)))
    t = rng.standard_normal((3, 4, 5))
    _check(backend, lambda t: fnp.trace(t, 1, 0, 2), lambda t: np.trace(t, 1, 0, 2), t)
    _check(backend, lambda t: fnp.trace(t, -1), lambda t: np.trace(t, -1), t[0])
    ti = np.arange(9, dtype=np.int32).reshape(3, 3)
    tr = backend(fnp.trace)(ti)
    assert tr.dtype == np.trace(ti).dtype and int(tr) == 12
    inf = np.array([[1.0, np.inf], [np.inf, 2.0]])
    assert float(backend(fnp.trace)(inf)) == 3.0  # off-diagonal infinities do not leak in
    for sa, sb, kw in [((4, 3), (4, 3), {}), ((4, 2), (4, 3), {}), ((4, 3), (4, 2), {}),
                       ((4, 2), (4, 2), {}), ((3, 4), (4, 3), dict(axisa=0)),
                       ((2, 3, 5), (5, 3), dict(axisa=1, axisb=1, axisc=0))]:
        a, b = rng.standard_normal(sa), rng.standard_normal(sb)
        np.testing.assert_allclose(backend(lambda a, b: fnp.cross(a, b, **kw))(a, b),
                                   _np_cross(a, b, **kw), rtol=1e-12)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _check(backend, fnp.cross, np.cross, a, b)
    with pytest.raises(ValueError, match="cross"):
        fnp.cross(np.ones(4), np.ones(3))


def _np_cross(a, b, **kw):
    """numpy.cross, padding 2-vectors itself (numpy deprecates them)."""
    axisa, axisb, axisc = kw.get("axisa", -1), kw.get("axisb", -1), kw.get("axisc", -1)
    a, b = np.moveaxis(a, axisa, -1), np.moveaxis(b, axisb, -1)
    two = a.shape[-1] == 2 and b.shape[-1] == 2
    pad = lambda v: np.concatenate([v, np.zeros(v.shape[:-1] + (1,))], -1) \
        if v.shape[-1] == 2 else v
    out = np.cross(pad(a), pad(b))
    return out[..., 2] if two else np.moveaxis(out, -1, axisc)
