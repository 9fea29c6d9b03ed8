"""vmap's API: in_axes/out_axes (ints, None, negative, pytree prefixes), nesting, keyword
arguments, chunk_size, axis_name collectives, per-example gradients, and its errors.

Numerical tests take the ``backend`` fixture (tests/conftest.py): each vmapped function runs
eagerly and under ``jit`` on every back end, against per-example loops run eagerly."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import functrax as ft
import functrax.numpy as fnp
from functrax import lax


def loop_map(f, xs, axis=0):
    return np.stack([np.asarray(f(np.take(xs, i, axis=axis))) for i in range(xs.shape[axis])])


@given(st.integers(0, 2), st.integers(-1, 2), st.integers(1, 4))
def test_in_axes_and_out_axes(backend, in_axis, out_axis, size):
    rng = np.random.default_rng(in_axis * 10 + size)
    shape = [2, 3]
    shape.insert(in_axis, size)
    xs = rng.standard_normal(shape)

    def f(x):
        return fnp.sin(x) * 2.0 + fnp.sum(x, axis=0)

    expected = np.moveaxis(loop_map(f, xs, axis=in_axis), 0, out_axis)
    got = backend(ft.vmap(f, in_axes=in_axis, out_axes=out_axis))(xs)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    ft.typecheck_jaxpr(ft.make_jaxpr(ft.vmap(f, in_axes=in_axis, out_axes=out_axis))(xs))


def test_negative_in_axes_and_none(backend):
    xs = np.arange(12.0).reshape(3, 4)
    y = np.arange(3.0)
    got = backend(ft.vmap(lambda x, y: x * y, in_axes=(-1, None)))(xs, y)
    np.testing.assert_allclose(got, (xs * y[:, None]).T)


def test_pytree_in_axes_prefix_and_kwargs(backend):
    params = {"w": np.ones(3), "b": np.float64(2.0)}
    xs = np.arange(12.0).reshape(4, 3)

    def f(p, x, scale=1.0):
        return (fnp.sum(p["w"] * x) + p["b"]) * scale

    got = backend(ft.vmap(f, in_axes=({"w": None, "b": None}, 0)))(params, xs)
    np.testing.assert_allclose(got, xs.sum(1) + 2)
    got_kw = backend(ft.vmap(f, in_axes=(None, 0)))(params, xs, scale=np.full(4, 2.0))
    np.testing.assert_allclose(got_kw, 2 * (xs.sum(1) + 2))


def test_out_axes_none_for_unbatched_outputs(backend):
    got = backend(ft.vmap(lambda x: (x * 2, 3.0), out_axes=(0, None)))(np.ones(4))
    np.testing.assert_array_equal(got[0], np.full(4, 2.0))
    assert got[1] == 3.0


def test_out_axes_none_of_batched_output_is_an_error():
    with pytest.raises(ValueError, match="out_axes=None"):
        ft.vmap(lambda x: x, out_axes=None)(np.ones(4))


def test_nested_vmap_matches_loops(backend):
    xs = np.random.default_rng(0).standard_normal((3, 4, 5))
    f = backend(ft.vmap(ft.vmap(lambda v: fnp.sum(fnp.exp(v)))))
    np.testing.assert_allclose(f(xs), np.exp(xs).sum(-1))
    g = backend(ft.vmap(ft.vmap(lambda a, b: a * b, in_axes=(0, None)), in_axes=(None, 0)))
    a, b = np.arange(3.0), np.arange(4.0)
    np.testing.assert_allclose(g(a, b), b[:, None] * a[None, :])


@given(st.integers(1, 7), st.integers(1, 9))
def test_chunk_size_gives_the_same_result(backend, chunk, size):
    xs = np.random.default_rng(size).standard_normal((size, 3))

    def f(x):
        return {"s": fnp.sum(x ** 2), "v": fnp.tanh(x)}

    full = backend(ft.vmap(f))(xs)
    chunked = backend(ft.vmap(f, chunk_size=chunk))(xs)
    np.testing.assert_array_equal(full["s"], chunked["s"])
    np.testing.assert_array_equal(full["v"], chunked["v"])


def test_vmap_of_grad_is_per_example_gradients(backend):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(3)
    xs, ys = rng.standard_normal((5, 3)), rng.standard_normal(5)

    def loss(w, x, y):
        return (fnp.sum(fnp.tanh(w * x)) - y) ** 2

    got = backend(ft.vmap(ft.grad(loss), in_axes=(None, 0, 0)))(w, xs, ys)
    expected = np.stack([ft.grad(loss)(w, x, y) for x, y in zip(xs, ys)])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    ft.typecheck_jaxpr(ft.make_jaxpr(ft.vmap(ft.grad(loss), in_axes=(None, 0, 0)))(w, xs, ys))


def test_grad_of_vmap(backend):
    xs = np.linspace(-1, 1, 4)
    g = backend(ft.grad(lambda x: fnp.sum(ft.vmap(fnp.sin)(x))))(xs)
    np.testing.assert_allclose(g, np.cos(xs))


def test_collectives_against_numpy(backend):
    x = np.array([1.0, 3.0, 4.0, -2.0])
    vm = lambda f: backend(ft.vmap(f, axis_name="i"))  # noqa: E731
    np.testing.assert_allclose(vm(lambda v: lax.psum(v, "i"))(x), np.full(4, x.sum()))
    np.testing.assert_allclose(vm(lambda v: lax.pmean(v, "i"))(x), np.full(4, x.mean()))
    np.testing.assert_allclose(vm(lambda v: lax.pmax(v, "i"))(x), np.full(4, x.max()))
    np.testing.assert_allclose(vm(lambda v: lax.pmin(v, "i"))(x), np.full(4, x.min()))
    np.testing.assert_allclose(vm(lambda v: lax.all_gather(v, "i"))(x), np.tile(x, (4, 1)))
    np.testing.assert_array_equal(vm(lambda v: lax.axis_index("i"))(x), np.arange(4))
    np.testing.assert_allclose(vm(lambda v: v - lax.pmean(v, "i"))(x), x - x.mean())


def test_collectives_over_two_named_axes(backend):
    x = np.arange(6.0).reshape(2, 3)
    inner = ft.vmap(lambda v: lax.psum(v, ("i", "j")), axis_name="j")
    np.testing.assert_allclose(backend(ft.vmap(inner, axis_name="i"))(x),
                               np.full((2, 3), x.sum()))
    only_outer = backend(ft.vmap(ft.vmap(lambda v: lax.psum(v, "i"), axis_name="j"),
                                 axis_name="i"))
    np.testing.assert_allclose(only_outer(x), np.tile(x.sum(0), (2, 1)))


def test_gradient_through_psum_matches_jax_semantics(backend):
    # psum's transpose is psum: the gradient is that of the sum over members.
    x = np.array([1.0, 2.0, 5.0])
    g = backend(ft.vmap(ft.grad(lambda v: v * lax.psum(v, "i")), axis_name="i"))(x)
    np.testing.assert_allclose(g, x.sum() + x.sum())


def test_unbound_axis_name():
    with pytest.raises(NameError, match="unbound axis name 'k'"):
        ft.vmap(lambda v: lax.psum(v, "k"), axis_name="i")(np.ones(2))


def test_inconsistent_sizes_list_each_argument():
    with pytest.raises(ValueError) as err:
        ft.vmap(lambda a, b: a + b)(np.ones(3), {"x": np.ones(4)})
    msg = str(err.value)
    assert "inconsistent sizes" in msg and "3" in msg and "4" in msg and "'x'" in msg


def test_in_axes_errors():
    with pytest.raises(ValueError, match="in_axes has 1 entries"):
        ft.vmap(lambda a, b: a, in_axes=(0,))(np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="out of range"):
        ft.vmap(lambda a: a, in_axes=2)(np.ones((2, 2)))
    with pytest.raises(ValueError, match="scalar"):
        ft.vmap(lambda a: a)(1.0)
    with pytest.raises(ValueError, match="does not match"):
        ft.vmap(lambda p: p["a"], in_axes=({"b": 0},))({"a": np.ones(2)})
