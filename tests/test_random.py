"""functrax.random: Threefry known answers, key handling, distributions (moments and KS
statistics at a fixed seed), shapes and dtypes, vmap over keys, tracing (jit / make_jaxpr)
and reparameterized gradients.

Tests taking ``backend`` run eagerly and under ``jit`` on every back end. Random bits are pure
integer arithmetic, so a jitted sampler must give exactly the eager sampler's bits; the
float distributions built on them are compared to eager with a tight tolerance (a compiled
transcendental may round differently in the last place)."""
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, strategies as st

import functrax
import functrax.numpy as fnp
from functrax import lax, random
from functrax.test_util import check_grads


def _same_draw(got, want):
    """A jitted draw equals the eager one: integers and bools bit for bit, floats to a few
    ulps (numba's and numpy's log/erfinv/sqrt may differ in the last place)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    if np.issubdtype(want.dtype, np.floating):
        rtol = 1e-5 if want.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    else:
        np.testing.assert_array_equal(got, want)


# --- Threefry ---------------------------------------------------------------------------------

# Random123's known-answer vectors for threefry2x32 with 20 rounds: (key, counter) -> output.
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6b200159, 0x99ba4efe)),
    ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
    ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0)),
]


@pytest.mark.parametrize("key,ctr,expected", KAT)
def test_threefry_known_answers(key, ctr, expected, backend):
    u = np.uint32
    out = backend(lax.threefry2x32)(u(key[0]), u(key[1]), u(ctr[0]), u(ctr[1]))
    assert [int(o) for o in out] == list(expected)


def test_threefry_broadcasts_and_vectorizes(backend):
    u = np.uint32
    k1, k2, x1, x2 = [np.array(col, np.uint32) for col in
                      zip(*[key + ctr for key, ctr, _ in KAT])]
    tf = backend(lax.threefry2x32)
    y1, y2 = tf(k1, k2, x1, x2)
    assert [int(v) for v in y1] == [e[0] for _, _, e in KAT]
    assert [int(v) for v in y2] == [e[1] for _, _, e in KAT]
    # a scalar key against a vector of counters
    z1, z2 = tf(u(0), u(0), np.zeros((2, 3), np.uint32), u(0))
    assert z1.shape == (2, 3) and np.all(z1 == 0x6b200159) and np.all(z2 == 0x99ba4efe)


def test_threefry_type_errors_name_the_op():
    with pytest.raises(TypeError, match=r"threefry2x32.*uint32.*int64") as e:
        lax.threefry2x32(np.uint32(0), np.uint32(0), np.int64(0), np.uint32(0))
    assert "test_random.py" in str(e.value)
    with pytest.raises(TypeError, match=r"threefry2x32.*\(3,\).*\(4,\)"):
        lax.threefry2x32(np.uint32(0), np.uint32(0), np.zeros(3, np.uint32),
                         np.zeros(4, np.uint32))


def test_threefry_vmap_jaxpr_and_zero_derivative(backend):
    k = np.arange(6, dtype=np.uint32).reshape(3, 2)
    x = np.arange(8, dtype=np.uint32).reshape(2, 4)

    def f(key, ctr):
        return lax.threefry2x32(key[0], key[1], ctr[0], ctr[1])

    got = backend(functrax.vmap(f, in_axes=(0, None)))(k, x)
    want = [np.stack([f(ki, x)[i] for ki in k]) for i in range(2)]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    got = backend(functrax.vmap(f, in_axes=(None, 1)))(k[0], x)
    np.testing.assert_array_equal(got[0], np.stack([f(k[0], x[:, j])[0] for j in range(4)]))
    closed = functrax.make_jaxpr(f)(k[0], x)
    functrax.typecheck_jaxpr(closed)
    assert "threefry2x32" in str(closed)
    functrax.typecheck_jaxpr(functrax.make_jaxpr(functrax.vmap(f, in_axes=(0, None)))(k, x))
    # Random bits do not depend differentiably on anything: a float computed from them has
    # a zero gradient with respect to a float it is multiplied into.
    g = backend(functrax.grad(lambda s: fnp.sum(s * lax.convert_element_type(
        f(k[0], x)[0], np.float64))))(1.0)
    assert float(g) == float(np.sum(f(k[0], x)[0].astype(np.float64)))


# --- keys ---------------------------------------------------------------------------------------

def test_keys_match_jax(backend):
    assert random.key(0).tolist() == [0, 0]
    assert random.PRNGKey(42).dtype == np.uint32
    assert random.key(2 ** 32 + 5).tolist() == [1, 5]
    assert random.key(-1).tolist() == [0xffffffff, 0xffffffff]
    # JAX's documented split of PRNGKey(0).
    assert backend(random.split)(random.key(0)).tolist() == [[4146024105, 967050713],
                                                             [2718843009, 1272950319]]


def test_key_from_traced_seed(backend):
    # Eagerly the seed is concrete; under jit it is a traced int64 (the words are then
    # computed with lax ops rather than numpy).
    key = backend(lambda s: random.key(s))
    k = key(np.int64(2 ** 32 + 5))
    assert k.dtype == np.uint32 and k.tolist() == [1, 5]
    k = key(np.int64(-1))
    assert k.tolist() == [0xffffffff, 0xffffffff]


def test_split_and_fold_in_shapes_determinism(backend):
    k = random.key(7)
    assert backend(lambda k: random.split(k, 5))(k).shape == (5, 2)
    assert backend(lambda k: random.split(k, (2, 3)))(k).shape == (2, 3, 2)
    np.testing.assert_array_equal(backend(lambda k: random.split(k, 3))(k), random.split(k, 3))
    fold = backend(random.fold_in)  # the data is traced under jit, concrete eagerly
    assert not np.array_equal(fold(k, 1), fold(k, 2))
    np.testing.assert_array_equal(fold(k, 3), random.fold_in(k, 3))
    # fold_in with a traced integer equals fold_in with a Python int
    np.testing.assert_array_equal(backend(lambda d: random.fold_in(k, d))(np.int32(3)),
                                  random.fold_in(k, 3))
    keys = backend(lambda k: random.split(k, 10))(k)
    assert len({tuple(r) for r in keys.tolist()}) == 10


def test_bad_key_is_explained():
    with pytest.raises(TypeError, match=r"random.normal: expected a PRNG key.*f64\[2\]"):
        random.normal(np.zeros(2), (3,))
    with pytest.raises(TypeError, match="vmap"):
        random.uniform(random.split(random.key(0), 3), (2,))


def test_split_keys_are_independent(backend):
    k1, k2 = backend(random.split)(random.key(123))
    normal = backend(lambda k: random.normal(k, (20000,)))
    a = normal(k1)
    b = normal(k2)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    c = normal(backend(lambda k: random.fold_in(k, 0))(k1))
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.03


# --- distributions ------------------------------------------------------------------------------

N = 20000
KEY = random.key(2024)


def _ks(samples, cdf):
    return scipy.stats.kstest(np.asarray(samples, np.float64), cdf).statistic


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform(dtype, backend):
    x = backend(lambda k: random.uniform(k, (N,), dtype))(KEY)
    _same_draw(x, random.uniform(KEY, (N,), dtype))
    assert x.dtype == dtype and x.shape == (N,)
    assert np.all((x >= 0) & (x < 1))
    assert _ks(x, scipy.stats.uniform.cdf) < 0.015
    y = backend(lambda k: random.uniform(k, (N,), dtype, minval=-2.0, maxval=3.0))(KEY)
    assert np.all((y >= -2) & (y < 3))
    assert _ks(y, scipy.stats.uniform(-2, 5).cdf) < 0.015
    # Same bits, affine map: the scaled draw is the unit draw moved.
    np.testing.assert_allclose(y, x * 5 - 2, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6)


def test_uniform_parameter_shapes(backend):
    lo = np.array([0.0, 10.0, 20.0])
    x = backend(lambda k, lo, hi: random.uniform(k, (4, 3), minval=lo, maxval=hi))(
        KEY, lo, lo + 1)
    assert np.all((x >= lo) & (x < lo + 1))
    with pytest.raises(ValueError, match=r"random.uniform: shape \(2,\).*\(3,\)"):
        random.uniform(KEY, (2,), minval=lo)
    with pytest.raises(TypeError, match="floating-point"):
        random.uniform(KEY, (2,), np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normal(dtype, backend):
    x = backend(lambda k: random.normal(k, (N,), dtype))(KEY)
    _same_draw(x, random.normal(KEY, (N,), dtype))
    assert x.dtype == dtype
    assert abs(x.mean()) < 0.03 and abs(x.var() - 1) < 0.04
    assert _ks(x, scipy.stats.norm.cdf) < 0.015
    assert np.all(np.isfinite(x))


def test_truncated_normal(backend):
    x = backend(lambda k, lo, hi: random.truncated_normal(k, lo, hi, (N,)))(KEY, -1.0, 2.0)
    _same_draw(x, random.truncated_normal(KEY, -1.0, 2.0, (N,)))
    assert np.all((x >= -1) & (x <= 2))
    assert _ks(x, scipy.stats.truncnorm(-1.0, 2.0).cdf) < 0.015
    # far in the tail the samples still respect the bounds
    t = backend(lambda k: random.truncated_normal(k, 5.0, 6.0, (1000,)))(KEY)
    assert np.all((t >= 5) & (t <= 6))
    lower = np.array([-1.0, 0.0])
    y = backend(lambda k, lo: random.truncated_normal(k, lo, 1.0))(KEY, lower)
    assert y.shape == (2,)


@pytest.mark.parametrize("name,dist", [("gumbel", scipy.stats.gumbel_r),
                                       ("exponential", scipy.stats.expon),
                                       ("laplace", scipy.stats.laplace)])
def test_standard_distributions(name, dist, backend):
    sample = getattr(random, name)
    x = backend(lambda k: sample(k, (N,)))(KEY)
    _same_draw(x, sample(KEY, (N,)))
    assert x.shape == (N,) and x.dtype == np.float64 and np.all(np.isfinite(x))
    assert _ks(x, dist.cdf) < 0.015
    assert abs(x.mean() - dist.mean()) < 0.05
    assert backend(lambda k: sample(k, (3,), np.float32))(KEY).dtype == np.float32


def test_bernoulli(backend):
    b = backend(lambda k, p: random.bernoulli(k, p, (N,)))(KEY, 0.3)
    _same_draw(b, random.bernoulli(KEY, 0.3, (N,)))
    assert b.dtype == np.bool_
    assert abs(b.mean() - 0.3) < 0.015
    p = np.array([0.0, 1.0, 0.5])
    bp = backend(random.bernoulli)(KEY, p)
    assert bp.shape == (3,) and not bp[0] and bp[1]
    assert backend(lambda k, p: random.bernoulli(k, p, (10, 3)))(KEY, p).shape == (10, 3)


def test_randint(backend):
    r = backend(lambda k, lo, hi: random.randint(k, (N,), lo, hi))(KEY, 3, 10)
    _same_draw(r, random.randint(KEY, (N,), 3, 10))
    assert r.dtype == np.int64 and r.min() == 3 and r.max() == 9
    counts = np.bincount(r - 3, minlength=7)
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    r32 = backend(lambda k: random.randint(k, (5,), -(2 ** 31), 2 ** 31 - 1, np.int32))(KEY)
    assert r32.dtype == np.int32
    # a maxval above the dtype's range covers the whole range
    b = backend(lambda k: random.randint(k, (4000,), 0, 256, np.uint8))(KEY)
    assert b.dtype == np.uint8 and b.max() > 250 and b.min() < 5
    # an empty range gives minval
    np.testing.assert_array_equal(backend(lambda k: random.randint(k, (3,), 5, 5))(KEY),
                                  [5, 5, 5])
    # array bounds
    lo = np.array([0, 100])
    rr = backend(lambda k, lo, hi: random.randint(k, (50, 2), lo, hi))(KEY, lo, lo + 3)
    assert np.all((rr >= lo) & (rr < lo + 3))


def test_categorical(backend):
    logits = np.log(np.array([0.1, 0.2, 0.7]))
    c = backend(lambda k, lg: random.categorical(k, lg, shape=(N,)))(KEY, logits)
    _same_draw(c, random.categorical(KEY, logits, shape=(N,)))
    freq = np.bincount(c, minlength=3) / N
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.015)
    batch = np.log(np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]) + 1e-30)
    cb = backend(lambda k, lg: random.categorical(k, lg, shape=(100, 2)))(KEY, batch)
    assert cb.shape == (100, 2) and np.all(cb[:, 1] == 2) and np.all(cb[:, 0] < 2)
    ca = backend(lambda k, lg: random.categorical(k, lg, axis=0))(KEY, batch.T)
    assert ca.shape == (2,) and ca[1] == 2
    # -inf logits are never drawn
    assert np.all(backend(lambda k, lg: random.categorical(k, lg, shape=(500,)))(
        KEY, np.array([0.0, -np.inf])) == 0)


def test_permutation(backend):
    p = backend(lambda k: random.permutation(k, 100))(KEY)
    _same_draw(p, random.permutation(KEY, 100))
    assert sorted(p.tolist()) == list(range(100)) and p.tolist() != list(range(100))
    x = np.arange(12.0).reshape(4, 3)
    px = backend(lambda k, x: random.permutation(k, x, axis=0))(KEY, x)
    assert sorted(px[:, 0].tolist()) == [0, 3, 6, 9]
    np.testing.assert_array_equal(px[:, 1] - px[:, 0], 1)  # rows move as wholes
    pc = backend(lambda k, x: random.permutation(k, x, axis=1))(KEY, x)
    np.testing.assert_array_equal(np.sort(pc, axis=1), x)
    pi = backend(lambda k, x: random.permutation(k, x, axis=1, independent=True))(
        KEY, np.tile(np.arange(50), (4, 1)))
    assert len({tuple(r) for r in pi.tolist()}) > 1
    # each position is uniform over the values
    # (one batched draw over 800 keys: vmap matches a loop over keys, see
    # test_vmap_over_keys_and_jit, and 800 separate calls cost seconds eagerly)
    firsts = backend(functrax.vmap(lambda k: random.permutation(k, 4)[0]))(
        random.split(KEY, 800))
    assert scipy.stats.chisquare(np.bincount(firsts, minlength=4)).pvalue > 1e-3


def test_choice(backend):
    c = backend(lambda k: random.choice(k, 5, (N,)))(KEY)
    assert set(np.unique(c).tolist()) == set(range(5))
    _same_draw(c, random.choice(KEY, 5, (N,)))
    nr = backend(lambda k: random.choice(k, 10, (10,), replace=False))(KEY)
    assert sorted(nr.tolist()) == list(range(10))
    p = np.array([0.1, 0.0, 0.6, 0.3])
    cp = backend(lambda k, p: random.choice(k, 4, (N,), p=p))(KEY, p)
    np.testing.assert_allclose(np.bincount(cp, minlength=4) / N, p, atol=0.015)
    _same_draw(cp, random.choice(KEY, 4, (N,), p=p))
    cnr = backend(lambda k, p: random.choice(k, 4, (3,), replace=False, p=p))(KEY, p)
    assert len(set(cnr.tolist())) == 3 and 1 not in cnr.tolist()
    a = np.arange(10.0).reshape(5, 2)
    ca = backend(lambda k, a: random.choice(k, a, (3,)))(KEY, a)
    assert ca.shape == (3, 2) and np.all(ca[:, 1] - ca[:, 0] == 1)
    with pytest.raises(ValueError, match="larger sample"):
        random.choice(KEY, 3, (4,), replace=False)


def test_multivariate_normal(backend):
    mean = np.array([1.0, -2.0])
    cov = np.array([[2.0, 0.6], [0.6, 1.0]])
    for method in ("cholesky", "eigh"):
        x = backend(lambda k, m, c: random.multivariate_normal(k, m, c, (N,), method=method))(
            KEY, mean, cov)
        assert x.shape == (N, 2)
        # (the factorizations may round differently compiled: compare loosely)
        np.testing.assert_allclose(
            x, random.multivariate_normal(KEY, mean, cov, (N,), method=method),
            rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(x.mean(0), mean, atol=0.05)
        np.testing.assert_allclose(np.cov(x.T), cov, atol=0.06)
    xb = backend(random.multivariate_normal)(KEY, np.zeros((3, 2)), np.eye(2))
    assert xb.shape == (3, 2)


def test_bits(backend):
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        b = backend(lambda k: random.bits(k, (7,), dt))(KEY)
        assert b.dtype == dt and b.shape == (7,)
        _same_draw(b, random.bits(KEY, (7,), dt))
    b8 = backend(lambda k: random.bits(k, (N,), np.uint8))(KEY)
    assert scipy.stats.chisquare(np.bincount(b8, minlength=256)).pvalue > 1e-3
    # The 32-bit draw is the first half of the counter stream
    b32 = backend(lambda k: random.bits(k, (4,)))(KEY)
    assert b32.dtype == np.uint32


_DRAWS = {}


def _draws(backend, n):
    """The (uniform, normal) samplers of n draws on a back end, built once per (back end, n)
    so that the hypothesis examples reuse the compiled programs."""
    if (backend.name, n) not in _DRAWS:
        _DRAWS[backend.name, n] = (backend(lambda k: random.uniform(k, (n,))),
                                   backend(lambda k: random.normal(k, (n,))))
    return _DRAWS[backend.name, n]


@given(st.integers(0, 2 ** 63 - 1), st.integers(1, 5))
def test_determinism(backend, seed, n):
    # The same key gives the same draw: eagerly twice, and jitted against eager.
    k = random.key(seed)
    uniform, normal = _draws(backend, n)
    np.testing.assert_array_equal(uniform(k), random.uniform(k, (n,)))
    np.testing.assert_array_equal(normal(k), random.normal(k, (n,)))


# --- transformations ----------------------------------------------------------------------------

SAMPLERS = {
    "uniform": lambda k: random.uniform(k, (3,)),
    "normal32": lambda k: random.normal(k, (2, 2), np.float32),
    "truncated_normal": lambda k: random.truncated_normal(k, -1.0, 1.0, (3,)),
    "bernoulli": lambda k: random.bernoulli(k, 0.5, (4,)),
    "categorical": lambda k: random.categorical(k, np.zeros((2, 3))),
    "randint": lambda k: random.randint(k, (3,), 0, 10),
    "permutation": lambda k: random.permutation(k, 6),
    "choice": lambda k: random.choice(k, 6, (3,), replace=False),
    "choice_p": lambda k: random.choice(k, 4, (3,), p=np.array([0.1, 0.2, 0.3, 0.4])),
    "gumbel": lambda k: random.gumbel(k, (2,)),
    "exponential": lambda k: random.exponential(k, (2,)),
    "laplace": lambda k: random.laplace(k, (2,)),
    "mvn": lambda k: random.multivariate_normal(k, np.zeros(2), np.eye(2)),
    "split": lambda k: random.split(k, 3),
    "fold_in": lambda k: random.fold_in(k, 5),
    "bits64": lambda k: random.bits(k, (3,), np.uint64),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_vmap_over_keys_and_jit(name, backend):
    f = SAMPLERS[name]
    keys = random.split(random.key(3), 4)
    batched = backend(functrax.vmap(f))(keys)
    looped = np.stack([np.asarray(f(k)) for k in keys])
    _same_draw(batched, looped)
    _same_draw(backend(f)(keys[0]), f(keys[0]))
    closed = functrax.make_jaxpr(functrax.vmap(f))(keys)
    functrax.typecheck_jaxpr(closed)


def test_reparameterized_gradients(backend):
    k = random.key(9)
    z = random.normal(k, (5,))
    g_mu, g_sigma = backend(functrax.grad(
        lambda mu, sigma: fnp.sum(mu + sigma * random.normal(k, (5,))), argnums=(0, 1)))(0.5, 2.0)
    assert float(g_mu) == 5.0
    np.testing.assert_allclose(g_sigma, z.sum())
    check_grads(backend.jit(lambda lo, hi: random.uniform(k, (4,), minval=lo, maxval=hi)),
                (-1.0, 2.0), order=2)
    check_grads(backend.jit(lambda lo, hi: random.truncated_normal(k, lo, hi, (4,))),
                (-1.0, 1.5), order=1, modes=("rev",))
    cov = np.array([[2.0, 0.3], [0.3, 1.0]])
    check_grads(backend.jit(lambda m, c: random.multivariate_normal(k, m, c)),
                (np.zeros(2), cov), order=1, modes=("rev",))
    functrax.typecheck_jaxpr(functrax.make_jaxpr(functrax.grad(
        lambda s: fnp.sum(s * random.normal(k, (3,)))))(1.0))
