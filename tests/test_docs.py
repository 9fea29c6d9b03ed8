"""The API reference covers every public name, and the README keeps its two commands."""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "docs"))

import gen_api  # noqa: E402


def test_api_reference_lists_every_public_name():
    with open(os.path.join(ROOT, "docs", "api.md")) as f:
        text = f.read()
    missing = []
    for modname in gen_api.MODULES:
        mod = importlib.import_module(modname)
        for name, _ in gen_api.public_names(mod):
            if f"`{name}(" not in text and f"`{name}`" not in text:
                missing.append(f"{modname}.{name}")
    assert not missing, f"run `python docs/gen_api.py`; missing from docs/api.md: {missing}"


def test_readme_quick_start_is_two_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert "pip install -e . && python examples/quickstart.py" in text
    assert 'pip install -e ".[test]" && python -m pytest' in text
