"""Errors of the transformation API: each a TypeError or ValueError saying what was received
and what was expected; errors raised by a primitive point at the user's line."""
import numpy as np
import pytest

import functrax as ft
import functrax.numpy as fnp

THIS_FILE = "test_api_errors.py"


# --- grad: the output must be a real scalar ---------------------------------------------------


def test_grad_of_non_scalar_output():
    with pytest.raises(TypeError, match=r"scalar output.*shape \(3,\).*f64\[3\]") as e:
        ft.grad(lambda x: x * 2.0)(np.ones(3))
    assert "jacrev" in str(e.value) or "vjp" in str(e.value)  # says what to do instead


def test_grad_of_tuple_output_suggests_has_aux():
    with pytest.raises(TypeError, match="must return a scalar, got a tuple.*has_aux=True"):
        ft.grad(lambda x: (x, x))(1.0)


def test_grad_of_integer_output():
    with pytest.raises(TypeError, match="real floating-point output, got int64"):
        ft.grad(lambda x: fnp.sum(x > 0))(np.ones(3))


def test_value_and_grad_of_non_scalar_output():
    with pytest.raises(TypeError, match=r"scalar output.*\(2, 2\)"):
        ft.value_and_grad(lambda x: x)(np.ones((2, 2)))


def test_grad_has_aux_without_a_pair():
    with pytest.raises(TypeError, match="has_aux=True.*pair"):
        ft.grad(lambda x: x, has_aux=True)(1.0)


# --- grad: inputs must be floating point ------------------------------------------------------


def test_grad_with_respect_to_an_integer_input():
    with pytest.raises(TypeError, match="argument 0 has dtype int64") as e:
        ft.grad(lambda x: x * 2.0)(3)
    assert "float" in str(e.value)  # what is expected
    with pytest.raises(TypeError, match="argument 1 has dtype int32"):
        ft.grad(lambda x, n: x * n, argnums=(0, 1))(1.0, np.int32(2))


def test_jacobians_with_respect_to_integer_inputs():
    with pytest.raises(TypeError, match="floating-point inputs, got int64"):
        ft.jacfwd(lambda x: x)(np.arange(3))
    with pytest.raises(TypeError, match="floating-point inputs, got int64"):
        ft.jacrev(lambda x: x * 1.0)(np.arange(3))


def test_integer_inputs_outside_argnums_are_fine():
    np.testing.assert_allclose(ft.grad(lambda x, n: x ** n)(2.0, 3), 12.0)


# --- argnums ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", [ft.grad, ft.value_and_grad, ft.jacfwd, ft.jacrev,
                                       ft.hessian])
@pytest.mark.parametrize("argnums", [2, -3, (0, 5)])
def test_argnums_out_of_range(transform, argnums):
    with pytest.raises(ValueError, match=r"argnums .* out of range .* 2 positional") as e:
        transform(lambda x, y: fnp.sum(x * y), argnums=argnums)(1.0, 2.0)
    assert str(argnums) in str(e.value)


def test_argnums_of_wrong_type():
    with pytest.raises(TypeError, match="argnums must be ints"):
        ft.grad(lambda x: x, argnums="0")(1.0)


# --- jvp / linearize / vjp: tangents and cotangents must match -------------------------------


def test_jvp_tangent_with_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(2,\) but its primal has shape \(3,\)"):
        ft.jvp(fnp.sin, (np.ones(3),), (np.ones(2),))


def test_jvp_tangent_with_wrong_dtype():
    with pytest.raises(TypeError, match="dtype float32 .* tangent dtype float64"):
        ft.jvp(fnp.sin, (np.ones(3),), (np.ones(3, np.float32),))
    with pytest.raises(TypeError, match="float0"):
        ft.jvp(lambda x, n: x * n, (1.0, np.int64(2)), (1.0, np.ones((), np.float64)))


def test_jvp_structures_must_match():
    with pytest.raises(ValueError, match="structures differ"):
        ft.jvp(lambda a, b: a * b, (1.0, 2.0), (1.0,))
    with pytest.raises(TypeError, match="tuples or lists"):
        ft.jvp(fnp.sin, 1.0, 1.0)


def test_linearize_tangent_with_wrong_shape():
    _, f_jvp = ft.linearize(fnp.sin, np.ones(3))
    with pytest.raises(ValueError, match=r"shape \(2,\) but its primal has shape \(3,\)"):
        f_jvp(np.ones(2))


def test_vjp_cotangent_with_wrong_shape_or_structure():
    _, vjp_fn = ft.vjp(fnp.sin, np.ones(3))
    with pytest.raises(ValueError, match=r"shape \(2,\), expected the output's shape \(3,\)"):
        vjp_fn(np.ones(2))
    with pytest.raises(ValueError, match="structure"):
        vjp_fn((np.ones(3), np.ones(3)))


# --- vmap: batch sizes and in_axes ------------------------------------------------------------


def test_vmap_inconsistent_batch_sizes_lists_each_argument():
    with pytest.raises(ValueError, match="inconsistent sizes") as e:
        ft.vmap(lambda a, b: a + b["w"])(np.ones(3), {"w": np.ones(4)})
    msg = str(e.value)
    assert "size 3" in msg and "size 4" in msg
    assert "['w']" in msg  # the path of the offending leaf


def test_vmap_in_axes_not_matching_the_structure():
    with pytest.raises(ValueError, match="in_axes .* does not match the structure"):
        ft.vmap(lambda a, b: a + b, in_axes=(0, (0, 1)))(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="in_axes has 1 entries .* 2 positional"):
        ft.vmap(lambda a, b: a, in_axes=(0,))(np.ones(3), np.ones(3))
    with pytest.raises(TypeError, match="in_axes"):
        ft.vmap(lambda a: a, in_axes="0")


def test_vmap_in_axes_not_matching_the_rank():
    with pytest.raises(ValueError, match=r"in_axes=2 .* shape \(3, 4\)"):
        ft.vmap(lambda a: a, in_axes=2)(np.ones((3, 4)))
    with pytest.raises(ValueError, match="scalar"):
        ft.vmap(lambda a: a)(1.0)


def test_vmap_without_mapped_arguments():
    with pytest.raises(ValueError, match="axis_size"):
        ft.vmap(lambda a: a, in_axes=None)(np.ones(3))


# --- errors raised by primitives point at the user's line -------------------------------------


def test_primitive_error_under_grad_names_shapes_and_user_line():
    with pytest.raises(TypeError, match=r"add: shapes \(3,\) and \(4,\)") as e:
        ft.grad(lambda x: fnp.sum(x + np.ones(4)))(np.ones(3))
    assert THIS_FILE in str(e.value)


def test_primitive_error_under_vmap_and_jvp_names_user_line():
    with pytest.raises(TypeError, match="add") as e:
        ft.vmap(lambda x: x + np.ones(4))(np.ones((2, 3)))
    assert THIS_FILE in str(e.value)
    with pytest.raises(TypeError, match="add") as e:
        ft.jvp(lambda x: x + np.ones(4), (np.ones(3),), (np.ones(3),))
    assert THIS_FILE in str(e.value)
    with pytest.raises(TypeError, match=r"floating-point") as e:
        ft.grad(lambda x: fnp.sum(ft.lax.sin(np.arange(3)) * x))(1.0)
    assert THIS_FILE in str(e.value)


def test_branch_on_traced_value_under_vmap_explains_the_fix():
    with pytest.raises(TypeError, match="lax.cond") as e:
        ft.vmap(lambda x: x if x > 0 else -x)(np.ones(3))
    assert THIS_FILE in str(e.value)
    assert "vmap" in str(e.value)
