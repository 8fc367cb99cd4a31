"""The benchmark scripts stay runnable: each imports (with the package's current layout) and has a main()."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path for path in BENCHMARKS.glob("*.py") if path.name != "machine.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_benchmark_imports_and_has_a_main(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as `python benchmarks/NAME.py`
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    assert callable(module.main) and module.__doc__
