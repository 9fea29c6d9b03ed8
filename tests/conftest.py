"""Shared test settings: a lean hypothesis profile for CI (2 cores, numba compiles are slow)."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FUNCTRAX_HYPOTHESIS_PROFILE", "ci"))
