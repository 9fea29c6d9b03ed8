"""Structural primitives: dtype conversion, broadcasting, reshaping, transposition,
squeezing, reversal and concatenation, and the array constructors built on them.

>>> from functrax import lax
>>> lax.broadcast_in_dim(lax.iota('int64', 3), (2, 3), (1,)).tolist()
[[0, 1, 2], [0, 1, 2]]
>>> lax.concatenate([lax.iota('int64', 2), lax.rev(lax.iota('int64', 3), (0,))], 0).tolist()
[0, 1, 2, 1, 0]
"""
from __future__ import annotations

import numpy as np

from .. import core, dtypes
from ..core import Primitive, ShapedArray, get_aval
from ..interpreters import batching
from ..interpreters import jvp as ad
from ..interpreters.jvp import Zero
from ..interpreters.transpose import is_undefined_primal, transpose_rules
from ._util import array_namespace, check_axes

__all__ = ["convert_element_type", "convert_element_type_p", "broadcast_in_dim",
           "broadcast_in_dim_p", "broadcast_to", "broadcast", "reshape", "reshape_p",
           "transpose", "transpose_p", "squeeze", "squeeze_p", "expand_dims", "rev", "rev_p",
           "concatenate", "concatenate_p", "iota", "iota_p", "broadcasted_iota", "full",
           "full_like", "zeros_like"]

# ---------------------------------------------------------------------------------------------
# convert_element_type


def _convert_element_type_impl(x, *, new_dtype, weak_type):
    xp = array_namespace(x)
    x = xp.asarray(x)
    if x.dtype == new_dtype:
        return x
    if dtypes.is_inexact(x.dtype) and not dtypes.is_inexact(new_dtype) and \
            not dtypes.is_bool(new_dtype):
        # numpy's float->int cast is undefined for NaN/inf; truncate as C and JAX do.
        x = xp.trunc(x)
    return x.astype(new_dtype)


def _convert_element_type_abstract_eval(x, *, new_dtype, weak_type):
    return ShapedArray(x.shape, new_dtype, weak_type)


convert_element_type_p = Primitive("convert_element_type")
convert_element_type_p.def_impl(_convert_element_type_impl)
convert_element_type_p.def_abstract_eval(_convert_element_type_abstract_eval)


def convert_element_type(x, new_dtype, weak_type=False):
    """Cast x to ``new_dtype``. Floats cast to integers truncate toward zero."""
    new_dtype = dtypes.canonicalize(new_dtype)
    if not isinstance(x, core.Tracer):
        aval = get_aval(x)
        if aval.dtype == new_dtype and aval.weak_type == weak_type and \
                type(x) is not float and type(x) is not int and type(x) is not complex:
            return x
    return convert_element_type_p.bind(x, new_dtype=new_dtype, weak_type=bool(weak_type))


def _convert_element_type_jvp(primals, tangents, *, new_dtype, weak_type):
    (x,), (t,) = primals, tangents
    ans = convert_element_type_p.bind(x, new_dtype=new_dtype, weak_type=weak_type)
    if ad.is_zero(t) or not dtypes.is_inexact(new_dtype) or \
            not dtypes.is_inexact(get_aval(x).dtype):
        return ans, Zero.from_value(ans)
    return ans, convert_element_type_p.bind(t, new_dtype=new_dtype, weak_type=weak_type)


ad.jvp_rules[convert_element_type_p] = _convert_element_type_jvp


def _convert_element_type_transpose(ct, x, *, new_dtype, weak_type):
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    return [convert_element_type_p.bind(ct, new_dtype=x.aval.dtype, weak_type=x.aval.weak_type)]


transpose_rules[convert_element_type_p] = _convert_element_type_transpose
batching.defvectorized(convert_element_type_p)


# ---------------------------------------------------------------------------------------------
# broadcast_in_dim


def _broadcast_in_dim_impl(x, *, shape, broadcast_dimensions):
    xp = array_namespace(x)
    x = xp.asarray(x)
    # Put the operand's dims in place (size-1 elsewhere), then let numpy broadcast.
    expanded = [1] * len(shape)
    for src, dst in enumerate(broadcast_dimensions):
        expanded[dst] = x.shape[src]
    return xp.broadcast_to(x.reshape(expanded), shape)


def _broadcast_in_dim_abstract_eval(x, *, shape, broadcast_dimensions):
    if len(broadcast_dimensions) != x.ndim:
        raise TypeError(f"broadcast_in_dim: operand of rank {x.ndim} ({x.str_short()}) needs "
                        f"{x.ndim} broadcast_dimensions, got {broadcast_dimensions}")
    if any(not 0 <= d < len(shape) for d in broadcast_dimensions) or \
            list(broadcast_dimensions) != sorted(set(broadcast_dimensions)):
        raise TypeError(f"broadcast_in_dim: broadcast_dimensions {broadcast_dimensions} must be "
                        f"strictly increasing and within the output rank {len(shape)}")
    for src, dst in enumerate(broadcast_dimensions):
        if x.shape[src] not in (1, shape[dst]):
            raise TypeError(f"broadcast_in_dim: operand shape {x.shape} cannot be broadcast to "
                            f"{shape} along dims {broadcast_dimensions}")
    return ShapedArray(shape, x.dtype, x.weak_type)


broadcast_in_dim_p = Primitive("broadcast_in_dim")
broadcast_in_dim_p.def_impl(_broadcast_in_dim_impl)
broadcast_in_dim_p.def_abstract_eval(_broadcast_in_dim_abstract_eval)


def broadcast_in_dim(x, shape, broadcast_dimensions):
    """Broadcast x to ``shape``; operand dim i becomes output dim broadcast_dimensions[i]."""
    shape = core.canonicalize_shape(shape, "broadcast_in_dim shape")
    broadcast_dimensions = tuple(int(d) for d in broadcast_dimensions)
    if get_aval(x).shape == shape and broadcast_dimensions == tuple(range(len(shape))):
        return x
    return broadcast_in_dim_p.bind(x, shape=shape, broadcast_dimensions=broadcast_dimensions)


def _broadcast_in_dim_transpose(ct, x, *, shape, broadcast_dimensions):
    from .reductions import reduce_sum
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    in_shape = x.aval.shape
    new_dims = tuple(i for i in range(len(shape)) if i not in broadcast_dimensions)
    expanded = tuple(dst for src, dst in enumerate(broadcast_dimensions)
                     if in_shape[src] == 1 and shape[dst] != 1)
    summed = reduce_sum(ct, axes=tuple(sorted(new_dims + expanded))) \
        if new_dims or expanded else ct
    return [reshape(summed, in_shape)]


ad.deflinear(broadcast_in_dim_p, _broadcast_in_dim_transpose)


def _broadcast_in_dim_batch(vals, dims, *, shape, broadcast_dimensions):
    (x,), (d,) = vals, dims
    x = batching.moveaxis(x, d, 0)
    size = get_aval(x).shape[0]
    return broadcast_in_dim_p.bind(x, shape=(size,) + tuple(shape),
                                   broadcast_dimensions=(0,) + tuple(
                                       b + 1 for b in broadcast_dimensions)), 0


batching.batching_rules[broadcast_in_dim_p] = _broadcast_in_dim_batch


def broadcast_to(x, shape):
    """numpy-style broadcast of x to ``shape`` (trailing dims aligned)."""
    shape = core.canonicalize_shape(shape)
    aval = get_aval(x)
    if aval.shape == shape:
        return x
    lead = len(shape) - aval.ndim
    if lead < 0:
        raise ValueError(f"broadcast_to: cannot broadcast shape {aval.shape} to {shape}")
    return broadcast_in_dim(x, shape, tuple(range(lead, len(shape))))


def broadcast(x, sizes):
    """Add leading dims of the given ``sizes`` (lax.broadcast)."""
    aval = get_aval(x)
    sizes = tuple(sizes)
    return broadcast_in_dim(x, sizes + aval.shape,
                            tuple(range(len(sizes), len(sizes) + aval.ndim)))


# ---------------------------------------------------------------------------------------------
# reshape


def _reshape_impl(x, *, new_sizes):
    return array_namespace(x).reshape(x, new_sizes)


def _reshape_abstract_eval(x, *, new_sizes):
    size = int(np.prod(new_sizes, dtype=np.int64))
    if size != x.size:
        raise TypeError(f"reshape: cannot reshape an array of shape {x.shape} ({x.size} "
                        f"elements) into shape {tuple(new_sizes)} ({size} elements)")
    return ShapedArray(new_sizes, x.dtype, x.weak_type)


reshape_p = Primitive("reshape")
reshape_p.def_impl(_reshape_impl)
reshape_p.def_abstract_eval(_reshape_abstract_eval)


def reshape(x, new_sizes, dimensions=None):
    """Row-major reshape; ``dimensions`` transposes first, as lax.reshape does."""
    new_sizes = core.canonicalize_shape(new_sizes, "reshape new_sizes")
    if dimensions is not None:
        x = transpose(x, dimensions)
    if get_aval(x).shape == new_sizes and (isinstance(x, core.Tracer) or
                                           not isinstance(x, (int, float, complex, bool))):
        return x
    return reshape_p.bind(x, new_sizes=new_sizes)


ad.deflinear(reshape_p, lambda ct, x, *, new_sizes: [
    Zero(ad.tangent_aval(x.aval)) if ad.is_zero(ct) else reshape_p.bind(
        ct, new_sizes=x.aval.shape)])


def _reshape_batch(vals, dims, *, new_sizes):
    (x,), (d,) = vals, dims
    x = batching.moveaxis(x, d, 0)
    return reshape_p.bind(x, new_sizes=(get_aval(x).shape[0],) + tuple(new_sizes)), 0


batching.batching_rules[reshape_p] = _reshape_batch


# ---------------------------------------------------------------------------------------------
# transpose


def _transpose_impl(x, *, permutation):
    return array_namespace(x).transpose(x, permutation)


def _transpose_abstract_eval(x, *, permutation):
    if sorted(permutation) != list(range(x.ndim)):
        raise TypeError(f"transpose: permutation {permutation} is not a permutation of the "
                        f"{x.ndim} axes of {x.str_short()}")
    return ShapedArray(tuple(x.shape[p] for p in permutation), x.dtype, x.weak_type)


transpose_p = Primitive("transpose")
transpose_p.def_impl(_transpose_impl)
transpose_p.def_abstract_eval(_transpose_abstract_eval)


def transpose(x, permutation):
    permutation = tuple(int(p) for p in permutation)
    if permutation == tuple(range(len(permutation))) and \
            not isinstance(x, (int, float, complex, bool)):
        return x
    return transpose_p.bind(x, permutation=permutation)


def _transpose_transpose(ct, x, *, permutation):
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(x.aval))]
    return [transpose_p.bind(ct, permutation=tuple(np.argsort(permutation).tolist()))]


ad.deflinear(transpose_p, _transpose_transpose)


def _transpose_batch(vals, dims, *, permutation):
    (x,), (d,) = vals, dims
    perm = (d,) + tuple(p + (p >= d) for p in permutation)
    return transpose_p.bind(x, permutation=perm), 0


batching.batching_rules[transpose_p] = _transpose_batch


# ---------------------------------------------------------------------------------------------
# squeeze and expand_dims (reshapes that name the dims)


def _squeeze_abstract_eval(x, *, dimensions):
    for d in dimensions:
        if not 0 <= d < x.ndim or x.shape[d] != 1:
            raise ValueError(f"squeeze: cannot squeeze dimension {d} of shape {x.shape} (only "
                             f"size-1 dimensions can be removed)")
    return ShapedArray(tuple(s for i, s in enumerate(x.shape) if i not in dimensions),
                       x.dtype, x.weak_type)


squeeze_p = Primitive("squeeze")
squeeze_p.def_impl(lambda x, *, dimensions: array_namespace(x).squeeze(x, dimensions))
squeeze_p.def_abstract_eval(_squeeze_abstract_eval)


def squeeze(x, dimensions):
    """Remove the given size-1 dims (negative dims count from the end)."""
    ndim = get_aval(x).ndim
    dimensions = tuple(sorted(check_axes("squeeze", dimensions, ndim)))
    if not dimensions and not isinstance(x, core.Tracer):
        return x
    return squeeze_p.bind(x, dimensions=dimensions)


ad.deflinear(squeeze_p, lambda ct, x, *, dimensions: [
    Zero(ad.tangent_aval(x.aval)) if ad.is_zero(ct) else reshape(ct, x.aval.shape)])


def _squeeze_batch(vals, dims, *, dimensions):
    (x,), (d,) = vals, dims
    x = batching.moveaxis(x, d, 0)
    return squeeze_p.bind(x, dimensions=tuple(a + 1 for a in dimensions)), 0


batching.batching_rules[squeeze_p] = _squeeze_batch


def expand_dims(x, dimensions):
    """Insert size-1 dims at the given output positions (a reshape)."""
    aval = get_aval(x)
    out_ndim = aval.ndim + len(dimensions)
    dims = sorted(check_axes("expand_dims", dimensions, out_ndim))
    shape = list(aval.shape)
    for d in dims:
        shape.insert(d, 1)
    return reshape(x, tuple(shape))


# ---------------------------------------------------------------------------------------------
# rev


def _rev_abstract_eval(x, *, dimensions):
    if len(set(dimensions)) != len(dimensions) or any(not 0 <= d < x.ndim for d in dimensions):
        raise ValueError(f"rev: dimensions {dimensions} must be distinct dims of "
                         f"{x.str_short()}")
    return ShapedArray(x.shape, x.dtype, x.weak_type)


rev_p = Primitive("rev")
rev_p.def_impl(lambda x, *, dimensions: array_namespace(x).flip(x, dimensions))
rev_p.def_abstract_eval(_rev_abstract_eval)


def rev(x, dimensions):
    """Reverse the order of the elements along ``dimensions``."""
    dimensions = check_axes("rev", dimensions, get_aval(x).ndim)
    return rev_p.bind(x, dimensions=tuple(sorted(dimensions)))


ad.deflinear(rev_p, lambda ct, x, *, dimensions: [
    Zero(ad.tangent_aval(x.aval)) if ad.is_zero(ct) else rev_p.bind(ct, dimensions=dimensions)])


def _rev_batch(vals, dims, *, dimensions):
    (x,), (d,) = vals, dims
    return rev_p.bind(x, dimensions=tuple(a + (a >= d) for a in dimensions)), d


batching.batching_rules[rev_p] = _rev_batch


# ---------------------------------------------------------------------------------------------
# concatenate


def _concatenate_impl(*operands, dimension):
    xp = array_namespace(*operands)
    return xp.concatenate([xp.asarray(o) for o in operands], axis=dimension)


def _concatenate_abstract_eval(*operands, dimension):
    if not operands:
        raise TypeError("concatenate: needs at least one operand")
    first = operands[0]
    shapes = [o.str_short() for o in operands]
    if any(o.ndim != first.ndim for o in operands):
        raise TypeError(f"concatenate: operands must have the same rank, got {shapes}")
    if not 0 <= dimension < first.ndim:
        raise ValueError(f"concatenate: dimension {dimension} is out of bounds for operands of "
                         f"rank {first.ndim} ({shapes})")
    if any(o.dtype != first.dtype for o in operands):
        raise TypeError(f"concatenate: operands must have the same dtype, got {shapes}")
    for o in operands:
        if any(a != b for i, (a, b) in enumerate(zip(o.shape, first.shape)) if i != dimension):
            raise TypeError(f"concatenate: operand shapes must agree except along dimension "
                            f"{dimension}, got {shapes}")
    shape = list(first.shape)
    shape[dimension] = sum(o.shape[dimension] for o in operands)
    return ShapedArray(shape, first.dtype, all(o.weak_type for o in operands))


concatenate_p = Primitive("concatenate")
concatenate_p.def_impl(_concatenate_impl)
concatenate_p.def_abstract_eval(_concatenate_abstract_eval)


def concatenate(operands, dimension):
    """Join arrays of one dtype along ``dimension``."""
    operands = list(operands)
    if len(operands) == 1:
        return operands[0]
    dts = {get_aval(o).dtype for o in operands}
    if len(dts) > 1:
        # numpy would promote silently on the eager path; lax does not, traced or not.
        raise core._locate(TypeError(
            f"concatenate: operands must have the same dtype, got "
            f"{[get_aval(o).str_short() for o in operands]}"))
    return concatenate_p.bind(*operands, dimension=int(dimension))


def _concatenate_transpose(ct, *operands, dimension):
    from .slicing import slice_in_dim
    avals = [o.aval if is_undefined_primal(o) else get_aval(o) for o in operands]
    if ad.is_zero(ct):
        return [Zero(ad.tangent_aval(a)) if is_undefined_primal(o) else None
                for o, a in zip(operands, avals)]
    out, start = [], 0
    for o, a in zip(operands, avals):
        stop = start + a.shape[dimension]
        out.append(slice_in_dim(ct, start, stop, 1, dimension) if is_undefined_primal(o)
                   else None)
        start = stop
    return out


ad.deflinear(concatenate_p, _concatenate_transpose)


def _concatenate_batch(vals, dims, *, dimension):
    size = batching.batch_size_of(vals, dims)
    vals = [batching.bdim_at_front(v, d, size) for v, d in zip(vals, dims)]
    return concatenate_p.bind(*vals, dimension=dimension + 1), 0


batching.batching_rules[concatenate_p] = _concatenate_batch


# ---------------------------------------------------------------------------------------------
# iota and full


def _iota_impl(*, dtype, shape, dimension):
    r = np.arange(shape[dimension], dtype=dtype)
    view = [1] * len(shape)
    view[dimension] = shape[dimension]
    return np.broadcast_to(r.reshape(view), shape)


def _iota_abstract_eval(*, dtype, shape, dimension):
    if not 0 <= dimension < len(shape):
        raise ValueError(f"iota: dimension {dimension} out of range for shape {shape}")
    return ShapedArray(shape, dtype)


iota_p = Primitive("iota")
iota_p.def_impl(_iota_impl)
iota_p.def_abstract_eval(_iota_abstract_eval)
ad.defjvp_zero(iota_p)


def iota(dtype, size):
    """0, 1, ..., size-1."""
    return iota_p.bind(dtype=np.dtype(dtype), shape=(int(size),), dimension=0)


def broadcasted_iota(dtype, shape, dimension):
    shape = core.canonicalize_shape(shape)
    return iota_p.bind(dtype=np.dtype(dtype), shape=shape, dimension=int(dimension))


def full(shape, fill_value, dtype=None):
    """An array of ``shape`` filled with ``fill_value`` (its dtype, unless given)."""
    shape = core.canonicalize_shape(shape, "full shape")
    if dtype is None:
        dtype = get_aval(fill_value).dtype
    if not isinstance(fill_value, core.Tracer):
        if core._state.dynamic is None:
            return core.wrap_array(np.full(shape, fill_value, dtype=dtype))
        fill = np.asarray(fill_value, dtype=dtype)  # a literal in the jaxpr
    else:
        fill = convert_element_type(fill_value, dtype)
    return broadcast_in_dim(fill, shape, ())


def full_like(x, fill_value, dtype=None, shape=None):
    aval = get_aval(x)
    return full(aval.shape if shape is None else shape, fill_value,
                aval.dtype if dtype is None else dtype)


def zeros_like(x):
    return full_like(x, 0)
