"""The tree is formatted by `ruff format` and clean under `ruff check` (settings in pyproject.toml [tool.ruff])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_tree_is_formatted():
    result = ruff("format", "--check", "--diff", ".")
    assert result.returncode == 0, f"run `ruff format .`:\n{result.stdout[-4000:]}{result.stderr}"


def test_tree_passes_the_linter():
    result = ruff("check", "--output-format", "concise", ".")
    assert result.returncode == 0, f"run `ruff check --fix .`:\n{result.stdout[-4000:]}{result.stderr}"


def test_a_planted_violation_is_caught(tmp_path):
    (tmp_path / "bad.py").write_text("import os\nx = {'a':1}\n")
    checked = ruff("check", "--isolated", "--select", "F401", str(tmp_path / "bad.py"))
    formatted = ruff("format", "--isolated", "--check", str(tmp_path / "bad.py"))
    assert checked.returncode == 1 and "F401" in checked.stdout
    assert formatted.returncode == 1
