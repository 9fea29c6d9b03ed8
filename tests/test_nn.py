"""functrax.nn: activations against numpy/scipy references, values and gradients at extreme
inputs, derivative checks at moderate inputs, vmap/jaxpr consistency, and the initializers.

Tests taking ``backend`` run eagerly and under ``jit`` on every back end with the same
assertions (jaxpr text/typecheck and error checks stay eager: they are about tracing)."""
import numpy as np
import pytest
import scipy.special
import scipy.stats

import functrax
import functrax.numpy as fnp
from functrax import nn, random
from functrax.core import eval_jaxpr
from functrax.nn import initializers
from functrax.test_util import check_grads

X = np.array([-3.0, -1.2, -0.3, 0.4, 1.1, 2.5])


def _sigmoid(x):
    return scipy.special.expit(x)


REFERENCE = {
    "relu": (nn.relu, lambda x: np.maximum(x, 0)),
    "relu6": (nn.relu6, lambda x: np.clip(x, 0, 6)),
    "leaky_relu": (nn.leaky_relu, lambda x: np.where(x >= 0, x, 0.01 * x)),
    "elu": (nn.elu, lambda x: np.where(x > 0, x, np.expm1(x))),
    "celu": (lambda x: nn.celu(x, 2.0), lambda x: np.where(x > 0, x, 2 * np.expm1(x / 2))),
    "selu": (nn.selu, lambda x: 1.0507009873554805 * np.where(
        x > 0, x, 1.6732632423543772 * np.expm1(x))),
    "gelu_tanh": (nn.gelu, lambda x: 0.5 * x * (1 + np.tanh(
        np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    "gelu_exact": (lambda x: nn.gelu(x, approximate=False),
                   lambda x: x * scipy.stats.norm.cdf(x)),
    "silu": (nn.silu, lambda x: x * _sigmoid(x)),
    "swish": (nn.swish, lambda x: x * _sigmoid(x)),
    "sigmoid": (nn.sigmoid, _sigmoid),
    "log_sigmoid": (nn.log_sigmoid, lambda x: np.log(_sigmoid(x))),
    "softplus": (nn.softplus, lambda x: np.logaddexp(x, 0)),
    "soft_sign": (nn.soft_sign, lambda x: x / (1 + np.abs(x))),
    "hard_tanh": (nn.hard_tanh, lambda x: np.clip(x, -1, 1)),
    "hard_sigmoid": (nn.hard_sigmoid, lambda x: np.clip(x + 3, 0, 6) / 6),
    "hard_silu": (nn.hard_silu, lambda x: x * np.clip(x + 3, 0, 6) / 6),
    "softmax": (nn.softmax, scipy.special.softmax),
    "log_softmax": (nn.log_softmax, scipy.special.log_softmax),
    "logsumexp": (nn.logsumexp, scipy.special.logsumexp),
    "standardize": (nn.standardize, lambda x: (x - x.mean()) / np.sqrt(x.var() + 1e-5)),
}

SMOOTH = ["elu", "celu", "selu", "gelu_tanh", "gelu_exact", "silu", "sigmoid", "log_sigmoid",
          "softplus", "soft_sign", "softmax", "log_softmax", "logsumexp", "standardize"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_values_against_reference(name, backend):
    f, ref = REFERENCE[name]
    jf = backend(f)
    np.testing.assert_allclose(jf(X), ref(X), rtol=1e-12, atol=1e-12)
    x32 = X.astype(np.float32)
    out32 = jf(x32)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, ref(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SMOOTH)
def test_derivatives_at_moderate_inputs(name, backend):
    f, _ = REFERENCE[name]
    check_grads(backend.jit(f), (X,), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_vmap(name, backend):
    f, _ = REFERENCE[name]
    xs = np.stack([X, -X, 2 * X])
    np.testing.assert_allclose(backend(functrax.vmap(f))(xs), np.stack([f(x) for x in xs]),
                               rtol=1e-13)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_jaxprs_typecheck(name):
    # Traced programs, independent of any back end: eager only.
    f, _ = REFERENCE[name]
    xs = np.stack([X, -X, 2 * X])
    closed = functrax.make_jaxpr(f)(X)
    functrax.typecheck_jaxpr(closed)
    np.testing.assert_allclose(eval_jaxpr(closed.jaxpr, closed.consts, X)[0], f(X))
    g = lambda x: fnp.sum(f(x))  # noqa: E731
    functrax.typecheck_jaxpr(functrax.make_jaxpr(functrax.grad(g))(X))
    functrax.typecheck_jaxpr(functrax.make_jaxpr(functrax.vmap(functrax.grad(g)))(xs))


def _grad(f, x, backend=None):
    g = functrax.grad(lambda v: fnp.sum(f(v)))
    return (backend(g) if backend is not None else g)(np.asarray(x, np.float64))


def test_softplus_and_log_sigmoid_extremes(backend):
    big = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    sp = backend(nn.softplus)(big)
    np.testing.assert_allclose(sp, np.logaddexp(big, 0))
    assert float(backend(nn.softplus)(1000.0)) == 1000.0
    np.testing.assert_allclose(_grad(nn.softplus, big, backend), _sigmoid(big))
    np.testing.assert_allclose(backend(nn.log_sigmoid)(big), -np.logaddexp(-big, 0))
    np.testing.assert_allclose(_grad(nn.log_sigmoid, big, backend), _sigmoid(-big))
    # second derivative, finite everywhere (including exactly at 0)
    h = backend(functrax.vmap(functrax.grad(functrax.grad(nn.softplus))))(big)
    np.testing.assert_allclose(h, _sigmoid(big) * _sigmoid(-big), atol=1e-300)


def test_softmax_family_extremes(backend):
    log_softmax, softmax, logsumexp = (backend(nn.log_softmax), backend(nn.softmax),
                                       backend(nn.logsumexp))
    x = np.array([1000.0, 0.0])
    np.testing.assert_allclose(log_softmax(x), [0.0, -1000.0])
    np.testing.assert_allclose(softmax(x), [1.0, 0.0])
    g = backend(functrax.grad(lambda v: nn.log_softmax(v)[1]))(x)
    np.testing.assert_allclose(g, [-1.0, 1.0])
    assert np.all(np.isfinite(backend(functrax.jacrev(nn.softmax))(x)))
    np.testing.assert_allclose(logsumexp(np.array([1000.0, 1000.0])), 1000 + np.log(2))
    # -inf entries contribute nothing and get a zero gradient
    m = np.array([0.0, -np.inf, np.log(3.0)])
    np.testing.assert_allclose(logsumexp(m), np.log(4.0))
    np.testing.assert_allclose(_grad(nn.logsumexp, m, backend), [0.25, 0.0, 0.75])
    np.testing.assert_allclose(softmax(m), [0.25, 0.0, 0.75])
    np.testing.assert_allclose(_grad(lambda v: nn.log_softmax(v)[0], m, backend),
                               [0.75, 0.0, -0.75])
    assert float(logsumexp(np.array([-np.inf, -np.inf]))) == -np.inf
    assert float(logsumexp(np.array([np.inf, 0.0]))) == np.inf


def test_logsumexp_axes_keepdims_and_b(backend):
    a = np.random.default_rng(0).normal(size=(3, 4, 5))
    # axis and keepdims are static: closed over
    for axis in (None, 0, -1, (0, 2)):
        for keepdims in (False, True):
            np.testing.assert_allclose(
                backend(lambda v: nn.logsumexp(v, axis=axis, keepdims=keepdims))(a),
                scipy.special.logsumexp(a, axis=axis, keepdims=keepdims), rtol=1e-12)
    b = np.abs(a) + 0.1
    np.testing.assert_allclose(backend(lambda v, b: nn.logsumexp(v, axis=1, b=b))(a, b),
                               scipy.special.logsumexp(a, axis=1, b=b), rtol=1e-12)
    np.testing.assert_allclose(backend(lambda v: nn.softmax(v, axis=(0, 1)))(a),
                               scipy.special.softmax(a, axis=(0, 1)), rtol=1e-12)
    check_grads(backend.jit(lambda v: nn.logsumexp(v, axis=1)), (a,), order=1)


def test_relu_family_kinks_follow_jax(backend):
    assert float(_grad(nn.relu, 0.0, backend)) == 0.0
    np.testing.assert_array_equal(_grad(nn.relu, [-1.0, 2.0], backend), [0.0, 1.0])
    np.testing.assert_array_equal(_grad(nn.relu6, [0.0, 3.0, 6.0, 7.0], backend),
                                  [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(_grad(nn.leaky_relu, [-1.0, 1.0], backend), [0.01, 1.0])


def test_elu_and_gelu_extremes(backend):
    big = np.array([-1000.0, 1000.0])
    np.testing.assert_allclose(backend(nn.elu)(big), [-1.0, 1000.0])
    np.testing.assert_allclose(_grad(nn.elu, big, backend), [0.0, 1.0])
    np.testing.assert_allclose(backend(nn.gelu)(big), [0.0, 1000.0])
    np.testing.assert_allclose(backend(lambda v: nn.gelu(v, approximate=False))(big),
                               [0.0, 1000.0])
    for approx in (True, False):
        g = _grad(lambda v: nn.gelu(v, approx), big, backend)
        np.testing.assert_allclose(g, [0.0, 1.0])
    np.testing.assert_allclose(_grad(nn.silu, big, backend), [0.0, 1.0])
    np.testing.assert_allclose(backend(nn.sigmoid)(big), [0.0, 1.0])
    np.testing.assert_allclose(_grad(nn.sigmoid, big, backend), [0.0, 0.0])


def test_one_hot(backend):
    x = np.array([0, 2, 5, -1])
    oh = backend(lambda v: nn.one_hot(v, 3))(x)
    np.testing.assert_array_equal(oh, [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    assert oh.dtype == np.float64
    assert backend(lambda v: nn.one_hot(v, 3, dtype=np.float32))(x).dtype == np.float32
    np.testing.assert_array_equal(backend(lambda v: nn.one_hot(v, 3, axis=0))(x), oh.T)
    xs = np.array([[0, 1], [2, 2]])
    np.testing.assert_array_equal(backend(functrax.vmap(lambda v: nn.one_hot(v, 3)))(xs),
                                  np.stack([nn.one_hot(v, 3) for v in xs]))


def test_standardize_options(backend):
    a = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 6))
    s = backend(lambda v: nn.standardize(v, axis=0))(a)
    np.testing.assert_allclose(s.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(s.var(0), 1, atol=1e-4)
    m = a.mean(-1, keepdims=True)
    v = a.var(-1, keepdims=True)
    np.testing.assert_allclose(
        backend(lambda a, m, v: nn.standardize(a, mean=m, variance=v, epsilon=0.0))(a, m, v),
        (a - m) / np.sqrt(v))


def test_glu(backend):
    x = np.arange(8.0).reshape(2, 4) / 4
    np.testing.assert_allclose(backend(nn.glu)(x), x[:, :2] * _sigmoid(x[:, 2:]))
    with pytest.raises(ValueError, match="even"):
        nn.glu(np.ones(3))


# --- initializers -------------------------------------------------------------------------------

KEY = random.key(0)


@pytest.mark.parametrize("name,scale,mode,dist", [
    ("glorot_uniform", 1.0, "fan_avg", "uniform"),
    ("glorot_normal", 1.0, "fan_avg", "truncated_normal"),
    ("he_uniform", 2.0, "fan_in", "uniform"),
    ("he_normal", 2.0, "fan_in", "truncated_normal"),
    ("lecun_uniform", 1.0, "fan_in", "uniform"),
    ("lecun_normal", 1.0, "fan_in", "truncated_normal"),
])
def test_variance_scaling_initializers(name, scale, mode, dist, backend):
    # 20000 draws pin the variance to about 1% (each element costs ~25 us on the simulated
    # CUDA back end, so no more than the statistics need)
    shape = (100, 200)
    init = getattr(initializers, name)()
    w = backend(lambda k: init(k, shape))(KEY)
    # jitted, the same key gives the eager draw (to rounding of the compiled erfinv/sqrt)
    np.testing.assert_allclose(w, init(KEY, shape), rtol=1e-12, atol=1e-15)
    assert w.shape == shape and w.dtype == np.float64
    fan = {"fan_in": 100, "fan_out": 200, "fan_avg": 150}[mode]
    np.testing.assert_allclose(w.var(), scale / fan, rtol=0.05)
    assert abs(w.mean()) < 0.01
    if dist == "uniform":
        assert np.abs(w).max() <= np.sqrt(3 * scale / fan)
    else:
        assert np.abs(w).max() <= 2 * np.sqrt(scale / fan) / 0.87962566103423978 + 1e-12
    assert backend(lambda k: init(k, (3, 4), np.float32))(KEY).dtype == np.float32


def test_conv_kernel_fans_and_normal_variant(backend):
    init = initializers.variance_scaling(2.0, "fan_in", "normal")
    w = backend(lambda k: init(k, (3, 3, 32, 64)))(KEY)
    np.testing.assert_allclose(w.var(), 2.0 / (3 * 3 * 32), rtol=0.05)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        initializers.glorot_normal()(KEY, (5,))


def test_simple_initializers(backend):
    assert np.all(backend(lambda k: initializers.zeros(k, (2, 3)))(KEY) == 0)
    assert backend(lambda k: initializers.ones(k, (2,), np.float32))(KEY).dtype == np.float32
    assert np.all(backend(lambda k: initializers.constant(0.5)(k, (2,)))(KEY) == 0.5)
    u = backend(lambda k: initializers.uniform(0.5)(k, (1000,)))(KEY)
    assert u.min() >= 0 and u.max() < 0.5
    n = backend(lambda k: initializers.normal(0.1)(k, (20000,)))(KEY)
    np.testing.assert_allclose(n.std(), 0.1, rtol=0.03)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (3, 2, 5)])
def test_orthogonal(shape, backend):
    w = backend(lambda k: initializers.orthogonal(scale=2.0)(k, shape))(KEY)
    assert w.shape == shape
    m = np.asarray(w).reshape(-1, shape[-1])
    if m.shape[0] >= m.shape[1]:
        np.testing.assert_allclose(m.T @ m, 4 * np.eye(m.shape[1]), atol=1e-10)
    else:
        np.testing.assert_allclose(m @ m.T, 4 * np.eye(m.shape[0]), atol=1e-10)


def test_initializers_vmap_over_keys(backend):
    init = initializers.he_normal()
    keys = random.split(KEY, 3)
    # (jitted, the compiled erfinv may round differently from numpy's in the last place)
    np.testing.assert_allclose(backend(functrax.vmap(lambda k: init(k, (4, 5))))(keys),
                               np.stack([init(k, (4, 5)) for k in keys]), rtol=1e-12,
                               atol=1e-15)
