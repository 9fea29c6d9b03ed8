"""``functrax.optim``: optimizers as pure functions over pytrees, in the style of optax.

An optimizer is a ``GradientTransformation(init, update)``:

* ``state = opt.init(params)``
* ``updates, state = opt.update(grads, state, params)``
* ``params = apply_updates(params, updates)``

States are NamedTuples of arrays (pytrees), so a whole training step — loss, gradient,
update — is a pure function that ``jit`` can compile. Transformations compose with
``chain``: ``adam`` is ``chain(scale_by_adam(), scale_by_learning_rate(lr))``. Learning rates
are floats or *schedules*: functions of the step count (an int32 array kept in the state).

>>> import functrax, functrax.numpy as fnp
>>> from functrax import optim
>>> opt = optim.adam(0.1)
>>> params = {"w": fnp.array([1.0, -2.0])}
>>> state = opt.init(params)
>>> grads = functrax.grad(lambda p: fnp.sum(p["w"] ** 2))(params)
>>> updates, state = opt.update(grads, state, params)
>>> optim.apply_updates(params, updates)["w"].round(6).tolist()
[0.9, -1.9]
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from . import dtypes, lax
from .core import get_aval
from .tree_util import tree_leaves, tree_map

__all__ = [
    "GradientTransformation", "EmptyState", "ScaleByScheduleState", "TraceState",
    "ScaleByAdamState", "ScaleByRmsState", "ScaleByRStdDevState", "ScaleByRssState",
    "apply_updates", "chain", "identity", "scale", "scale_by_schedule",
    "scale_by_learning_rate", "trace", "scale_by_adam", "scale_by_rms", "scale_by_stddev",
    "scale_by_rss", "add_decayed_weights", "clip", "clip_by_global_norm", "global_norm",
    "sgd", "adam", "adamw", "rmsprop", "adagrad",
    "constant_schedule", "exponential_decay", "cosine_decay_schedule", "polynomial_schedule",
    "linear_schedule", "piecewise_constant_schedule", "join_schedules",
    "warmup_cosine_decay_schedule", "warmup_exponential_decay_schedule",
]


class GradientTransformation(NamedTuple):
    """A pair of pure functions: ``init(params) -> state`` and
    ``update(updates, state, params=None) -> (updates, state)``."""
    init: Callable
    update: Callable


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


class ScaleByScheduleState(NamedTuple):
    count: Any


class TraceState(NamedTuple):
    trace: Any


class ScaleByAdamState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


class ScaleByRmsState(NamedTuple):
    nu: Any


class ScaleByRStdDevState(NamedTuple):
    mu: Any
    nu: Any


class ScaleByRssState(NamedTuple):
    sum_of_squares: Any


# ---------------------------------------------------------------------------------------------
# Helpers


def _dtype_of(x):
    return get_aval(x).dtype


def _cast_like(v, x):
    """A scalar or array ``v`` in x's dtype: float32 parameters stay float32."""
    dt = _dtype_of(x)
    if isinstance(v, (int, float)):
        return np.array(v, dt)
    return lax.convert_element_type(v, dt)


def _zeros_like(x):
    aval = get_aval(x)
    return lax.full(aval.shape, 0, aval.dtype)


def _full_like(x, v):
    aval = get_aval(x)
    return lax.full(aval.shape, v, aval.dtype)


def _zero_count():
    return lax.full((), 0, np.int32)


def _increment(count):
    return lax.add(count, np.int32(1))


def _as_float(count):
    return lax.convert_element_type(count, dtypes.default_float)


def apply_updates(params, updates):
    """params + updates, leaf by leaf, keeping each parameter's dtype."""
    return tree_map(lambda p, u: lax.convert_element_type(lax.add(p, u), _dtype_of(p))
                    if u is not None else p, params, updates, is_leaf=lambda x: x is None)


def chain(*transforms):
    """Apply transformations in sequence; the state is the tuple of their states."""
    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None):
        if len(state) != len(transforms):
            raise ValueError(f"chain: the state holds {len(state)} entries for "
                             f"{len(transforms)} transformations (was it made by this "
                             f"optimizer's init?)")
        new_state = []
        for t, s in zip(transforms, state):
            updates, s = t.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)
    return GradientTransformation(init, update)


def identity():
    """Pass the updates through unchanged."""
    return GradientTransformation(lambda params: EmptyState(),
                                  lambda updates, state, params=None: (updates, state))


def scale(step_size):
    """Multiply the updates by a constant."""
    def update(updates, state, params=None):
        return tree_map(lambda g: lax.mul(g, _cast_like(step_size, g)), updates), state
    return GradientTransformation(lambda params: EmptyState(), update)


def scale_by_schedule(step_size_fn):
    """Multiply the updates by ``step_size_fn(count)``, count being the number of updates
    made so far (0 at the first)."""
    def init(params):
        return ScaleByScheduleState(count=_zero_count())

    def update(updates, state, params=None):
        step = step_size_fn(state.count)
        updates = tree_map(lambda g: lax.mul(g, _cast_like(step, g)), updates)
        return updates, ScaleByScheduleState(count=_increment(state.count))
    return GradientTransformation(init, update)


def scale_by_learning_rate(learning_rate, flip_sign=True):
    """Scale by ``-learning_rate`` (a float or a schedule): gradient *descent*."""
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        return scale_by_schedule(lambda count: lax.mul(sign, learning_rate(count)))
    return scale(sign * learning_rate)


def trace(decay, nesterov=False):
    """Momentum: ``t = g + decay * t``; the update is ``t`` (or ``g + decay * t`` with
    Nesterov)."""
    def init(params):
        return TraceState(trace=tree_map(_zeros_like, params))

    def update(updates, state, params=None):
        f = lambda g, t: lax.add(g, lax.mul(_cast_like(decay, g), t))  # noqa: E731
        new_trace = tree_map(f, updates, state.trace)
        out = tree_map(f, updates, new_trace) if nesterov else new_trace
        return out, TraceState(trace=new_trace)
    return GradientTransformation(init, update)


def _bias_correction(moment, decay, count):
    # 1 - decay**count with a traced count: computed in float64, cast per leaf.
    correction = lax.sub(1.0, lax.pow(np.float64(decay), _as_float(count)))
    return tree_map(lambda t: lax.div(t, _cast_like(correction, t)), moment)


def _ema(updates, moments, decay, order):
    def f(g, m):
        d = _cast_like(decay, g)
        gp = g if order == 1 else lax.integer_pow(g, order)
        return lax.add(lax.mul(lax.sub(_cast_like(1.0, g), d), gp), lax.mul(d, m))
    return tree_map(f, updates, moments)


def scale_by_adam(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
    """Adam's scaling (Kingma & Ba, 2014): bias-corrected first and second moment
    estimates, ``m_hat / (sqrt(v_hat + eps_root) + eps)``."""
    def init(params):
        return ScaleByAdamState(count=_zero_count(), mu=tree_map(_zeros_like, params),
                                nu=tree_map(_zeros_like, params))

    def update(updates, state, params=None):
        mu = _ema(updates, state.mu, b1, 1)
        nu = _ema(updates, state.nu, b2, 2)
        count = _increment(state.count)
        mu_hat = _bias_correction(mu, b1, count)
        nu_hat = _bias_correction(nu, b2, count)
        out = tree_map(lambda m, v: lax.div(m, lax.add(lax.sqrt(lax.add(v, _cast_like(
            eps_root, v))), _cast_like(eps, v))), mu_hat, nu_hat)
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)
    return GradientTransformation(init, update)


def scale_by_rms(decay=0.9, eps=1e-8, initial_scale=0.0):
    """RMSProp's scaling: ``g / sqrt(v + eps)`` with ``v`` a moving average of ``g**2``."""
    def init(params):
        return ScaleByRmsState(nu=tree_map(lambda p: _full_like(p, initial_scale), params))

    def update(updates, state, params=None):
        nu = _ema(updates, state.nu, decay, 2)
        out = tree_map(lambda g, n: lax.mul(g, lax.rsqrt(lax.add(n, _cast_like(eps, n)))),
                       updates, nu)
        return out, ScaleByRmsState(nu=nu)
    return GradientTransformation(init, update)


def scale_by_stddev(decay=0.9, eps=1e-8, initial_scale=0.0):
    """Centered RMSProp's scaling: ``g / sqrt(v - m**2 + eps)``."""
    def init(params):
        return ScaleByRStdDevState(mu=tree_map(_zeros_like, params),
                                   nu=tree_map(lambda p: _full_like(p, initial_scale), params))

    def update(updates, state, params=None):
        mu = _ema(updates, state.mu, decay, 1)
        nu = _ema(updates, state.nu, decay, 2)
        out = tree_map(lambda g, m, n: lax.mul(g, lax.rsqrt(lax.add(
            lax.sub(n, lax.integer_pow(m, 2)), _cast_like(eps, n)))), updates, mu, nu)
        return out, ScaleByRStdDevState(mu=mu, nu=nu)
    return GradientTransformation(init, update)


def scale_by_rss(initial_accumulator_value=0.1, eps=1e-7):
    """Adagrad's scaling: ``g / sqrt(sum of g**2 + eps)`` (0 where the sum is 0)."""
    def init(params):
        return ScaleByRssState(sum_of_squares=tree_map(
            lambda p: _full_like(p, initial_accumulator_value), params))

    def update(updates, state, params=None):
        sos = tree_map(lambda g, s: lax.add(s, lax.integer_pow(g, 2)), updates,
                       state.sum_of_squares)

        def f(g, s):
            zero = _cast_like(0.0, s)
            inv = lax.select(lax.gt(s, zero), lax.rsqrt(lax.add(s, _cast_like(eps, s))),
                             _zeros_like(s))
            return lax.mul(inv, g)
        return tree_map(f, updates, sos), ScaleByRssState(sum_of_squares=sos)
    return GradientTransformation(init, update)


def add_decayed_weights(weight_decay=0.0, mask=None):
    """Add ``weight_decay * params`` to the updates (decoupled weight decay). ``mask`` (a
    pytree of bools like params, or a function of params returning one) limits the decay to
    the leaves marked True."""
    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_decayed_weights (and adamw) need the parameters: call "
                             "update(grads, state, params)")
        m = mask(params) if callable(mask) else mask
        if m is None:
            out = tree_map(lambda g, p: lax.add(g, lax.mul(_cast_like(weight_decay, g), p)),
                           updates, params)
        else:
            out = tree_map(lambda g, p, k: lax.add(g, lax.mul(_cast_like(weight_decay, g), p))
                           if k else g, updates, params, m)
        return out, state
    return GradientTransformation(lambda params: EmptyState(), update)


def clip(max_delta):
    """Clip every update element to [-max_delta, max_delta]."""
    def update(updates, state, params=None):
        return tree_map(lambda g: lax.clamp(_cast_like(-max_delta, g), g,
                                            _cast_like(max_delta, g)), updates), state
    return GradientTransformation(lambda params: EmptyState(), update)


def global_norm(updates):
    """The l2 norm of all leaves together."""
    leaves = tree_leaves(updates)
    if not leaves:
        return lax.full((), 0.0, dtypes.default_float)
    total = None
    for x in leaves:
        s = lax.reduce_sum(lax.integer_pow(x, 2))
        s = lax.convert_element_type(s, np.promote_types(_dtype_of(x), np.float32))
        total = s if total is None else lax.add(total, s)
    return lax.sqrt(total)


def clip_by_global_norm(max_norm):
    """Rescale all updates together so that their global norm is at most ``max_norm``."""
    def update(updates, state, params=None):
        g_norm = global_norm(updates)
        # max_norm / max(norm, max_norm): 1 below the threshold, never a 0/0.
        factor = lax.div(max_norm, lax.max(g_norm, lax.convert_element_type(
            max_norm, _dtype_of(g_norm))))
        return tree_map(lambda g: lax.mul(g, _cast_like(factor, g)), updates), state
    return GradientTransformation(lambda params: EmptyState(), update)


# ---------------------------------------------------------------------------------------------
# Optimizers


def sgd(learning_rate, momentum=None, nesterov=False):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""
    return chain(trace(momentum, nesterov) if momentum is not None else identity(),
                 scale_by_learning_rate(learning_rate))


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
    """Adam: ``p -= lr * m_hat / (sqrt(v_hat) + eps)``."""
    return chain(scale_by_adam(b1, b2, eps, eps_root), scale_by_learning_rate(learning_rate))


def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4,
          mask=None):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019):
    ``p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``."""
    return chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate, decay=0.9, eps=1e-8, initial_scale=0.0, centered=False,
            momentum=None, nesterov=False):
    """RMSProp (Tieleman & Hinton, 2012); ``centered`` divides by the running standard
    deviation instead of the root mean square; optional momentum on the scaled steps."""
    return chain(scale_by_stddev(decay, eps, initial_scale) if centered
                 else scale_by_rms(decay, eps, initial_scale),
                 scale_by_learning_rate(learning_rate),
                 trace(momentum, nesterov) if momentum is not None else identity())


def adagrad(learning_rate, initial_accumulator_value=0.1, eps=1e-7):
    """Adagrad (Duchi et al., 2011): steps shrink with the accumulated squared gradients."""
    return chain(scale_by_rss(initial_accumulator_value, eps),
                 scale_by_learning_rate(learning_rate))


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules: functions of the step count (a Python int or an int array, traced
# under jit), returning the value for that step.


def constant_schedule(value):
    """The same value at every step."""
    return lambda count: lax.full((), value, dtypes.default_float)


def exponential_decay(init_value, transition_steps, decay_rate, transition_begin=0,
                      staircase=False, end_value=None):
    """``init_value * decay_rate ** ((count - transition_begin) / transition_steps)``
    (the exponent floored with ``staircase``), constant before ``transition_begin`` and
    bounded by ``end_value`` if given."""
    if transition_steps <= 0:
        raise ValueError(f"exponential_decay: transition_steps must be positive, got "
                         f"{transition_steps}")

    def schedule(count):
        c = lax.sub(_as_float(count), float(transition_begin))
        p = lax.div(c, float(transition_steps))
        if staircase:
            p = lax.floor(p)
        value = lax.mul(float(init_value), lax.pow(np.float64(decay_rate), p))
        value = lax.select(lax.le(c, 0.0), lax.full((), init_value, dtypes.default_float),
                           value)
        if end_value is not None:
            bound = lax.full((), end_value, dtypes.default_float)
            value = lax.max(value, bound) if decay_rate < 1 else lax.min(value, bound)
        return value
    return schedule


def cosine_decay_schedule(init_value, decay_steps, alpha=0.0, exponent=1.0):
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``
    (Loshchilov & Hutter, 2017), constant afterwards."""
    if decay_steps <= 0:
        raise ValueError(f"cosine_decay_schedule: decay_steps must be positive, got "
                         f"{decay_steps}")

    def schedule(count):
        c = lax.min(_as_float(count), float(decay_steps))
        cosine = lax.mul(0.5, lax.add(1.0, lax.cos(lax.mul(math.pi / decay_steps, c))))
        decayed = lax.add(lax.mul(1.0 - alpha, lax.pow(cosine, float(exponent))), alpha)
        return lax.mul(float(init_value), decayed)
    return schedule


def polynomial_schedule(init_value, end_value, power, transition_steps, transition_begin=0):
    """From ``init_value`` to ``end_value`` along ``(1 - t)**power`` over ``transition_steps``
    steps starting at ``transition_begin``."""
    if transition_steps <= 0:
        return constant_schedule(init_value)

    def schedule(count):
        c = lax.clamp(0.0, lax.sub(_as_float(count), float(transition_begin)),
                      float(transition_steps))
        frac = lax.sub(1.0, lax.div(c, float(transition_steps)))
        return lax.add(lax.mul(float(init_value - end_value), lax.pow(frac, float(power))),
                       float(end_value))
    return schedule


def linear_schedule(init_value, end_value, transition_steps, transition_begin=0):
    """A straight line from ``init_value`` to ``end_value`` over ``transition_steps``."""
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def piecewise_constant_schedule(init_value, boundaries_and_scales=None):
    """``init_value`` multiplied by each ``scale`` once the count reaches its boundary."""
    items = sorted((boundaries_and_scales or {}).items())

    def schedule(count):
        c = _as_float(count)
        value = lax.full((), init_value, dtypes.default_float)
        for boundary, s in items:
            value = lax.select(lax.ge(c, float(boundary)), lax.mul(value, float(s)), value)
        return value
    return schedule


def join_schedules(schedules, boundaries):
    """Run ``schedules[i]`` from ``boundaries[i - 1]`` on, each seeing the count relative to
    its own start."""
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"join_schedules: {len(schedules)} schedules need "
                         f"{len(schedules) - 1} boundaries, got {len(boundaries)}")

    def schedule(count):
        c = _as_float(count)
        out = schedules[0](count)
        for boundary, sched in zip(boundaries, schedules[1:]):
            later = sched(lax.sub(c, float(boundary)))
            out = lax.select(lax.lt(c, float(boundary)), out, later)
        return out
    return schedule


def warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, decay_steps,
                                 end_value=0.0, exponent=1.0):
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine
    decay to ``end_value`` at step ``decay_steps`` (counted from 0, warmup included)."""
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         cosine_decay_schedule(peak_value, max(decay_steps - warmup_steps, 1), alpha,
                               exponent)],
        [warmup_steps])


def warmup_exponential_decay_schedule(init_value, peak_value, warmup_steps, transition_steps,
                                      decay_rate, transition_begin=0, staircase=False,
                                      end_value=None):
    """Linear warmup to ``peak_value``, then ``exponential_decay`` from it."""
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         exponential_decay(peak_value, transition_steps, decay_rate, transition_begin,
                           staircase, end_value)],
        [warmup_steps])

