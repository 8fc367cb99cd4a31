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


def test_pillow_signal_measurement_recovers_the_documented_brightening(monkeypatch):
    """benchmarks/inconspicuous_class.py isolates the pillow's and the fold's brightening by rendering
    without it: the signal must fall in the generator's range and the fold lie at the other end of the bed."""
    import numpy as np

    from pspnet.data.synthetic import BED, PILLOW_SHIFT, ContextScenes

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmark_inconspicuous", BENCHMARKS / "inconspicuous_class.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scenes = module.scene_regions(ContextScenes("val", 12, (96, 96)))
    assert len(scenes) >= 2
    for scene in scenes:
        assert PILLOW_SHIFT[0] - 0.5 <= scene["signal"] <= PILLOW_SHIFT[1] + 0.5  # uint8 rounding
        assert 6 <= scene["noise"] <= 12  # the sheet's grain (std 8) with its colour jitter
        pillow_x = np.nonzero(scene["pillow"])[1].mean()
        fold_x = np.nonzero(scene["fold"])[1]
        assert fold_x.size > 0.5 * scene["pillow"].sum() and not (scene["fold"] & scene["pillow"]).any()
        bed_x = np.nonzero(scene["mask"] == BED)[1]
        assert (pillow_x < bed_x.mean()) != (fold_x.mean() < bed_x.mean())  # opposite ends
