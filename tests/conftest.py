"""Shared test settings.

* A lean hypothesis profile for CI (2 cores, numba compiles are slow).
* The ``backend`` fixture: every numerical test that takes it runs once per back end —
  ``eager`` (the numpy reference: primitives' impls, no jit), ``numpy`` (``jit`` with the
  numpy interpreter back end) and ``cpu`` (``jit`` lowered by the numba CPU back end) — so the
  same assertions check eager results and every jit back end. ``--backends=cuda`` (or
  ``FUNCTRAX_TEST_BACKENDS=cuda``) runs the same tests with ``jit(..., backend="cuda")``; that
  needs ``NUMBA_ENABLE_CUDASIM=1`` (or a GPU) and is what ``tests/test_cuda.py`` does in a
  subprocess, because numba fixes the simulator choice when ``numba.cuda`` is first imported.

Usage in a test::

    def test_sin(backend):
        f = backend(fnp.sin)            # f, or jit(f) on the back end, results on the host
        np.testing.assert_allclose(f(x), np.sin(x))
        check_grads(backend.jit(g), (x,), order=2)   # derivatives of the jitted g
"""
import os

# A compiled tier-up (whole small program, compiled loop) that fails or disagrees with the numpy
# driver falls back silently for users; in the tests it must fail loudly. Set before functrax
# is imported (the lowering reads it once).
os.environ.setdefault("FUNCTRAX_STRICT_TIERS", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FUNCTRAX_HYPOTHESIS_PROFILE", "ci"))

ALL_BACKENDS = ("eager", "numpy", "cpu", "cuda")
DEFAULT_BACKENDS = "eager,numpy,cpu"


def pytest_addoption(parser):
    parser.addoption(
        "--backends", default=os.environ.get("FUNCTRAX_TEST_BACKENDS", DEFAULT_BACKENDS),
        help="comma-separated back ends for tests that take the `backend` fixture "
             f"(any of {', '.join(ALL_BACKENDS)}; default {DEFAULT_BACKENDS})")


def _selected(config):
    names = [b.strip() for b in config.getoption("--backends").split(",") if b.strip()]
    bad = [b for b in names if b not in ALL_BACKENDS]
    if bad:
        raise pytest.UsageError(f"--backends: unknown back end(s) {bad}; choose from "
                                f"{', '.join(ALL_BACKENDS)}")
    return names


def _parametrized_by_hand(metafunc, name):
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc):
    # A test that lists its own back ends (test_backends.py's corpus) keeps them.
    if "backend" in metafunc.fixturenames and not _parametrized_by_hand(metafunc, "backend"):
        metafunc.parametrize("backend", _selected(metafunc.config), indirect=True,
                             scope="session")


def pytest_collection_modifyitems(config, items):
    # When only jit back ends are asked for (the simulated-CUDA run), the tests that never take
    # the fixture (or list other back ends by hand) would just repeat the main run: leave them
    # out.
    selected = _selected(config)
    if "eager" in selected:
        return

    def wanted(item):
        callspec = getattr(item, "callspec", None)
        return callspec is not None and callspec.params.get("backend") in selected

    keep = [it for it in items if wanted(it)]
    dropped = [it for it in items if not wanted(it)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_sessionfinish(session, exitstatus):
    # The simulated-CUDA run records every kernel it generated, so that the parent process
    # (where numba's real CUDA target is available) can compile each one to PTX.
    log = os.environ.get("FUNCTRAX_TEST_KERNEL_LOG")
    if not log:
        return
    import json
    import sys
    cuda = sys.modules.get("functrax.lowering.cuda")
    kernels = {}
    for k in (cuda.generated_kernels if cuda is not None else ()):
        kernels[k.source] = {"source": k.source, "style": k.style, "summary": k.summary,
                             "arg_types": [list(a) for a in k.arg_types]}
    with open(log, "w") as f:
        json.dump(list(kernels.values()), f)


class Backend:
    """One back end for the parametrized suite.

    ``backend.jit(f)`` is ``f`` itself for ``eager`` and ``functrax.jit(f, backend=name)``
    otherwise: use it where the function is transformed further (grad of it, check_grads).
    ``backend(f)`` is the same, with results fetched to the host as numpy arrays (a GPU back
    end returns device arrays) so that numpy's assertions apply to them directly.
    """

    def __init__(self, name):
        self.name = name
        self._once = {}

    @property
    def is_jit(self):
        return self.name != "eager"

    def jit(self, f, **jit_kwargs):
        if self.name == "eager":
            return f
        import functrax as ft
        return ft.jit(f, backend=self.name, **jit_kwargs)

    def __call__(self, f, **jit_kwargs):
        if self.name == "eager":
            return f
        jitted = self.jit(f, **jit_kwargs)
        if self.name != "cuda":
            return jitted
        import functools

        import functrax as ft
        from functrax import core

        @functools.wraps(f)
        def on_host(*args, **kwargs):
            out = jitted(*args, **kwargs)
            # Under an outer transformation the results are tracers: leave them be.
            return ft.tree_util.tree_map(
                lambda x: x if isinstance(x, core.Tracer) else ft.device_get(x), out)
        return on_host

    def once(self, f):
        """``self(f)``, made once per function and kept for the session: hypothesis examples
        that repeat an argument signature then reuse the compiled program, as repeated calls
        do (a new shape, dtype or weak type retraces, which the examples check too)."""
        g = self._once.get(f)
        if g is None:
            g = self._once[f] = self(f)
        return g

    def __repr__(self):
        return self.name


@pytest.fixture(scope="session")
def backend(request):
    return Backend(request.param)
