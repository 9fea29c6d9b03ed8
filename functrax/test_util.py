"""Checking derivatives against finite differences, as researchers (and our tests) do.

``check_grads(f, args, order)`` compares forward mode (``jvp``) with central finite
differences along a random direction, and reverse mode (``vjp``) with forward mode through
the identity <u, J v> = <J^T u, v>; for ``order`` > 1 it repeats the checks on the derivative
functions themselves.

>>> import functrax.numpy as fnp
>>> from functrax.test_util import check_grads
>>> check_grads(fnp.sin, (0.3,), order=2)
"""
from __future__ import annotations

import numpy as np

from . import api, dtypes
from .tree_util import tree_flatten, tree_map

__all__ = ["check_grads", "check_jvp", "check_vjp", "numerical_jvp"]

_DEFAULT_EPS = {np.dtype(np.float64): 1e-4, np.dtype(np.float32): 1e-2,
                np.dtype(np.float16): 1e-1}
_DEFAULT_TOL = {np.dtype(np.float64): 1e-5, np.dtype(np.float32): 2e-2,
                np.dtype(np.float16): 1e-1}


def _leaves(tree):
    return [np.asarray(x) for x in tree_flatten(tree)[0]]


def _tol(args, given):
    if given is not None:
        return given
    dts = [np.asarray(x).dtype for x in tree_flatten(args)[0]]
    return max((_DEFAULT_TOL.get(d, 1e-5) for d in dts), default=1e-5)


def _eps(args, given):
    if given is not None:
        return given
    dts = [np.asarray(x).dtype for x in tree_flatten(args)[0]]
    return max((_DEFAULT_EPS.get(d, 1e-4) for d in dts), default=1e-4)


def _rand_like(rng, tree):
    def one(x):
        x = np.asarray(x)
        if not dtypes.is_inexact(x.dtype):
            return np.zeros(x.shape, dtypes.float0)
        return rng.standard_normal(x.shape).astype(x.dtype)
    return tree_map(one, tree)


def _add_scaled(tree, v, scale):
    def one(x, d):
        x = np.asarray(x)
        if not dtypes.is_inexact(x.dtype):
            return x
        return (x + scale * np.asarray(d, dtype=np.float64)).astype(x.dtype)
    return tree_map(one, tree, v)


def _inner(a, b):
    total = 0.0
    for x, y in zip(_leaves(a), _leaves(b)):
        if x.dtype == dtypes.float0 or y.dtype == dtypes.float0:
            continue
        total += float(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64)).real)
    return total


def _assert_close(name, actual, expected, atol, rtol):
    a_leaves, e_leaves = _leaves(actual), _leaves(expected)
    if len(a_leaves) != len(e_leaves):
        raise AssertionError(f"{name}: {len(a_leaves)} outputs, expected {len(e_leaves)}")
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        if a.dtype == dtypes.float0 or e.dtype == dtypes.float0:
            continue
        a64, e64 = np.asarray(a, np.float64), np.asarray(e, np.float64)
        if a64.shape != e64.shape:
            raise AssertionError(f"{name}: output {i} has shape {a64.shape}, expected "
                                 f"{e64.shape}")
        if not np.allclose(a64, e64, atol=atol, rtol=rtol, equal_nan=True):
            err = np.max(np.abs(a64 - e64)) if a64.size else 0.0
            raise AssertionError(f"{name}: output {i} differs (max abs error {err:.3g}, atol "
                                 f"{atol}, rtol {rtol})\n  actual   {a64}\n  expected {e64}")


def numerical_jvp(f, primals, tangents, eps):
    """Central finite difference of f at primals along tangents."""
    plus = f(*_add_scaled(primals, tangents, eps))
    minus = f(*_add_scaled(primals, tangents, -eps))
    return tree_map(lambda p, m: (np.asarray(p, np.float64) - np.asarray(m, np.float64))
                    / (2 * eps), plus, minus)


def check_jvp(f, args, atol=None, rtol=None, eps=None, seed=0):
    """Forward mode against central finite differences along a random direction."""
    rng = np.random.default_rng(seed)
    v = _rand_like(rng, args)
    tol = _tol(args, atol)
    _, t_out = api.jvp(f, tuple(args), tuple(v))
    t_num = numerical_jvp(f, tuple(args), tuple(v), _eps(args, eps))
    _assert_close("JVP against finite differences", t_out, t_num, tol,
                  _tol(args, rtol) if rtol is None else rtol)


def check_vjp(f, args, atol=None, rtol=None, eps=None, seed=0, use_fd=False):
    """Reverse mode through <u, J v> = <J^T u, v>, with J v from jvp (or finite differences)."""
    rng = np.random.default_rng(seed + 1)
    v = _rand_like(rng, args)
    out, f_vjp = api.vjp(f, *args)
    u = _rand_like(rng, out)
    ct = f_vjp(u)
    if use_fd:
        jv = numerical_jvp(f, tuple(args), tuple(v), _eps(args, eps))
    else:
        _, jv = api.jvp(f, tuple(args), tuple(v))
    lhs = _inner(u, jv)
    rhs = _inner(ct, v)
    tol = _tol(args, atol)
    scale = max(1.0, abs(lhs), abs(rhs))
    if not abs(lhs - rhs) <= tol * scale * 10:
        raise AssertionError(f"VJP check: <u, J v> = {lhs!r} but <J^T u, v> = {rhs!r}")


def check_grads(f, args, order, modes=("fwd", "rev"), atol=None, rtol=None, eps=None):
    """Check derivatives of ``f`` at ``args`` up to ``order`` in the given modes.

    ``modes`` contains "fwd" (jvp against finite differences) and/or "rev" (vjp against jvp,
    or against finite differences when "fwd" is absent). Raises AssertionError with the
    discrepancy when a check fails.
    """
    args = tuple(args)
    for m in modes:
        if m not in ("fwd", "rev"):
            raise ValueError(f"check_grads: unknown mode {m!r}; use 'fwd' and/or 'rev'")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"check_grads: order must be a positive int, got {order!r}")

    def _check(fun, xs, k):
        if "fwd" in modes:
            check_jvp(fun, xs, atol, rtol, eps, seed=k)
            if k > 1:
                rng = np.random.default_rng(100 + k)
                v = _rand_like(rng, xs)
                _check(lambda *a: api.jvp(fun, a, tuple(v))[1], xs, k - 1)
        if "rev" in modes:
            check_vjp(fun, xs, atol, rtol, eps, seed=k, use_fd="fwd" not in modes)
            if k > 1:
                rng = np.random.default_rng(200 + k)
                out = fun(*xs)
                u = _rand_like(rng, out)
                _check(lambda *a: api.vjp(fun, *a)[1](u), xs, k - 1)

    _check(f, args, order)
