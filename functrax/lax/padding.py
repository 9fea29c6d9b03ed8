"""pad: low, high and interior (negative low/high crop), as lax.pad.

>>> import numpy as np
>>> from functrax import lax
>>> lax.pad(np.array([1.0, 2.0]), 0.0, [(1, 0, 1)]).tolist()
[0.0, 1.0, 0.0, 2.0]
"""
from __future__ import annotations

import numpy as np

from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules
from ._util import array_namespace

__all__ = ["pad", "pad_p"]


def _pad_impl(x, padding_value, *, padding_config):
    xp = array_namespace(x)
    x = xp.asarray(x)
    # Apply the non-negative part of low/high and the interior padding, then crop the
    # negative part of low/high.
    grown = [max(lo, 0) + d + max(d - 1, 0) * i + max(hi, 0)
             for d, (lo, hi, i) in zip(x.shape, padding_config)]
    out = xp.full(grown, padding_value, dtype=x.dtype)
    out[_interior_index(x.shape, padding_config)] = x
    crop = tuple(slice(max(-lo, 0), g - max(-hi, 0))
                 for g, (lo, hi, _) in zip(grown, padding_config))
    return out[crop]


def _interior_index(shape, padding_config):
    """Where the operand's elements sit in the grown (uncropped) padded array."""
    return tuple(slice(max(lo, 0), max(lo, 0) + max(d - 1, 0) * (i + 1) + (d > 0), i + 1)
                 for d, (lo, _, i) in zip(shape, padding_config))


def _pad_shape(shape, padding_config):
    return tuple(lo + hi + d + max(d - 1, 0) * i for d, (lo, hi, i) in zip(shape, padding_config))


def _pad_abstract_eval(x, padding_value, *, padding_config):
    if len(padding_config) != x.ndim:
        raise TypeError(f"pad: padding_config needs one (low, high, interior) triple per dim of "
                        f"{x.str_short()}, got {len(padding_config)}")
    if padding_value.shape != ():
        raise TypeError(f"pad: padding_value must be a scalar, got {padding_value.str_short()}")
    if padding_value.dtype != x.dtype:
        raise TypeError(f"pad: padding_value dtype {padding_value.dtype.name} differs from the "
                        f"operand dtype {x.dtype.name}")
    if any(i < 0 for _, _, i in padding_config):
        raise ValueError(f"pad: interior padding must be non-negative, got {padding_config}")
    shape = _pad_shape(x.shape, padding_config)
    if any(d < 0 for d in shape):
        raise ValueError(f"pad: negative padding {padding_config} removes more than the shape "
                         f"{x.shape} holds")
    return ShapedArray(shape, x.dtype, x.weak_type)


pad_p = Primitive("pad")
pad_p.def_impl(_pad_impl)
pad_p.def_abstract_eval(_pad_abstract_eval)


def pad(x, padding_value, padding_config):
    """Pad x with a scalar: per dim (low, high, interior); negative low/high crop."""
    config = tuple((int(lo), int(hi), int(i)) for lo, hi, i in padding_config)
    x_aval, v_aval = get_aval(x), get_aval(padding_value)
    if v_aval.dtype != x_aval.dtype and v_aval.shape == ():
        # A Python scalar (or another dtype) pads in the operand's dtype, so the padding
        # value's tangent and cotangent have the operand's type too.
        from .structural import convert_element_type
        padding_value = convert_element_type(padding_value, x_aval.dtype)
    return pad_p.bind(x, padding_value, padding_config=config)


def _pad_jvp(primals, tangents, *, padding_config):
    (x, v), (tx, tv) = primals, tangents
    ans = pad_p.bind(x, v, padding_config=padding_config)
    if ad.is_zero(tx) and ad.is_zero(tv):
        return ans, Zero.from_value(ans)
    tx = ad.instantiate_zeros(tx) if not ad.is_zero(tx) else ad.zeros_like_value(x)
    tv = ad.instantiate_zeros(tv) if not ad.is_zero(tv) else ad.zeros_like_value(v)
    return ans, pad_p.bind(tx, tv, padding_config=padding_config)


ad.jvp_rules[pad_p] = _pad_jvp


def _pad_transpose(ct, x, v, *, padding_config):
    from .elementwise import sub
    from .reductions import reduce_sum
    from .slicing import slice as lax_slice
    from .structural import full
    x_aval = x.aval if is_undefined_primal(x) else get_aval(x)
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x_aval)) if is_undefined_primal(x) else None,
                Zero(ad.tangent_aval(v.aval)) if is_undefined_primal(v) else None]
    # Restore the cropped edges with zeros, then read the operand's positions back out.
    regrow = tuple((max(-lo, 0), max(-hi, 0), 0) for lo, hi, _ in padding_config)
    grown = pad(ct, full((), 0, get_aval(ct).dtype), regrow) \
        if any(lo or hi for lo, hi, _ in regrow) else ct
    idx = _interior_index(x_aval.shape, padding_config)
    ct_x = lax_slice(grown, [s.start for s in idx], [s.stop for s in idx],
                     [s.step for s in idx])
    ct_v = sub(reduce_sum(ct), reduce_sum(ct_x)) if is_undefined_primal(v) else None
    return [ct_x if is_undefined_primal(x) else None, ct_v]


transpose_rules[pad_p] = _pad_transpose


def _pad_batch(vals, dims, *, padding_config):
    (x, v), (dx, dv) = vals, dims
    if dv is not None:
        # A batched padding value: pad with zeros and fill the padding by a select.
        from .elementwise import select_n
        from .structural import full, broadcast_in_dim
        size = get_aval(v).shape[dv]
        x = batching.bdim_at_front(x, dx, size)
        cfg = ((0, 0, 0),) + tuple(padding_config)
        padded = pad_p.bind(x, full((), 0, get_aval(x).dtype), padding_config=cfg)
        mask = pad_p.bind(full(get_aval(x).shape, True, np.bool_), False, padding_config=cfg)
        vb = broadcast_in_dim(batching.moveaxis(v, dv, 0), get_aval(padded).shape, (0,))
        return select_n(mask, vb, padded), 0
    cfg = list(padding_config)
    cfg.insert(dx, (0, 0, 0))
    return pad_p.bind(x, v, padding_config=tuple(cfg)), dx


batching.batching_rules[pad_p] = _pad_batch
