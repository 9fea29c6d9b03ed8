"""Every example runs to completion in smoke mode (a handful of steps each)."""
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
NAMES = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))


@pytest.mark.parametrize("name", NAMES)
def test_example_runs(name):
    env = dict(os.environ, FUNCTRAX_EXAMPLE_SMOKE="1")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip(), f"{name} printed nothing"
