"""The package's import structure: no cycles, layers that only import downward, models/ kept pure.

The contracts live in pyproject.toml ([tool.importlinter]); import-linter checks them on grimp's
import graph, which includes imports made inside functions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_hold():
    result = lint(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module,planted,broken",
    [
        # models importing the CLI: a cycle (cli -> ... -> models -> cli), a layer and the models contract broken
        ("models/ppm.py", "from ..cli import main as _main", ["No import cycle", "Layers", "models/ builds networks"]),
        # checkpoint code importing training, hidden inside a function: still seen
        ("checkpoint/native.py", "def _hidden():\n    from ..training import trainer", ["No import cycle", "Layers"]),
    ],
)
def test_contracts_catch_planted_violations(tmp_path, module, planted, broken):
    shutil.copytree(ROOT / "src" / "pspnet", tmp_path / "pspnet", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "pspnet" / module
    target.write_text(target.read_text() + "\n\n" + planted + "\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert f"{3 - len(broken)} kept, {len(broken)} broken" in result.stdout, result.stdout
    details = result.stdout.split("Broken contracts", 1)[1]
    for name in broken:
        assert name in details, result.stdout
