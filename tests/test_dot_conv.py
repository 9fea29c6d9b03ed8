"""lax.dot_general, conv_general_dilated and reduce_window: against numpy references (float64),
derivatives to second order (check_grads), vmap against a Python loop (batched lhs, rhs, both),
per-example gradients of a conv layer, jaxpr round trips and typechecks of transformed IR."""
import importlib
import itertools
import string

import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
from functrax import lax
from functrax.core import eval_jaxpr
from functrax.test_util import check_grads, check_vjp

rng = np.random.default_rng(0)


def _roundtrip(backend, f, *args):
    """f's value on `backend`; on the eager run also its jaxpr, typechecked and evaluated, which
    must agree with f (the traced IR is the same for every back end: checked once)."""
    out = backend(f)(*args)
    if not backend.is_jit:
        closed = ft.make_jaxpr(f)(*args)
        ft.typecheck_jaxpr(closed)
        traced = eval_jaxpr(closed.jaxpr, closed.consts, *args)[0]
        np.testing.assert_allclose(np.asarray(traced), np.asarray(out), rtol=1e-12, atol=1e-12)
    return out


def _typecheck_transforms(f, *args):
    """The IR of jvp, grad (vjp) and vmap of f typechecks."""
    n = len(args)
    ft.typecheck_jaxpr(ft.make_jaxpr(lambda *a: ft.jvp(f, a, a)[1])(*args))
    ft.typecheck_jaxpr(ft.make_jaxpr(
        ft.grad(lambda *a: (f(*a) ** 2).sum(), argnums=tuple(range(n))))(*args))
    ft.typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f))(*[np.stack([a, a]) for a in args]))


def _vmap_vs_loop(backend, f, *args, in_axes=0, rtol=1e-10):
    """vmap of f, run on `backend`, against a loop of eager calls."""
    out = backend(ft.vmap(f, in_axes=in_axes))(*args)
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    n = next(a.shape[ax] for a, ax in zip(args, axes) if ax is not None)
    loop = np.stack([np.asarray(f(*[a if ax is None else np.take(a, i, ax)
                                    for a, ax in zip(args, axes)])) for i in range(n)])
    np.testing.assert_allclose(np.asarray(out), loop, rtol=rtol, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# dot_general


@st.composite
def dot_problems(draw):
    """Random shapes and dimension numbers: nb batch, nc contracting, free dims on each side,
    every operand's dims in a random order."""
    nb, nc = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    nlf, nrf = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    size = st.integers(1, 3)
    b = [draw(size) for _ in range(nb)]
    c = [draw(size) for _ in range(nc)]
    lf = [draw(size) for _ in range(nlf)]
    rf = [draw(size) for _ in range(nrf)]
    lroles = [("b", i) for i in range(nb)] + [("c", i) for i in range(nc)] + \
        [("l", i) for i in range(nlf)]
    rroles = [("b", i) for i in range(nb)] + [("c", i) for i in range(nc)] + \
        [("r", i) for i in range(nrf)]
    lroles = draw(st.permutations(lroles))
    rroles = draw(st.permutations(rroles))
    sizes = {"b": b, "c": c, "l": lf, "r": rf}
    lshape = tuple(sizes[k][i] for k, i in lroles)
    rshape = tuple(sizes[k][i] for k, i in rroles)
    dn = ((tuple(lroles.index(("c", i)) for i in range(nc)),
           tuple(rroles.index(("c", i)) for i in range(nc))),
          (tuple(lroles.index(("b", i)) for i in range(nb)),
           tuple(rroles.index(("b", i)) for i in range(nb))))
    letters = {("b", i): string.ascii_letters[i] for i in range(nb)}
    letters.update({("c", i): string.ascii_letters[5 + i] for i in range(nc)})
    letters.update({("l", i): string.ascii_letters[10 + i] for i in range(nlf)})
    letters.update({("r", i): string.ascii_letters[15 + i] for i in range(nrf)})
    spec = "".join(letters[r] for r in lroles) + "," + "".join(letters[r] for r in rroles) + \
        "->" + "".join(letters[("b", i)] for i in range(nb)) + \
        "".join(letters[r] for r in lroles if r[0] == "l") + \
        "".join(letters[r] for r in rroles if r[0] == "r")
    return lshape, rshape, dn, spec


@given(dot_problems())
def test_dot_general_matches_einsum(backend, problem):
    lshape, rshape, dn, spec = problem
    x, y = rng.standard_normal(lshape), rng.standard_normal(rshape)
    f = lambda x, y: lax.dot_general(x, y, dn)
    np.testing.assert_allclose(_roundtrip(backend, f, x, y), np.einsum(spec, x, y), rtol=1e-12,
                               atol=1e-12)
    check_grads(backend.jit(f), (x, y), order=2)


@given(dot_problems(), st.sampled_from([(0, None), (None, 0), (0, 0), (-1, 1)]))
def test_dot_general_vmap(backend, problem, in_axes):
    lshape, rshape, dn, _ = problem
    if in_axes[1] is not None:
        in_axes = (in_axes[0], min(in_axes[1], len(rshape)))
    x = rng.standard_normal(lshape)
    y = rng.standard_normal(rshape)
    xs = np.stack([x, 2 * x, x - 1], axis=in_axes[0]) if in_axes[0] is not None else x
    ys = np.stack([y, y + 1, -y], axis=in_axes[1]) if in_axes[1] is not None else y
    f = lambda x, y: lax.dot_general(x, y, dn)
    _vmap_vs_loop(backend, f, xs, ys, in_axes=in_axes)


@pytest.mark.parametrize("dn", [
    (((1,), (0,)), ((), ())),
    (((0,), (0,)), ((), ())),
    (((1,), (1,)), ((), ())),
    (((2,), (1,)), ((0,), (0,))),
    (((1, 2), (2, 0)), ((0,), (1,))),
])
def test_dot_general_grads_and_ir(dn, backend):
    shapes = {0: ((3, 4), (4, 2)), 1: ((4, 3), (4, 2)), 2: ((3, 4), (2, 4)),
              3: ((2, 3, 4), (2, 4, 5)), 4: ((2, 3, 4), (4, 2, 3))}
    lshape, rshape = shapes[[(((1,), (0,)), ((), ())), (((0,), (0,)), ((), ())),
                             (((1,), (1,)), ((), ())), (((2,), (1,)), ((0,), (0,))),
                             (((1, 2), (2, 0)), ((0,), (1,)))].index(dn)]
    x, y = rng.standard_normal(lshape), rng.standard_normal(rshape)
    f = lambda x, y: lax.dot_general(x, y, dn)
    check_grads(backend.jit(f), (x, y), order=2)
    if backend.is_jit:
        return  # the rest checks the traced IR, the same for every back end
    _typecheck_transforms(f, x, y)
    # A plain matrix product differentiates to exactly two more dot_generals.
    if dn == (((1,), (0,)), ((), ())):
        g = ft.make_jaxpr(ft.grad(lambda x, y: f(x, y).sum(), argnums=(0, 1)))(x, y)
        assert sum(e.primitive is lax.dot_general_p for e in g.eqns) == 3


def test_dot_general_batching_is_one_primitive():
    x, y = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 4, 2))
    for axes in [(0, 0), (0, None), (None, 0)]:
        xs = x if axes[0] is not None else x[0]
        ys = y if axes[1] is not None else y[0]
        closed = ft.make_jaxpr(ft.vmap(lambda a, b: lax.dot(a, b), in_axes=axes))(xs, ys)
        assert [e.primitive for e in closed.eqns].count(lax.dot_general_p) == 1
        assert len(closed.eqns) <= 2  # at most a transpose besides the product


def test_dot_general_dtypes(backend):
    dot = backend(lax.dot)
    a32 = rng.standard_normal((3, 4)).astype(np.float32)
    b64 = rng.standard_normal((4, 2))
    out = dot(a32, b64)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, a32.astype(np.float64) @ b64, rtol=1e-12)
    out = dot(a32, a32.T)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a32 @ a32.T, rtol=1e-5)
    i = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = dot(i, i.T)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, i @ i.T)
    out = backend(lambda a, b: lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                               preferred_element_type=np.float64))(i, i)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, (i @ i.T).astype(np.float64))
    # Gradients come back in each operand's own dtype.
    ga, gb = backend(ft.grad(lambda a, b: lax.dot(a, b).sum(), argnums=(0, 1)))(a32, b64)
    assert ga.dtype == np.float32 and gb.dtype == np.float64
    np.testing.assert_allclose(ga, np.ones((3, 2)) @ b64.T, rtol=1e-6)
    np.testing.assert_allclose(gb, a32.T.astype(np.float64) @ np.ones((3, 2)), rtol=1e-12)
    a, b = rng.standard_normal((2, 3, 4)), np.ones((2, 4, 1))
    np.testing.assert_allclose(backend(lax.batch_matmul)(a, b), a @ b, rtol=1e-12)


def test_dot_general_errors_name_op_and_line():
    with pytest.raises(TypeError, match=r"(?s)dot_general.*contracting.*test_dot_conv\.py"):
        lax.dot_general(np.ones((2, 3)), np.ones((4, 2)), (((1,), (0,)), ((), ())))
    with pytest.raises(TypeError, match=r"(?s)dot_general.*batch.*test_dot_conv\.py"):
        ft.make_jaxpr(lambda a, b: lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,)))))(
            np.ones((2, 3, 4)), np.ones((3, 4, 5)))


# ---------------------------------------------------------------------------------------------
# conv_general_dilated


def ref_conv(lhs, rhs, strides, padding, lhs_dil, rhs_dil, groups=1, batch_groups=1):
    """A direct loop over output positions (NC..., OI...) in float64."""
    lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
    n, c = lhs.shape[:2]
    o, i = rhs.shape[:2]
    nsp = lhs.ndim - 2
    dil = tuple((d - 1) * r + 1 if d else 0 for d, r in zip(lhs.shape[2:], lhs_dil))
    x = np.zeros((n, c) + dil)
    x[(slice(None), slice(None)) + tuple(slice(None, None, r) for r in lhs_dil)] = lhs
    for ax, (lo, hi) in enumerate(padding, start=2):
        widths = [(0, 0)] * x.ndim
        widths[ax] = (max(lo, 0), max(hi, 0))
        x = np.pad(x, widths)
        x = np.take(x, range(max(-lo, 0), x.shape[ax] - max(-hi, 0)), axis=ax)
    keff = [(k - 1) * r + 1 for k, r in zip(rhs.shape[2:], rhs_dil)]
    out_sp = [max(0, (x.shape[2 + j] - keff[j]) // strides[j] + 1) for j in range(nsp)]
    nb = n // batch_groups
    out = np.zeros((nb, o) + tuple(out_sp))
    for pos in np.ndindex(*out_sp):
        win = x[(slice(None), slice(None)) + tuple(
            slice(pos[j] * strides[j], pos[j] * strides[j] + keff[j], rhs_dil[j])
            for j in range(nsp))]
        for oc in range(o):
            if batch_groups > 1:
                g = oc // (o // batch_groups)
                w = win[g * nb:(g + 1) * nb]
            else:
                g = oc // (o // groups)
                w = win[:, g * i:(g + 1) * i]
            out[(slice(None), oc) + pos] = np.tensordot(
                w, rhs[oc], axes=(list(range(1, nsp + 2)), list(range(nsp + 1))))
    return out


# (lhs shape NC..., rhs shape OI..., strides, padding, lhs_dilation, rhs_dilation, G, BG)
CONV_CASES = [
    ((2, 3, 5, 4), (4, 3, 3, 2), (1, 1), ((1, 1), (0, 1)), (1, 1), (1, 1), 1, 1),
    ((2, 4, 6, 5), (6, 2, 3, 2), (2, 1), ((1, -1), (0, 2)), (2, 1), (1, 2), 2, 1),
    ((4, 3, 7), (6, 3, 3), (2,), ((1, 1),), (1,), (2,), 1, 2),
    ((1, 2, 4, 3, 3), (2, 2, 2, 2, 1), (1, 2, 1), ((1, 0), (0, 1), (1, 1)), (1, 1, 2),
     (2, 1, 1), 1, 1),
    ((2, 3, 5, 5), (3, 1, 3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 3, 1),
    # Few output features: the overlap-add product instead of im2col.
    ((2, 8, 4, 4), (2, 8, 3, 3), (1, 1), ((2, 2), (1, 2)), (2, 2), (1, 1), 1, 1),
    ((2, 8, 5, 4), (1, 8, 3, 3), (2, 1), ((1, 1), (0, 1)), (1, 1), (2, 1), 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_reference(case, backend):
    lshape, rshape, strides, pads, ld, rd, g, bg = case
    x, w = rng.standard_normal(lshape), rng.standard_normal(rshape)
    f = lambda x, w: lax.conv_general_dilated(x, w, strides, pads, ld, rd,
                                              feature_group_count=g, batch_group_count=bg)
    np.testing.assert_allclose(_roundtrip(backend, f, x, w),
                               ref_conv(x, w, strides, pads, ld, rd, g, bg), rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_grads(case, backend):
    lshape, rshape, strides, pads, ld, rd, g, bg = case
    x, w = rng.standard_normal(lshape), rng.standard_normal(rshape)
    f = lambda x, w: lax.conv_general_dilated(x, w, strides, pads, ld, rd,
                                              feature_group_count=g, batch_group_count=bg)
    check_grads(backend.jit(f), (x, w), order=2)
    if not backend.is_jit:  # the traced IR is the same for every back end: check it once
        _typecheck_transforms(f, x, w)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (1, 3)])
def test_conv_vmap(case, in_axes, backend):
    lshape, rshape, strides, pads, ld, rd, g, bg = case
    if in_axes[1] == 3 and len(rshape) < 3:
        in_axes = (in_axes[0], 1)
    f = lambda x, w: lax.conv_general_dilated(x, w, strides, pads, ld, rd,
                                              feature_group_count=g, batch_group_count=bg)
    xs = np.stack([rng.standard_normal(lshape) for _ in range(3)], in_axes[0]) \
        if in_axes[0] is not None else rng.standard_normal(lshape)
    ws = np.stack([rng.standard_normal(rshape) for _ in range(3)], in_axes[1]) \
        if in_axes[1] is not None else rng.standard_normal(rshape)
    _vmap_vs_loop(backend, f, xs, ws, in_axes=in_axes)
    if backend.is_jit:
        return  # the rest checks the traced IR, the same for every back end
    closed = ft.make_jaxpr(ft.vmap(f, in_axes=in_axes))(xs, ws)
    ft.typecheck_jaxpr(closed)
    assert [e.primitive for e in closed.eqns].count(lax.conv_general_dilated_p) == 1


def test_conv_layouts_and_string_padding(backend):
    x = rng.standard_normal((2, 6, 5, 3))  # NHWC
    w = rng.standard_normal((3, 2, 3, 4))  # HWIO
    dn = ("NHWC", "HWIO", "NHWC")
    for padding in ["SAME", "VALID", "SAME_LOWER"]:
        got = backend(lambda x, w: lax.conv_general_dilated(x, w, (2, 1), padding,
                                                            dimension_numbers=dn))(x, w)
        pads = lax.padtype_to_pads((6, 5), (3, 2), (2, 1), padding)
        expect = ref_conv(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), (2, 1), pads,
                          (1, 1), (1, 1)).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-10)
    assert lax.padtype_to_pads((6, 5), (3, 2), (2, 1), "SAME") == [(0, 1), (0, 1)]
    assert lax.padtype_to_pads((5,), (4,), (1,), "SAME_LOWER") == [(2, 1)]
    dnums = lax.conv_dimension_numbers(x.shape, w.shape, dn)
    assert dnums == lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    # Mixed output layout, checked with derivatives.
    f = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NCHW"))
    mixed = backend(f)(x, w)
    assert mixed.shape == (2, 4, 6, 5)
    check_grads(backend.jit(f), (x, w), order=2)
    xt, wt = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    nchw = backend(lambda x, w: lax.conv(x, w, (1, 1), "SAME"))(xt, wt)
    np.testing.assert_allclose(nchw, mixed, rtol=1e-12)
    general = backend(lambda x, w: lax.conv_with_general_padding(
        x, w, (1, 1), [(1, 1), (0, 1)], (1, 1), (1, 1)))(xt, wt)
    np.testing.assert_allclose(general, nchw, rtol=1e-12)


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(3, 7),
       st.integers(1, 3), st.integers(1, 2), st.integers(1, 2),
       st.sampled_from(["SAME", "VALID"]))
def test_conv_1d_hypothesis(backend, n, c, o, width, k, stride, dilation, padding):
    x = rng.standard_normal((n, c, width))
    w = rng.standard_normal((o, c, k))
    got = backend(lambda x, w: lax.conv_general_dilated(x, w, (stride,), padding,
                                                        rhs_dilation=(dilation,)))(x, w)
    pads = lax.padtype_to_pads((width,), ((k - 1) * dilation + 1,), (stride,), padding)
    np.testing.assert_allclose(got, ref_conv(x, w, (stride,), pads, (1,), (dilation,)),
                               rtol=1e-10, atol=1e-10)


def test_conv_transpose_is_the_input_gradient(backend):
    x = rng.standard_normal((2, 7, 7, 3))  # NHWC
    w = rng.standard_normal((3, 3, 3, 4))  # HWIO
    dn = ("NHWC", "HWIO", "NHWC")
    for strides in [(1, 1), (2, 2)]:
        f = lambda x, w: lax.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=dn)
        ct = rng.standard_normal(f(x, w).shape)
        got = backend(lambda ct, w: lax.conv_transpose(ct, w, strides, "VALID",
                                                       dimension_numbers=dn,
                                                       transpose_kernel=True))(ct, w)
        grad_x = backend(lambda x, w, ct: ft.vjp(lambda x: f(x, w), x)[1](ct)[0])(x, w, ct)
        np.testing.assert_allclose(got, grad_x, rtol=1e-10, atol=1e-10)
    lhs, rhs = rng.standard_normal((1, 4, 4, 2)), rng.standard_normal((3, 3, 2, 5))
    up = backend(lambda a, b: lax.conv_transpose(a, b, (2, 2), "SAME"))(lhs, rhs)
    assert up.shape == (1, 8, 8, 5)
    # Stride 2 spreads the input pixels out with holes between them; the odd output pixels
    # see one input pixel each, through the kernel's centre tap alone.
    np.testing.assert_allclose(up[0, 1::2, 1::2], lhs[0] @ rhs[1, 1], rtol=1e-12)


def test_per_example_gradients_of_a_conv_layer(backend):
    xs = rng.standard_normal((4, 1, 6, 6, 2))  # 4 examples of a batch of 1, NHWC
    ys = rng.standard_normal((4, 1, 3, 3, 3))
    params = (rng.standard_normal((3, 3, 2, 3)), rng.standard_normal(3))
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(p, x, y):
        k, b = p
        h = lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=dn) + b
        return ((lax.tanh(h) - y) ** 2).sum()

    per_ex = backend(ft.vmap(ft.grad(loss), in_axes=(None, 0, 0)))(params, xs, ys)
    one = backend(ft.grad(loss))
    for i in range(4):
        gk, gb = ft.grad(loss)(params, xs[i], ys[i])
        np.testing.assert_allclose(per_ex[0][i], gk, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(per_ex[1][i], gb, rtol=1e-10, atol=1e-12)
        for a, b in zip(one(params, xs[i], ys[i]), (gk, gb)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    if backend.is_jit:
        return  # the rest checks the traced IR, the same for every back end
    closed = ft.make_jaxpr(ft.vmap(ft.grad(loss), in_axes=(None, 0, 0)))(params, xs, ys)
    ft.typecheck_jaxpr(closed)
    # Forward, input gradient and kernel gradient: still three convolutions, no loop.
    assert [e.primitive for e in closed.eqns].count(lax.conv_general_dilated_p) <= 3


def test_conv_second_order_through_tanh(backend):
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((2, 2, 2, 2))
    f = lambda x, w: lax.tanh(lax.conv_general_dilated(x, w, (1, 1), "SAME"))
    check_grads(backend.jit(f), (x, w), order=2, modes=("rev",))
    h = backend(ft.hessian(lambda w, x: f(x, w).sum()))(w, x)
    assert h.shape == w.shape * 2
    np.testing.assert_allclose(h, ft.hessian(lambda w: f(x, w).sum())(w), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(h.reshape(16, 16), h.reshape(16, 16).T, rtol=1e-10, atol=1e-12)


def test_conv_errors_name_op_and_line():
    with pytest.raises(TypeError, match=r"(?s)conv_general_dilated.*features.*test_dot_conv"):
        lax.conv_general_dilated(np.ones((1, 3, 5, 5)), np.ones((2, 2, 3, 3)), (1, 1), "SAME")
    with pytest.raises(TypeError, match="dimension_numbers"):
        lax.conv_general_dilated(np.ones((1, 5, 5, 3)), np.ones((3, 3, 3, 2)), (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWX"))
    with pytest.raises(ValueError, match="padding"):
        lax.conv_general_dilated(np.ones((1, 3, 5, 5)), np.ones((2, 3, 3, 3)), (1, 1), "FULL")


# ---------------------------------------------------------------------------------------------
# reduce_window


def ref_reduce_window(x, init, op, window, strides, padding, base_dil, win_dil):
    x = np.asarray(x, np.float64)
    grown = tuple((d - 1) * b + 1 if d else 0 for d, b in zip(x.shape, base_dil))
    full = np.full(grown, init)
    full[tuple(slice(None, None, b) for b in base_dil)] = x
    for ax, (lo, hi) in enumerate(padding):
        widths = [(0, 0)] * x.ndim
        widths[ax] = (max(lo, 0), max(hi, 0))
        full = np.pad(full, widths, constant_values=init)
        full = np.take(full, range(max(-lo, 0), full.shape[ax] - max(-hi, 0)), axis=ax)
    eff = [(w - 1) * r + 1 for w, r in zip(window, win_dil)]
    out_shape = [max(0, (full.shape[i] - eff[i]) // strides[i] + 1) for i in range(x.ndim)]
    out = np.empty(out_shape)
    for pos in np.ndindex(*out_shape):
        win = full[tuple(slice(p * s, p * s + e, r)
                         for p, s, e, r in zip(pos, strides, eff, win_dil))]
        out[pos] = op.reduce(win.ravel(), initial=init)
    return out


WINDOW_CASES = [
    ((1, 2, 2, 1), (1, 2, 2, 1), "VALID", None, None),
    ((1, 3, 2, 1), (1, 1, 2, 1), "SAME", None, None),
    ((1, 2, 3, 1), (1, 2, 1, 1), ((0, 0), (1, 1), (-1, 1), (0, 0)), (1, 2, 1, 1), (1, 1, 2, 1)),
    ((2, 2, 2, 2), (1, 3, 2, 1), ((0, 1), (2, 0), (1, 1), (0, 0)), (2, 1, 1, 1), (1, 2, 1, 2)),
    ((1, 5, 4, 1), (1, 1, 1, 1), "VALID", None, None),
]
def _distinct(shape):
    """Values at least 0.05 apart, so no window holds a near-tie that would make the finite
    differences of a max or min meaningless."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.05


KINDS = {"max": (lax.max, -np.inf, np.maximum), "min": (lax.min, np.inf, np.minimum),
         "add": (lax.add, 0.0, np.add)}


def _canonical(x, window, strides, padding, bd, wd):
    nd = x.ndim
    bd = bd or (1,) * nd
    wd = wd or (1,) * nd
    if isinstance(padding, str):
        eff = [(w - 1) * r + 1 for w, r in zip(window, wd)]
        padding = lax.padtype_to_pads([(d - 1) * b + 1 for d, b in zip(x.shape, bd)], eff,
                                      strides, padding)
    return padding, bd, wd


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", WINDOW_CASES)
def test_reduce_window_matches_reference_and_grads(kind, case, backend):
    window, strides, padding, bd, wd = case
    op, init, npop = KINDS[kind]
    x = _distinct((2, 6, 7, 3))
    f = lambda x: lax.reduce_window(x, init, op, window, strides, padding, bd, wd)
    pads, bd_, wd_ = _canonical(x, window, strides, padding, bd, wd)
    expect = ref_reduce_window(x, init, npop, window, strides, pads, bd_, wd_)
    # atol: a window of sums can cancel to exactly 0 in one summation order and not another.
    np.testing.assert_allclose(_roundtrip(backend, f, x), expect, rtol=1e-12, atol=1e-12)
    if np.isfinite(expect).all():
        check_grads(backend.jit(f), (x,), order=2)
    xs = _distinct((3,) + x.shape)
    _vmap_vs_loop(backend, f, xs)
    _vmap_vs_loop(backend, f, np.moveaxis(xs, 0, 2), in_axes=2)
    gf = ft.grad(lambda x: (f(x) ** 2).sum())
    _vmap_vs_loop(backend, gf, xs)
    if not backend.is_jit:  # the traced IR is the same for every back end: check it once
        _typecheck_transforms(f, x)
        ft.typecheck_jaxpr(ft.make_jaxpr(ft.grad(lambda x: gf(x).sum()))(x))


def test_max_pool_gradient_goes_to_first_max(backend):
    x = np.array([[1.0, 3.0, 3.0, 0.0],
                  [3.0, 2.0, 0.0, 0.0],
                  [5.0, 5.0, 1.0, 2.0],
                  [5.0, 5.0, 2.0, 1.0]])
    g = backend(ft.grad(lambda x: lax.reduce_window(x, -np.inf, lax.max, (2, 2), (2, 2),
                                                    "VALID").sum()))(x)
    np.testing.assert_array_equal(g, [[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]])
    # Overlapping windows: each window sends its cotangent to its own first maximum.
    g = backend(ft.grad(lambda x: lax.reduce_window(x, -np.inf, lax.max, (2, 2), (1, 1),
                                                    "VALID").sum()))(x)
    np.testing.assert_array_equal(g, [[0, 2, 1, 0], [0, 0, 0, 0], [2, 2, 0, 2],
                                      [0, 0, 0, 0]])
    # The tangent picked out by forward mode agrees.
    t = rng.standard_normal(x.shape)
    pool = lambda x: lax.reduce_window(x, -np.inf, lax.max, (2, 2), (2, 2), "VALID")
    _, jt = backend(lambda x, t: ft.jvp(pool, (x,), (t,)))(x, t)
    np.testing.assert_array_equal(jt, [[t[0, 1], t[0, 2]], [t[2, 0], t[2, 3]]])


def test_reduce_window_computation_forms_and_init_values(backend):
    x = _distinct((5, 6))
    import functrax.numpy as fnp
    ref = ref_reduce_window(x, -np.inf, np.maximum, (2, 3), (1, 2),
                            lax.padtype_to_pads(x.shape, (2, 3), (1, 2), "SAME"), (1, 1), (1, 1))
    for comp in ["max", fnp.maximum, lambda a, b: lax.max(a, b)]:
        np.testing.assert_array_equal(
            backend(lambda x: lax.reduce_window(x, -np.inf, comp, (2, 3), (1, 2), "SAME"))(x),
            ref)
    if not backend.is_jit:  # the traced IR is the same for every back end: check it once
        closed = ft.make_jaxpr(lambda x: lax.reduce_window(x, 0.0, fnp.add, (2, 2), (1, 1),
                                                           "VALID"))(x)
        assert [e.primitive for e in closed.eqns] == [lax.reduce_window_sum_p]
    # A non-neutral init value fills the padding and joins every window (0.525 is off the
    # data's 0.05 grid, so no window ties with it and finite differences are meaningful).
    got = backend(lambda x: lax.reduce_window(x, 1.0, lax.add, (2, 2), (1, 1), "SAME"))(x)
    expect = ref_reduce_window(x, 1.0, np.add, (2, 2), (1, 1), [(0, 1), (0, 1)], (1, 1),
                               (1, 1))
    np.testing.assert_allclose(got, expect)
    check_grads(backend.jit(lambda x: lax.reduce_window(x, 0.525, lax.max, (2, 2), (1, 1),
                                                        "SAME")), (x,), order=1)
    # Any other computation: a product pool, differentiable through its multiplications.
    prod = lambda x: lax.reduce_window(x, 1.0, lax.mul, (2, 2), (2, 2), "VALID")
    np.testing.assert_allclose(backend(prod)(x),
                               ref_reduce_window(x, 1.0, np.multiply, (2, 2), (2, 2),
                                                 [(0, 0), (0, 0)], (1, 1), (1, 1)))
    check_grads(backend.jit(prod), (x,), order=2)
    # A pytree of operands (sum and max at once).
    s, m = backend(lambda x: lax.reduce_window(
        (x, x), (0.0, -np.inf), lambda a, b: (lax.add(a[0], b[0]), lax.max(a[1], b[1])),
        (2, 2), (2, 2), "VALID"))(x)
    blocks = x[:4].reshape(2, 2, 3, 2)  # the VALID 2x2 windows; the last row is left over
    np.testing.assert_allclose(s, blocks.sum(axis=(1, 3)), rtol=1e-12)
    np.testing.assert_allclose(m, blocks.max(axis=(1, 3)))
    # Integer operands use the dtype's extreme as the neutral element.
    xi = np.arange(24, dtype=np.int32).reshape(4, 6)
    mi = backend(lambda xi: lax.reduce_window(xi, np.iinfo(np.int32).min, lax.max, (2, 2),
                                              (2, 2), "VALID"))(xi)
    assert mi.dtype == np.int32
    np.testing.assert_array_equal(mi, xi.reshape(2, 2, 3, 2).max(axis=(1, 3)))


def test_reduce_window_errors_name_op_and_line():
    with pytest.raises(TypeError, match=r"(?s)reduce_window_max.*test_dot_conv\.py"):
        lax.reduce_window(np.ones((4, 4)), -np.inf, lax.max, (2,), (2,), "VALID")
    with pytest.raises(ValueError, match="reduce_window"):
        lax.reduce_window(np.ones((4, 4)), 0.0, "median", (2, 2), (2, 2), "VALID")


def test_convnet_step_shapes_and_grads(backend):
    """The benchmark's ConvNet, tiny: conv-relu-pool twice, dense; grad and per-example grad."""
    import functrax.numpy as fnp
    dn = ("NHWC", "HWIO", "NHWC")
    p = [rng.standard_normal((3, 3, 1, 2)) * 0.5, rng.standard_normal((3, 3, 2, 3)) * 0.5,
         rng.standard_normal((2 * 2 * 3, 2)) * 0.5]
    x = rng.standard_normal((3, 8, 8, 1))

    def loss(p, x):
        h = lax.conv_general_dilated(x, p[0], (1, 1), "SAME", dimension_numbers=dn)
        h = lax.reduce_window(fnp.maximum(h, 0.0), -np.inf, lax.max, (1, 2, 2, 1),
                              (1, 2, 2, 1), "VALID")
        h = lax.conv_general_dilated(h, p[1], (1, 1), "SAME", dimension_numbers=dn)
        h = lax.reduce_window(lax.tanh(h), -np.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                              "VALID")
        return (fnp.tanh(h.reshape(h.shape[0], -1) @ p[2]) ** 2).sum()

    # Reverse mode against forward mode (both exact, so ReLU kinks and near-ties in the pools
    # cannot upset a finite difference).
    check_vjp(backend.jit(lambda *p: loss(list(p), x)), tuple(p))
    per_ex = backend(ft.vmap(ft.grad(loss), in_axes=(None, 0)))(p, x[:, None])
    for i in range(3):
        gi = ft.grad(loss)(p, x[i:i + 1])
        for a, b in zip(per_ex, gi):
            np.testing.assert_allclose(a[i], b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("window,strides", list(itertools.product([(2, 2), (3, 2)],
                                                                  [(1, 1), (2, 2)])))
def test_select_and_scatter_is_transpose_of_gather(window, strides, backend):
    from functrax.lax.windowed import select_and_gather_add_p, select_and_scatter_add_p
    x = rng.standard_normal((5, 6))
    params = dict(select="max", window_dimensions=window, window_strides=strides,
                  padding=((0, 1), (1, 0)), base_dilation=(1, 1), window_dilation=(1, 1))
    t = rng.standard_normal(x.shape)
    g = backend(lambda t, x: select_and_gather_add_p.bind(t, x, **params))(t, x)
    u = rng.standard_normal(g.shape)
    s = backend(lambda u, x: select_and_scatter_add_p.bind(u, x, **params))(u, x)
    np.testing.assert_allclose(np.vdot(u, g), np.vdot(s, t), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The specialised impl paths (row, wide row, slab, patch layouts; tiled pooling gradient)

_conv_mod = importlib.import_module("functrax.lax.conv")
_win_mod = importlib.import_module("functrax.lax.windowed")


def _count_calls(monkeypatch, module, name):
    calls = []
    orig = getattr(module, name)

    def counted(*a, **k):
        calls.append(name)
        return orig(*a, **k)
    monkeypatch.setattr(module, name, counted)
    return calls


def _nhwc_ref(x, w, pads, strides=(1, 1), rhs_dil=(1, 1)):
    """ref_conv in NHWC/HWIO/NHWC."""
    out = ref_conv(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), strides, pads, (1, 1),
                   rhs_dil)
    return out.transpose(0, 2, 3, 1)


# (x NHWC, w HWIO, strides, rhs_dilation): the thresholds are lowered below so that these small
# shapes take the row product (features >= 32 per row or a narrow wide product), and their
# kernel gradients the slab product.
PATH_CASES = [
    ((3, 9, 8, 5), (3, 3, 5, 4), (1, 1), (1, 1)),      # narrow O: wide row product
    ((2, 7, 6, 4), (3, 2, 4, 40), (1, 1), (1, 1)),     # wide O: per-row products
    ((2, 9, 9, 3), (3, 3, 3, 6), (1, 2), (2, 1)),      # W strided, H dilated
    ((2, 6, 5, 1), (3, 3, 1, 7), (1, 1), (1, 1)),      # one channel: (columns, rows) patches
    ((2, 5, 6, 3), (1, 3, 3, 5), (1, 1), (1, 1)),      # a one-row kernel
]


@pytest.mark.parametrize("case", PATH_CASES)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_conv_impl_paths_match_reference(case, layout, monkeypatch, backend):
    xs, ws, strides, rd = case
    monkeypatch.setattr(_conv_mod, "_ROW_MIN_DEPTH", 1)
    monkeypatch.setattr(_conv_mod, "_ROW_MIN_ROWS", 1)
    monkeypatch.setattr(_conv_mod, "_SLAB_MIN_ROWS", 1)
    # Inputs are drawn NHWC/HWIO and handed over in `layout`; results are compared NHWC/HWIO.
    if layout == "NHWC":
        dn, xperm, wperm = ("NHWC", "HWIO", "NHWC"), (0, 1, 2, 3), (0, 1, 2, 3)
    else:
        dn, xperm, wperm = ("NCHW", "OIHW", "NCHW"), (0, 3, 1, 2), (3, 2, 0, 1)
    xback, wback = tuple(np.argsort(xperm)), tuple(np.argsort(wperm))
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 2e-4)):
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        pads = lax.padtype_to_pads(xs[1:3], [(k - 1) * r + 1 for k, r in zip(ws[:2], rd)],
                                   strides, "SAME")
        f = lambda x, w: lax.conv_general_dilated(x, w, strides, "SAME", rhs_dilation=rd,
                                                  dimension_numbers=dn)
        xin, win = x.transpose(xperm), w.transpose(wperm)
        y = backend(f)(xin, win)
        assert y.dtype == dtype
        np.testing.assert_allclose(y.transpose(xback), _nhwc_ref(x, w, pads, strides, rd),
                                   rtol=tol, atol=tol)
        # Both cotangents are convolutions too (input and kernel gradient): check them through
        # <ct, f(x, t)> = <ct, df/dw t> and the same for x, with f from the reference.
        ct = rng.standard_normal(y.shape).astype(dtype)
        gx, gw = backend(lambda x, w, ct: ft.vjp(f, x, w)[1](ct))(xin, win, ct)
        gx, gw, ct = gx.transpose(xback), gw.transpose(wback), ct.transpose(xback)
        tx, tw = rng.standard_normal(xs), rng.standard_normal(ws)
        np.testing.assert_allclose(np.vdot(gw, tw), np.vdot(ct, _nhwc_ref(x, tw, pads, strides,
                                                                          rd)),
                                   rtol=50 * tol)
        np.testing.assert_allclose(np.vdot(gx, tx), np.vdot(ct, _nhwc_ref(tx, w, pads, strides,
                                                                          rd)),
                                   rtol=50 * tol)


def test_conv_impl_paths_are_taken(monkeypatch, backend):
    """The W6 shapes, scaled down: each specialised product runs where it is meant to."""
    monkeypatch.setattr(_conv_mod, "_ROW_MIN_ROWS", 1)
    monkeypatch.setattr(_conv_mod, "_SLAB_MIN_ROWS", 1)
    names = ["_row_product", "_slab_product", "_patch_product", "_overlap_add_product"]
    calls = {n: _count_calls(monkeypatch, _conv_mod, n) for n in names}
    dn = ("NHWC", "HWIO", "NHWC")
    x = rng.standard_normal((4, 8, 8, 1)).astype(np.float32)
    k1 = rng.standard_normal((3, 3, 1, 16)).astype(np.float32)
    k2 = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)

    def loss(k1, k2):
        h = lax.conv_general_dilated(x, k1, (1, 1), "SAME", dimension_numbers=dn)
        h = lax.conv_general_dilated(lax.tanh(h), k2, (1, 1), "SAME", dimension_numbers=dn)
        return (h ** 2).sum()
    g1, g2 = backend(ft.grad(loss, argnums=(0, 1)))(k1, k2)
    assert len(calls["_patch_product"]) >= 1    # first layer: one input channel
    assert len(calls["_row_product"]) >= 2      # second layer forward and input gradient
    assert len(calls["_slab_product"]) >= 1     # kernel gradients
    e1, e2 = ft.grad(loss, argnums=(0, 1))(k1.astype(np.float64), k2.astype(np.float64))
    np.testing.assert_allclose(g1, e1, rtol=2e-3, atol=1e-3 * np.abs(e1).max())
    np.testing.assert_allclose(g2, e2, rtol=2e-3, atol=1e-3 * np.abs(e2).max())


def _first_choice_scatter(source, operand, window, select):
    """Pooling gradient by a loop: each tiled window sends its cotangent to its first
    maximal (minimal) element in row-major order; positions no window reaches get zero."""
    out = np.zeros(operand.shape, source.dtype)
    for pos in np.ndindex(*source.shape):
        sl = tuple(slice(p * w, (p + 1) * w) for p, w in zip(pos, window))
        block = operand[sl]
        k = int(np.argmax(block) if select == "max" else np.argmin(block))
        idx = tuple(s.start + i for s, i in zip(sl, np.unravel_index(k, block.shape)))
        out[idx] = source[pos]
    return out


POOL_CASES = [
    ((2, 6, 8, 3), (1, 2, 2, 1)),
    ((2, 7, 5, 3), (1, 2, 2, 1)),     # ragged: the last row/column belongs to no window
    ((9,), (3,)),
    ((4, 6, 6), (2, 3, 2)),
    ((3, 4), (1, 1)),
]


@pytest.mark.parametrize("shape,window", POOL_CASES)
@pytest.mark.parametrize("select", ["max", "min"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_tiled_pool_gradient_matches_general_path(shape, window, select, dtype, monkeypatch,
                                                  backend):
    # Few distinct values: many ties, which must go to the first element of the window.
    operand = rng.integers(-2, 3, shape).astype(dtype)
    out_shape = tuple(d // w for d, w in zip(shape, window))
    source = rng.standard_normal(out_shape).astype(dtype) if dtype != np.int32 else \
        rng.integers(-9, 9, out_shape).astype(dtype)
    if dtype != np.int32 and source.size > 2:
        source.flat[0], source.flat[1] = np.nan, -np.inf   # kept bit-exactly, never leaked
    params = dict(select=select, window_dimensions=window, window_strides=window,
                  padding=((0, 0),) * len(shape), base_dilation=(1,) * len(shape),
                  window_dilation=(1,) * len(shape))
    expect = _first_choice_scatter(source, operand, window, select)
    # The primitive as the back end runs it (eagerly: the impl with its fast path).
    got = backend(lambda s, o: _win_mod.select_and_scatter_add_p.bind(s, o, **params))(
        source, operand)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expect)
    if backend.is_jit:
        return  # the rest compares the impl's two code paths, which only eager mode runs
    scatter = _win_mod.select_and_scatter_add_p.impl
    fast = scatter(source, operand, **params)
    monkeypatch.setattr(_win_mod, "_TILED_FAST_PATH", False)
    general = scatter(source, operand, **params)
    assert fast.dtype == general.dtype == dtype
    np.testing.assert_array_equal(fast, expect)
    np.testing.assert_array_equal(general, expect)
    # A transposed (non-contiguous) cotangent, as a convolution hands it over.
    if source.ndim > 1:
        monkeypatch.setattr(_win_mod, "_TILED_FAST_PATH", True)
        src_t = np.ascontiguousarray(np.swapaxes(source, 0, 1)).swapaxes(0, 1)
        np.testing.assert_array_equal(scatter(src_t, operand, **params), expect)
