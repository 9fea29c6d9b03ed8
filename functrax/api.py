"""The transformations users call: make_jaxpr, jvp, linearize, vjp, grad, value_and_grad,
jacfwd, jacrev, hessian, vmap, eval_shape. All of them take and return pytrees.

>>> import functrax as ft, functrax.numpy as fnp
>>> ft.grad(lambda x: fnp.sum(x ** 2))(fnp.arange(3.0)).tolist()
[0.0, 2.0, 4.0]
"""
from __future__ import annotations

import functools

import numpy as np

from . import core, dtypes
from .core import get_aval
from .lax._util import array_namespace
from .interpreters import batching
from .interpreters.jvp import Zero, instantiate_zeros, jvp_flat, tangent_aval
from .interpreters.partial_eval import linearize_flat
from .interpreters.transpose import UndefinedPrimal, backward_pass
from .tree_util import tree_flatten, tree_map, tree_structure, tree_unflatten, tree_leaves

# ---------------------------------------------------------------------------------------------
# Flattening helpers


def _fun_name(fun):
    return getattr(fun, "__name__", type(fun).__name__)


def _as_array_leaf(x, fname, what="argument"):
    """Leaves entering a transformation must be arrays or scalars."""
    if isinstance(x, core.Tracer) or type(x) in (float, int, bool, complex):
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{fname}: {what} of type {type(x).__name__} is not an array: every leaf "
                    f"of the {what}s must be an array or a number, got {x!r}")


def flatten_fun(fun, in_tree, out_box):
    """A function on flat leaves calling ``fun`` on the unflattened (args, kwargs)."""
    def flat_fun(*leaves):
        args, kwargs = tree_unflatten(in_tree, leaves)
        out = fun(*args, **kwargs)
        out_leaves, out_tree = tree_flatten(out)
        out_box.append(out_tree)
        return out_leaves
    return flat_fun


def _check_argnums(fname, argnums, nargs):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not isinstance(a, (int, np.integer)):
            raise TypeError(f"{fname}: argnums must be ints, got {argnums!r}")
        if not -nargs <= a < nargs:
            raise ValueError(f"{fname}: argnums {argnums} is out of range for a function called "
                             f"with {nargs} positional argument(s)")
    return tuple(a % nargs for a in nums)


# ---------------------------------------------------------------------------------------------
# make_jaxpr, eval_shape


def make_jaxpr(fun, static_argnums=(), return_shape=False):
    """A function that traces ``fun`` on example arguments and returns its ClosedJaxpr.

    >>> import functrax as ft, functrax.numpy as fnp
    >>> print(ft.make_jaxpr(lambda x: x * 2.0)(fnp.ones(2)))
    { lambda ; a:f64[2]. let
        b:f64[2] = mul a 2.0:f64[]
      in (b,) }
    """
    static_argnums = (static_argnums,) if isinstance(static_argnums, int) else \
        tuple(static_argnums)

    @functools.wraps(fun)
    def wrapped(*args, **kwargs):
        closed, out_tree, out_avals = _trace(fun, static_argnums, args, kwargs, "make_jaxpr")
        if return_shape:
            shapes = [ShapeDtypeStruct(a.shape, a.dtype) for a in out_avals]
            return closed, tree_unflatten(out_tree, shapes)
        return closed
    return wrapped


def _trace(fun, static_argnums, args, kwargs, fname):
    static_argnums = tuple(i % len(args) for i in static_argnums) if args else ()
    dyn_args = [a for i, a in enumerate(args) if i not in static_argnums]
    leaves, in_tree = tree_flatten((tuple(dyn_args), kwargs))
    leaves = [_as_array_leaf(x, fname) for x in leaves]

    def call(*a, **k):
        it = iter(a)
        full = [args[i] if i in static_argnums else next(it) for i in range(len(args))]
        return fun(*full, **k)

    out_box = []
    flat = flatten_fun(call, in_tree, out_box)
    jaxpr, consts, out_avals = core.trace_to_jaxpr(flat, [get_aval(x) for x in leaves])
    return core.ClosedJaxpr(jaxpr, consts), out_box[0], out_avals


class ShapeDtypeStruct:
    """A shape and a dtype: what eval_shape returns and what jit can trace from."""

    __slots__ = ("shape", "dtype", "weak_type")

    def __init__(self, shape, dtype, weak_type=False):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.weak_type = weak_type

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape))

    def __repr__(self):
        return f"ShapeDtypeStruct(shape={self.shape}, dtype={self.dtype.name})"

    def __eq__(self, other):
        return isinstance(other, ShapeDtypeStruct) and (self.shape, self.dtype) == (
            other.shape, other.dtype)

    def __hash__(self):
        return hash((self.shape, self.dtype))


def eval_shape(fun, *args, **kwargs):
    """The shapes and dtypes of ``fun``'s outputs, computed without running it."""
    _, out_tree, out_avals = _trace(fun, (), args, kwargs, "eval_shape")
    return tree_unflatten(out_tree, [ShapeDtypeStruct(a.shape, a.dtype, a.weak_type)
                                     for a in out_avals])


# ---------------------------------------------------------------------------------------------
# Forward mode


def _check_tangent(fname, primal, tangent, path):
    p_aval = tangent_aval(get_aval(primal))
    t_aval = get_aval(tangent)
    if p_aval.shape != t_aval.shape:
        raise ValueError(f"{fname}: tangent {path} has shape {t_aval.shape} but its primal has "
                         f"shape {p_aval.shape}; tangents must match their primals' shapes")
    if p_aval.dtype != t_aval.dtype and not (dtypes.is_inexact(p_aval.dtype) and t_aval.weak_type):
        raise TypeError(f"{fname}: tangent {path} has dtype {t_aval.dtype.name} but its primal "
                        f"expects tangent dtype {p_aval.dtype.name} (primal dtype "
                        f"{get_aval(primal).dtype.name}; integer primals take float0 tangents)")


def jvp(fun, primals, tangents, has_aux=False):
    """(fun(*primals), J(primals) @ tangents): a forward-mode Jacobian-vector product.

    >>> import functrax as ft, functrax.numpy as fnp
    >>> ft.jvp(lambda x: x ** 3, (2.0,), (1.0,))
    (Array(8.), Array(12.))
    """
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError(f"jvp: primals and tangents must be tuples or lists, got "
                        f"{type(primals).__name__} and {type(tangents).__name__}")
    p_leaves, p_tree = tree_flatten(tuple(primals))
    t_leaves, t_tree = tree_flatten(tuple(tangents))
    if p_tree != t_tree:
        raise ValueError(f"jvp: primal and tangent structures differ:\n  primals  {p_tree}\n"
                         f"  tangents {t_tree}")
    p_leaves = [_as_array_leaf(x, "jvp", "primal") for x in p_leaves]
    t_leaves = [_as_array_leaf(x, "jvp", "tangent") for x in t_leaves]
    for i, (p, t) in enumerate(zip(p_leaves, t_leaves)):
        _check_tangent("jvp", p, t, f"leaf {i}")
    t_leaves = [Zero(tangent_aval(get_aval(p))) if not dtypes.is_inexact(get_aval(p).dtype)
                else t for p, t in zip(p_leaves, t_leaves)]
    out_box = []

    def flat(*leaves):
        args = tree_unflatten(p_tree, leaves)
        out = fun(*args)
        if has_aux:
            out, aux = _split_aux("jvp", out)
        out_leaves, out_tree = tree_flatten(out)
        out_box.append(out_tree)
        if has_aux:
            aux_leaves, aux_tree = tree_flatten(aux)
            out_box.append(aux_tree)
            return out_leaves, aux_leaves
        return out_leaves

    res = jvp_flat(flat, p_leaves, t_leaves, has_aux=has_aux)
    p_out, t_out = res[0], res[1]
    out_tree = out_box[0]
    p_out = tree_unflatten(out_tree, p_out)
    t_out = tree_unflatten(out_tree, [instantiate_zeros(t) for t in t_out])
    if has_aux:
        return p_out, t_out, tree_unflatten(out_box[1], res[2])
    return p_out, t_out


def _split_aux(fname, out):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"{fname} with has_aux=True: the function must return a pair "
                        f"(output, aux), got {type(out).__name__}")
    return out[0], out[1]


def linearize(fun, *primals):
    """(fun(*primals), f_jvp) where f_jvp(*tangents) evaluates the Jacobian-vector product
    from a linear jaxpr, without recomputing the primal.

    >>> import functrax as ft, functrax.numpy as fnp
    >>> y, f_jvp = ft.linearize(fnp.sin, 0.0)
    >>> f_jvp(3.0)
    Array(3.)
    """
    p_leaves, p_tree = tree_flatten(primals)
    p_leaves = [_as_array_leaf(x, "linearize", "primal") for x in p_leaves]
    out_box = []

    def flat_fun(*leaves):
        out = fun(*tree_unflatten(p_tree, leaves))
        out_leaves, out_tree = tree_flatten(out)
        out_box.append(out_tree)
        return out_leaves

    p_out, lin, _ = linearize_flat(flat_fun, p_leaves)
    out_tree = out_box[0]

    def f_jvp(*tangents):
        t_leaves, t_tree = tree_flatten(tangents)
        if t_tree != p_tree:
            raise ValueError(f"linearize: tangent structure {t_tree} does not match the primal "
                             f"structure {p_tree}")
        for i, (p, t) in enumerate(zip(p_leaves, t_leaves)):
            _check_tangent("linearize", p, t, f"leaf {i}")
        outs = core.eval_jaxpr(lin.jaxpr, lin.consts, *t_leaves)
        return tree_unflatten(out_tree, outs)

    f_jvp.jaxpr = lin
    return tree_unflatten(out_tree, p_out), f_jvp


# ---------------------------------------------------------------------------------------------
# Reverse mode


def vjp(fun, *primals, has_aux=False):
    """(fun(*primals), vjp_fn): vjp_fn(ct) returns the cotangents of the primals (a tuple).

    Reverse mode is linearize + transpose: the JVP is linearized into a linear jaxpr whose
    constants are the residuals, and vjp_fn transposes it.

    >>> import functrax as ft, functrax.numpy as fnp
    >>> y, f_vjp = ft.vjp(lambda x: x * x, 3.0)
    >>> f_vjp(1.0)
    (Array(6.),)
    """
    p_leaves, p_tree = tree_flatten(primals)
    p_leaves = [_as_array_leaf(x, "vjp", "primal") for x in p_leaves]
    out_box = []

    def flat_fun(*leaves):
        out = fun(*tree_unflatten(p_tree, leaves))
        if has_aux:
            out, aux = _split_aux("vjp", out)
        out_leaves, out_tree = tree_flatten(out)
        out_box.append(out_tree)
        if has_aux:
            aux_leaves, aux_tree = tree_flatten(aux)
            out_box.append(aux_tree)
            return out_leaves, aux_leaves
        return out_leaves

    p_out, lin, _, *aux_out = linearize_flat(flat_fun, p_leaves, has_aux=has_aux)
    out_tree = out_box[0]
    out_avals = [tangent_aval(get_aval(p)) for p in p_out]
    in_avals = [get_aval(p) for p in p_leaves]

    def vjp_fn(ct):
        ct_leaves, ct_tree = tree_flatten(ct)
        if ct_tree != out_tree:
            raise ValueError(f"vjp: cotangent structure {ct_tree} does not match the output "
                             f"structure {out_tree}")
        for i, (c, a) in enumerate(zip(ct_leaves, out_avals)):
            c_aval = get_aval(c)
            if c_aval.shape != a.shape:
                raise ValueError(f"vjp: cotangent {i} has shape {c_aval.shape}, expected the "
                                 f"output's shape {a.shape}")
        cts_in = backward_pass(lin.jaxpr, lin.consts,
                               [UndefinedPrimal(v.aval) for v in lin.jaxpr.invars], ct_leaves)
        cts_in = [_zero_cotangent(a) if type(c) is Zero else c
                  for c, a in zip(cts_in, in_avals)]
        return tree_unflatten(p_tree, cts_in)

    out = tree_unflatten(out_tree, p_out)
    if has_aux:
        return out, vjp_fn, tree_unflatten(out_box[1], aux_out[0])
    return out, vjp_fn


def _zero_cotangent(aval):
    if dtypes.is_inexact(aval.dtype):
        return core.wrap_array(np.zeros(aval.shape, aval.dtype))
    return np.zeros(aval.shape, dtypes.float0)


def _zero_cotangent_traced(aval):
    if dtypes.is_inexact(aval.dtype):
        from . import lax
        return lax.full(aval.shape, 0, aval.dtype)
    return np.zeros(aval.shape, dtypes.float0)


def value_and_grad(fun, argnums=0, has_aux=False, holomorphic=False, allow_int=False):
    """A function returning (fun(*args), gradient of fun with respect to args[argnums]).

    ``fun`` must return a real scalar (or a pair (scalar, aux) with ``has_aux=True``).

    >>> import functrax as ft
    >>> ft.value_and_grad(lambda x, y: x * y, argnums=(0, 1))(2.0, 3.0)
    (Array(6.), (Array(3.), Array(2.)))
    """
    name = _fun_name(fun)

    @functools.wraps(fun)
    def value_and_grad_f(*args, **kwargs):
        nums = _check_argnums(f"grad of {name}", argnums, len(args))
        diff = tuple(args[i] for i in nums)
        for i, leaf in zip(nums, diff):
            for x in tree_leaves(leaf):
                aval = get_aval(_as_array_leaf(x, f"grad of {name}"))
                if not dtypes.is_inexact(aval.dtype) and not allow_int:
                    raise TypeError(
                        f"grad of {name} requires real- or complex-valued inputs (input dtype "
                        f"that is a sub-dtype of np.inexact), but argument {i} has dtype "
                        f"{aval.dtype.name}. Pass floats (e.g. x.astype(float)), or exclude the "
                        f"argument from argnums.")

        def f_diff(*dargs):
            full = list(args)
            for i, d in zip(nums, dargs):
                full[i] = d
            out = fun(*full, **kwargs)
            if has_aux and (not isinstance(out, (tuple, list)) or len(out) != 2):
                raise TypeError(f"grad of {name} with has_aux=True: the function must return a "
                                f"pair (scalar output, aux), got a single "
                                f"{'array' if core.is_array_like(out) else type(out).__name__}")
            return out

        if has_aux:
            ans, vjp_fn, aux = vjp(f_diff, *diff, has_aux=True)
        else:
            ans, vjp_fn = vjp(f_diff, *diff)
        _check_scalar(name, ans)
        ans_aval = get_aval(ans)
        # The seed cotangent lives where the output lives (host, or GPU via the array module).
        g = vjp_fn(_ones_like(ans) if isinstance(ans, core.Tracer) else
                   array_namespace(ans).ones((), ans_aval.dtype))
        g = g[0] if isinstance(argnums, int) else g
        return ((ans, aux), g) if has_aux else (ans, g)

    return value_and_grad_f


def _ones_like(x):
    from . import lax
    aval = get_aval(x)
    return lax.full(aval.shape, 1, aval.dtype)


def _check_scalar(name, ans):
    if isinstance(ans, (tuple, list, dict)):
        raise TypeError(f"grad of {name}: the function must return a scalar, got a "
                        f"{type(ans).__name__}; with an auxiliary output use has_aux=True")
    try:
        aval = get_aval(ans)
    except TypeError:
        raise TypeError(f"grad of {name}: the function must return a scalar array, got "
                        f"{type(ans).__name__}") from None
    if aval.shape != ():
        raise TypeError(f"grad of {name} requires a scalar output, got shape {aval.shape} "
                        f"({aval.str_short()}); reduce it (e.g. .sum()) or use jacrev / vjp for "
                        f"non-scalar outputs")
    if not dtypes.is_float(aval.dtype):
        raise TypeError(f"grad of {name} requires a real floating-point output, got "
                        f"{aval.dtype.name}")


def grad(fun, argnums=0, has_aux=False, holomorphic=False, allow_int=False):
    """The gradient of a scalar function with respect to ``args[argnums]`` (pytrees too).

    >>> import functrax as ft, functrax.numpy as fnp
    >>> ft.grad(lambda p: fnp.sum(p['w'] ** 2))({'w': fnp.ones(2)})['w'].tolist()
    [2.0, 2.0]
    """
    vg = value_and_grad(fun, argnums, has_aux, holomorphic, allow_int)

    @functools.wraps(fun)
    def grad_f(*args, **kwargs):
        if has_aux:
            (_, aux), g = vg(*args, **kwargs)
            return g, aux
        return vg(*args, **kwargs)[1]

    return grad_f


# ---------------------------------------------------------------------------------------------
# Jacobians and Hessians


def _std_basis(leaves):
    """The identity matrix split across the flattened input leaves: for each leaf, an array of
    shape (N, *leaf.shape) where N is the total number of input elements."""
    from . import numpy as fnp
    avals = [get_aval(x) for x in leaves]
    sizes = [a.size for a in avals]
    n = sum(sizes)
    dtype = np.result_type(*[a.dtype for a in avals]) if avals else np.float64
    eye = np.eye(n, dtype=dtype)
    out, start = [], 0
    for a, s in zip(avals, sizes):
        out.append(fnp.asarray(eye[:, start:start + s].reshape((n,) + a.shape), dtype=a.dtype))
        start += s
    return out, n


def _unravel_jac(flat_jac_leaves, out_avals, in_avals, batch_first):
    """Split (N_in, *out_shape) (forward) or (N_out, *in_shape) (reverse) batched results into
    the nested out-by-in structure of Jacobian blocks."""
    from . import lax
    blocks = []
    if batch_first == "in":  # jacfwd: one array per output, leading dim over input elements
        for o, oa in zip(flat_jac_leaves, out_avals):
            row, start = [], 0
            for ia in in_avals:
                piece = lax.slice_in_dim(o, start, start + ia.size, axis=0) \
                    if len(in_avals) > 1 else o
                piece = lax.reshape(piece, (ia.size,) + oa.shape)
                piece = batching.moveaxis(piece, 0, -1) if oa.ndim else piece
                row.append(lax.reshape(piece, oa.shape + ia.shape))
                start += ia.size
            blocks.append(row)
    else:  # jacrev: one array per input, leading dim over output elements
        for oi, oa in enumerate(out_avals):
            row = []
            start = sum(a.size for a in out_avals[:oi])
            for i_leaf, ia in zip(flat_jac_leaves, in_avals):
                piece = lax.slice_in_dim(i_leaf, start, start + oa.size, axis=0) \
                    if len(out_avals) > 1 else i_leaf
                row.append(lax.reshape(piece, oa.shape + ia.shape))
            blocks.append(row)
    return blocks


def jacfwd(fun, argnums=0, has_aux=False, holomorphic=False, chunk_size=None):
    """The Jacobian by forward mode: one JVP per input element, batched with vmap.

    ``chunk_size`` evaluates the basis in chunks of that many columns to cap peak memory.
    The result nests the output structure outside the input structure, as in JAX.

    >>> import functrax as ft, functrax.numpy as fnp
    >>> ft.jacfwd(lambda x: x ** 2)(fnp.array([1.0, 2.0])).tolist()
    [[2.0, 0.0], [0.0, 4.0]]
    """
    name = _fun_name(fun)

    def jacfun(*args, **kwargs):
        nums = _check_argnums(f"jacfwd of {name}", argnums, len(args))
        diff = tuple(args[i] for i in nums)
        d_leaves, d_tree = tree_flatten(diff)
        d_leaves = [_as_array_leaf(x, f"jacfwd of {name}") for x in d_leaves]
        for x in d_leaves:
            if not dtypes.is_inexact(get_aval(x).dtype):
                raise TypeError(f"jacfwd of {name} requires floating-point inputs, got "
                                f"{get_aval(x).dtype.name}")
        box = {}

        def f_flat(*leaves):
            full = list(args)
            for i, d in zip(nums, tree_unflatten(d_tree, leaves)):
                full[i] = d
            out = fun(*full, **kwargs)
            if has_aux:
                out, aux = _split_aux("jacfwd", out)
            out_leaves, out_tree = tree_flatten(out)
            box["out_tree"] = out_tree
            if has_aux:
                aux_leaves, box["aux_tree"] = tree_flatten(aux)
                return out_leaves, aux_leaves
            return out_leaves

        basis, n = _std_basis(d_leaves)

        def push_out(*tangent_leaves):
            res = jvp_flat(f_flat, d_leaves, list(tangent_leaves), has_aux=has_aux)
            return [instantiate_zeros(t) for t in res[1]], (res[2] if has_aux else [])

        # The aux leaves depend on the primals only: they leave vmap unbatched.
        t_batched, aux_vals = vmap(push_out, chunk_size=chunk_size, out_axes=(0, None))(*basis)
        out_tree = box["out_tree"]
        out_avals = [get_aval(t).update(shape=get_aval(t).shape[1:]) for t in t_batched]
        blocks = _unravel_jac(t_batched, out_avals, [get_aval(x) for x in d_leaves], "in")
        jac = _nest(blocks, out_tree, d_tree, isinstance(argnums, int))
        return (jac, tree_unflatten(box["aux_tree"], aux_vals)) if has_aux else jac

    return jacfun


def _nest(blocks, out_tree, in_tree, single_arg):
    rows = []
    for row in blocks:
        inner = tree_unflatten(in_tree, row)
        rows.append(inner[0] if single_arg else inner)
    return tree_unflatten(out_tree, rows)


def jacrev(fun, argnums=0, has_aux=False, holomorphic=False, allow_int=False, chunk_size=None):
    """The Jacobian by reverse mode: one VJP per output element, batched with vmap.

    >>> import functrax as ft, functrax.numpy as fnp
    >>> ft.jacrev(lambda x: x ** 2)(fnp.array([1.0, 2.0])).tolist()
    [[2.0, 0.0], [0.0, 4.0]]
    """
    name = _fun_name(fun)

    def jacfun(*args, **kwargs):
        nums = _check_argnums(f"jacrev of {name}", argnums, len(args))
        diff = tuple(args[i] for i in nums)
        d_leaves, d_tree = tree_flatten(diff)
        d_leaves = [_as_array_leaf(x, f"jacrev of {name}") for x in d_leaves]
        for x in d_leaves:
            if not dtypes.is_inexact(get_aval(x).dtype):
                raise TypeError(f"jacrev of {name} requires floating-point inputs, got "
                                f"{get_aval(x).dtype.name}")
        box = {}

        def f_flat(*leaves):
            full = list(args)
            for i, d in zip(nums, tree_unflatten(d_tree, leaves)):
                full[i] = d
            out = fun(*full, **kwargs)
            if has_aux:
                out, aux = _split_aux("jacrev", out)
            out_leaves, out_tree = tree_flatten(out)
            box["out_tree"] = out_tree
            if has_aux:
                aux_leaves, box["aux_tree"] = tree_flatten(aux)
                return out_leaves, aux_leaves
            return out_leaves

        p_out, lin, _, *aux_out = linearize_flat(f_flat, d_leaves, has_aux=has_aux)
        out_avals = [get_aval(p) for p in p_out]
        for a in out_avals:
            if not dtypes.is_inexact(a.dtype):
                raise TypeError(f"jacrev of {name} requires floating-point outputs, got "
                                f"{a.dtype.name}")
        basis, n = _std_basis(p_out)

        def pull(*ct_leaves):
            cts = backward_pass(lin.jaxpr, lin.consts,
                                [UndefinedPrimal(v.aval) for v in lin.jaxpr.invars],
                                list(ct_leaves))
            return [_zero_cotangent_traced(get_aval(x)) if type(c) is Zero else c
                    for c, x in zip(cts, d_leaves)]

        cts = vmap(pull, chunk_size=chunk_size)(*basis)
        blocks = _unravel_jac(cts, out_avals, [get_aval(x) for x in d_leaves], "out")
        jac = _nest(blocks, box["out_tree"], d_tree, isinstance(argnums, int))
        return (jac, tree_unflatten(box["aux_tree"], aux_out[0])) if has_aux else jac

    return jacfun


def hessian(fun, argnums=0, has_aux=False, holomorphic=False, chunk_size=None):
    """The Hessian, as jacfwd(jacrev(fun)) (forward-over-reverse).

    >>> import functrax as ft, functrax.numpy as fnp
    >>> ft.hessian(lambda x: fnp.sum(x ** 3))(fnp.array([1.0, 2.0])).tolist()
    [[6.0, 0.0], [0.0, 12.0]]
    """
    return jacfwd(jacrev(fun, argnums, has_aux=has_aux, chunk_size=chunk_size), argnums,
                  has_aux=has_aux, chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------
# vmap


def _flatten_axes(name, tree, axes, what):
    """Broadcast an in_axes/out_axes prefix tree to the leaves of ``tree``."""
    if isinstance(axes, (int, type(None))):
        return [axes] * len(tree_leaves(tree))
    leaves_out = []
    proxy = object()

    def fill(a, sub):
        n = len(tree_leaves(sub))
        if a is not None and not isinstance(a, int):
            raise TypeError(f"{name}: {what} entries must be ints or None, got {a!r}")
        leaves_out.extend([a] * n)

    try:
        tree_map(fill, axes, tree, is_leaf=lambda x: x is None or isinstance(x, int))
    except ValueError as e:
        raise ValueError(f"{name}: {what} specification {axes!r} does not match the structure "
                         f"of the arguments {tree_structure(tree)}: {e}") from None
    del proxy
    return leaves_out


def vmap(fun, in_axes=0, out_axes=0, axis_name=None, axis_size=None, spmd_axis_name=None,
         chunk_size=None):
    """Vectorize ``fun`` over a leading (or ``in_axes``) axis of its arguments.

    ``in_axes``/``out_axes`` are ints, None, or pytree prefixes of the arguments/outputs.
    ``axis_name`` names the mapped axis for collectives (``lax.psum``...). ``chunk_size``
    evaluates the batch in chunks of that size (same result, lower peak memory).

    >>> import functrax as ft, functrax.numpy as fnp
    >>> ft.vmap(lambda x, y: x @ y, in_axes=(0, None))(fnp.ones((4, 3)), fnp.ones(3)).tolist()
    [3.0, 3.0, 3.0, 3.0]
    """
    name = _fun_name(fun)
    if isinstance(in_axes, list):
        in_axes = tuple(in_axes)
    if not (in_axes is None or isinstance(in_axes, (int, tuple, dict))):
        raise TypeError(f"vmap of {name}: in_axes must be an int, None or a tuple of prefixes, "
                        f"got {in_axes!r}")

    @functools.wraps(fun)
    def vmap_f(*args, **kwargs):
        if isinstance(in_axes, tuple) and len(in_axes) != len(args):
            raise ValueError(f"vmap of {name}: in_axes has {len(in_axes)} entries but the "
                             f"function was called with {len(args)} positional argument(s)")
        leaves, in_tree = tree_flatten((args, kwargs))
        leaves = [_as_array_leaf(x, f"vmap of {name}") for x in leaves]
        axes = _flatten_axes(f"vmap of {name}", args, in_axes, "in_axes") + \
            [0] * len(tree_leaves(kwargs))
        size = _batch_size(name, args, kwargs, leaves, axes, axis_size)
        axes = [None if a is None else _norm_axis(name, a, get_aval(x).ndim, i)
                for i, (x, a) in enumerate(zip(leaves, axes))]
        if chunk_size is not None and size > chunk_size:
            return _vmap_chunked(vmap_f_unchunked, leaves, in_tree, axes, size, chunk_size)
        return vmap_f_unchunked(leaves, in_tree, axes, size)[0]

    def vmap_f_unchunked(leaves, in_tree, axes, size):
        """Returns (outputs pytree, the batch axis of each output leaf or None)."""
        out_box = []
        flat = flatten_fun(fun, in_tree, out_box)
        outs, out_dims = batching.batch_flat(flat, size, axis_name, leaves, axes)
        out_tree = out_box[0]
        out_spec = _flatten_axes(f"vmap of {name}", tree_unflatten(out_tree, outs), out_axes,
                                 "out_axes")
        result, final_axes = [], []
        for o, d, dst in zip(outs, out_dims, out_spec):
            if dst is None:
                if d is not None:
                    raise ValueError(f"vmap of {name}: out_axes=None for an output that depends "
                                     f"on the mapped axis (it has a batch dimension)")
                result.append(o)
                final_axes.append(None)
            else:
                nd = get_aval(o).ndim + (d is None)
                result.append(batching.matchaxis(o, d, dst % nd, size))
                final_axes.append(dst % nd)
        return tree_unflatten(out_tree, result), final_axes

    return vmap_f


def _norm_axis(name, a, ndim, i):
    if not -ndim <= a < ndim:
        raise ValueError(f"vmap of {name}: in_axes={a} for argument leaf {i} of rank {ndim} "
                         f"is out of range (an array of rank {ndim} has axes "
                         f"{-ndim}..{ndim - 1})")
    return a % ndim


def _batch_size(name, args, kwargs, leaves, axes, axis_size):
    from .tree_util import tree_flatten_with_path, keystr
    paths = ["args" + keystr(p) for p, _ in tree_flatten_with_path(tuple(args))[0]] + \
        ["kwargs" + keystr(p) for p, _ in tree_flatten_with_path(kwargs)[0]]
    sizes = {}
    for path, x, a in zip(paths, leaves, axes):
        if a is None:
            continue
        aval = get_aval(x)
        if aval.ndim == 0:
            raise ValueError(f"vmap of {name}: argument {path} is a scalar (rank 0) but in_axes "
                             f"maps it over axis {a}; use in_axes=None for it")
        if not -aval.ndim <= a < aval.ndim:
            raise ValueError(f"vmap of {name}: in_axes={a} for argument {path} of shape "
                             f"{aval.shape} is out of range")
        sizes[path] = aval.shape[a]
    if not sizes:
        if axis_size is None:
            raise ValueError(f"vmap of {name}: no argument is mapped (all in_axes are None); "
                             f"pass axis_size")
        return axis_size
    distinct = set(sizes.values())
    if len(distinct) > 1:
        lines = "\n".join(f"  argument {p}: size {s}" for p, s in sizes.items())
        raise ValueError(f"vmap of {name} got inconsistent sizes for the mapped axis:\n{lines}")
    size = distinct.pop()
    if axis_size is not None and axis_size != size:
        raise ValueError(f"vmap of {name}: axis_size={axis_size} but the mapped arguments have "
                         f"size {size}")
    return size


def _vmap_chunked(run, leaves, in_tree, axes, size, chunk_size):
    """Run the batched function on slices of ``chunk_size`` and concatenate the results along
    each output's batch axis (outputs without one are taken from the first chunk)."""
    from . import lax
    from . import numpy as fnp
    pieces, out_axes = [], None
    for start in range(0, size, chunk_size):
        stop = min(start + chunk_size, size)
        chunk = [x if a is None else lax.slice_in_dim(x, start, stop, axis=a)
                 for x, a in zip(leaves, axes)]
        out, out_axes = run(chunk, in_tree, axes, stop - start)
        pieces.append(tree_flatten(out))
    out_tree = pieces[0][1]
    outs = []
    for i, axis in enumerate(out_axes):
        if axis is None:
            outs.append(pieces[0][0][i])
        else:
            outs.append(fnp.concatenate([p[0][i] for p in pieces], axis=axis))
    return tree_unflatten(out_tree, outs)
