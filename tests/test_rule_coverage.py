"""Every primitive has an impl, an abstract eval, a JVP rule and a batching rule; every linear
primitive the AD issue names has a transpose rule."""
import gc

import pytest

import functrax  # noqa: F401  (registers every primitive)
import functrax.custom_derivatives  # noqa: F401
import functrax.remat  # noqa: F401
from functrax import lax
from functrax.core import Primitive
from functrax.interpreters import batching
from functrax.interpreters import jvp as ad
from functrax.interpreters.transpose import transpose_rules

# Primitives without array operands can never carry a batch dimension.
NO_OPERANDS = {"iota"}


def all_primitives():
    return sorted({p for p in gc.get_objects() if isinstance(p, Primitive)}, key=lambda p: p.name)


def test_there_are_many_primitives():
    assert len(all_primitives()) > 100


@pytest.mark.parametrize("prim", all_primitives(), ids=lambda p: p.name)
def test_primitive_has_every_rule(prim):
    assert prim.impl is not None, f"{prim} has no impl"
    assert prim.abstract_eval is not None, f"{prim} has no abstract eval"
    assert prim in ad.jvp_rules, f"{prim} has no JVP rule"
    if prim.name not in NO_OPERANDS:
        assert prim in batching.batching_rules or prim in batching.axis_batching_rules, \
            f"{prim} has no batching rule"


LINEAR = [lax.add_p, lax.sub_p, lax.neg_p, lax.mul_p, lax.dot_general_p,
          lax.conv_general_dilated_p, lax.broadcast_in_dim_p, lax.reshape_p, lax.transpose_p,
          lax.squeeze_p, lax.rev_p, lax.concatenate_p, lax.pad_p, lax.slice_p,
          lax.dynamic_slice_p, lax.dynamic_update_slice_p, lax.gather_p, lax.scatter_add_p,
          lax.reduce_sum_p, lax.cumsum_p, lax.select_n_p, lax.convert_element_type_p,
          lax.reduce_window_sum_p, lax.div_p, lax.psum_p, lax.all_gather_p]


@pytest.mark.parametrize("prim", LINEAR, ids=lambda p: p.name)
def test_linear_primitive_has_transpose(prim):
    assert prim in transpose_rules
