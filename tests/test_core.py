"""The core: tracing, the printed IR, typecheck, eager results, errors at the user's line."""
import numpy as np
import pytest

import functrax as ft
import functrax.numpy as fnp
from functrax import core, lax


def test_make_jaxpr_prints_one_equation_per_line():
    closed = ft.make_jaxpr(lambda x, y: fnp.sin(x) * y + 1.0)(np.ones((3, 4)), np.ones(4))
    text = str(closed)
    assert text.splitlines()[0] == "{ lambda ; a:f64[3,4] b:f64[4]. let"
    assert "c:f64[3,4] = sin a" in text
    assert "d:f64[3,4] = mul c b" in text
    assert "e:f64[3,4] = add d 1.0:f64[]" in text
    assert text.rstrip().endswith("in (e,) }")
    ft.typecheck_jaxpr(closed)


def test_make_jaxpr_shows_params_and_static_argnums():
    closed = ft.make_jaxpr(lambda x, n: lax.reduce_sum(x, axes=(n,)), static_argnums=1)(
        np.ones((2, 3)), 1)
    assert "reduce_sum[axes=(1,)]" in str(closed)
    assert closed.out_avals[0].shape == (2,)


def test_make_jaxpr_of_grad_is_readable_and_typechecks():
    closed = ft.make_jaxpr(ft.grad(lambda x: fnp.sum(fnp.tanh(x))))(np.ones(3))
    ft.typecheck_jaxpr(closed)
    assert "tanh" in str(closed)
    out, = core.eval_jaxpr(closed.jaxpr, closed.consts, np.full(3, 0.5))
    np.testing.assert_allclose(out, 1 - np.tanh(0.5) ** 2)


def test_eval_jaxpr_matches_eager():
    def f(x):
        return fnp.max(fnp.exp(x) - x * 2.0) + fnp.sum(x)
    x = np.linspace(-1, 1, 7)
    closed = ft.make_jaxpr(f)(x)
    np.testing.assert_allclose(core.eval_jaxpr(closed.jaxpr, closed.consts, x)[0], f(x))


def test_closed_over_arrays_become_consts():
    w = np.arange(3.0)
    closed = ft.make_jaxpr(lambda x: x * w)(np.ones(3))
    assert len(closed.consts) == 1
    assert closed.jaxpr.constvars[0].aval.shape == (3,)
    np.testing.assert_allclose(closed(np.ones(3))[0], w)


def test_typecheck_rejects_a_wrong_binder():
    closed = ft.make_jaxpr(lambda x: fnp.sin(x))(np.ones(3))
    eqn = closed.jaxpr.eqns[0]
    bad_var = core.Var(core.ShapedArray((4,), np.float64))
    bad = core.Jaxpr([], closed.jaxpr.invars, [bad_var], [eqn._replace(outvars=[bad_var])])
    with pytest.raises(core.JaxprTypeError, match="sin"):
        ft.typecheck_jaxpr(bad)


def test_typecheck_rejects_use_before_definition():
    closed = ft.make_jaxpr(lambda x: fnp.cos(fnp.sin(x)))(np.ones(3))
    j = closed.jaxpr
    swapped = core.Jaxpr([], j.invars, j.outvars, list(reversed(j.eqns)))
    with pytest.raises(core.JaxprTypeError, match="before it is defined"):
        ft.typecheck_jaxpr(swapped)


def test_eager_results_are_numpy_arrays_with_jax_extras():
    x = fnp.zeros(5)
    assert isinstance(x, np.ndarray) and isinstance(x, ft.Array)
    y = x.at[2].set(7.0)
    assert y.tolist() == [0, 0, 7, 0, 0]
    assert x.tolist() == [0] * 5, "the original must not change"
    assert x.block_until_ready() is x
    assert x.device.platform == "cpu"
    s = fnp.sin(np.float64(0.5))
    assert isinstance(s, ft.Array) and s.shape == ()


def test_dtypes_follow_numpy_nep50():
    f32 = np.ones(3, np.float32)
    assert fnp.multiply(f32, 2.0).dtype == np.float32
    assert fnp.add(np.ones(3, np.int32), 2.5).dtype == np.float64
    assert fnp.add(np.ones(3, np.int32), np.ones(3, np.float32)).dtype == np.float64
    assert fnp.zeros(2).dtype == np.float64
    closed = ft.make_jaxpr(lambda x: x * 2.0)(f32)
    assert closed.out_avals[0].dtype == np.float32


def test_numpy_array_on_the_left_hands_over_to_the_tracer():
    w = np.ones((2, 3))
    c = np.full(3, 2.0)

    def f(x):
        return fnp.sum(c * x) + fnp.sum(w + x)

    closed = ft.make_jaxpr(f)(np.ones(3))
    assert closed.out_avals[0].shape == ()
    np.testing.assert_allclose(ft.grad(f)(np.ones(3)), np.full(3, 2.0 + 2.0))


def test_tracer_operators_and_methods():
    def f(x):
        y = (x + 1) * 2 - x / 4 ** 1
        z = -y + abs(x) - (1 - x)
        return (z ** 2).sum() + x.T.sum() + x.reshape(-1).sum() + x.astype(np.float32).sum() \
            + (x > 0).astype(np.float64).sum() + x.ndim + x.shape[0] + x.size

    x = np.arange(6.0).reshape(2, 3) - 2
    closed = ft.make_jaxpr(f)(x)
    np.testing.assert_allclose(core.eval_jaxpr(closed.jaxpr, closed.consts, x)[0], f(x))


def test_shape_error_names_the_op_shapes_and_user_line():
    with pytest.raises(TypeError) as err:
        ft.make_jaxpr(lambda x, y: x + y)(np.ones(3), np.ones(4))
    msg = str(err.value)
    assert "add" in msg and "(3,)" in msg and "(4,)" in msg
    assert "test_core.py" in msg


def test_eager_shape_error_names_the_user_line():
    with pytest.raises(TypeError) as err:
        lax.add(np.ones(3), np.ones(4))
    assert "add: shapes (3,) and (4,) do not broadcast" in str(err.value)
    assert "test_core.py" in str(err.value)


def test_dtype_error_for_transcendental_on_ints():
    with pytest.raises(TypeError, match="sin.*floating"):
        lax.sin(np.arange(3))


def test_concretization_error_explains_the_fix():
    def f(x):
        if x > 0:
            return x
        return -x

    with pytest.raises(core.ConcretizationTypeError) as err:
        ft.make_jaxpr(f)(1.0)
    msg = str(err.value)
    assert "lax.cond" in msg and "static_argnums" in msg and "test_core.py" in msg
    with pytest.raises(core.ConcretizationTypeError, match="vmap"):
        ft.vmap(f)(np.ones(3))


def test_python_control_flow_follows_concrete_values_under_grad():
    def f(x):
        if x > 0:
            return x ** 2
        return -x

    assert ft.grad(f)(3.0) == 6.0
    assert ft.grad(f)(-3.0) == -1.0


def test_escaped_tracer_is_reported():
    leaked = []

    def f(x):
        leaked.append(x)
        return x

    ft.make_jaxpr(f)(1.0)
    with pytest.raises(core.UnexpectedTracerError, match="escaped"):
        ft.grad(lambda y: leaked[0] * y)(2.0)


def test_source_location_is_kept_on_equations():
    closed = ft.make_jaxpr(lambda x: fnp.sin(x))(1.0)
    info = closed.jaxpr.eqns[0].source_info
    assert info is not None and info.filename.endswith("test_core.py")


def test_eval_shape():
    out = ft.eval_shape(lambda x: {"s": fnp.sum(x, axis=0), "t": fnp.tanh(x)},
                        np.ones((4, 3), np.float32))
    assert out["s"].shape == (3,) and out["s"].dtype == np.float32
    assert out["t"].shape == (4, 3)
