"""Run directories summarised from their own files (config.yaml, run.json, train_log.csv, val_log.csv): what
`pspnet runs` lists and compares, with no tracking server. Light on purpose (yaml, json, csv; no torch), so
that the command starts at once; the file names are `RunDirectory`'s.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

CONFIG, RUN_INFO, TRAIN_LOG, VAL_LOG, CHECKPOINTS = (
    "config.yaml",
    "run.json",
    "train_log.csv",
    "val_log.csv",
    "checkpoints",
)
"""The files of a run directory this module reads (`pspnet.training.run_dir.RunDirectory` writes them)."""
FREE_FORM = ("encoder_kwargs", "options")
"""Config dicts compared whole (their entries are free-form), like `run_dir.diff_keys`."""
ENDINGS = {"finished": "finished", "stopped": "interrupted", "interrupted": "interrupted", "running": "running"}
"""How run.json's last session outcome reads in the table (`failed: ...` reads `failed`)."""


def flatten_config(data: dict[str, Any], prefix: str = "", whole: tuple[str, ...] = ()) -> dict[str, Any]:
    """A nested config dict as dotted keys (`model.encoder`, `train.base_lr`, `model.encoder_kwargs.channels`);
    dicts named in `whole` stay one value."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in whole:
            flat.update(flatten_config(value, f"{prefix}{key}.", whole))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_csv(path: Path) -> list[dict[str, float]]:
    """The rows of a CSV log as numbers ([] without a log); empty cells are left out of their row."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [
            {key: float(value) for key, value in row.items() if key and value not in ("", None)}
            for row in csv.DictReader(handle)
        ]


@dataclass
class RunSummary:
    """One run directory as `pspnet runs` shows it."""

    path: Path
    name: str
    config: dict[str, Any]
    sessions: list[dict[str, Any]]
    validations: list[dict[str, float]]
    iteration: int
    """The last iteration the run recorded (its last session's end, else its last log row)."""
    problem: str | None = None
    """Why a file of the run could not be read (the summary then holds what could)."""

    @property
    def encoder(self) -> str | None:
        return (self.config.get("model") or {}).get("encoder")

    @property
    def max_iters(self) -> int | None:
        return (self.config.get("train") or {}).get("max_iters")

    @property
    def best_miou(self) -> float | None:
        values = [row["miou"] for row in self.validations if not math.isnan(row.get("miou", math.nan))]
        return max(values, default=None)

    @property
    def last_validation(self) -> dict[str, float]:
        return self.validations[-1] if self.validations else {}

    @property
    def wall_seconds(self) -> float:
        """The wall time of every session; a running one counts up to now."""
        total = 0.0
        for session in self.sessions:
            if session.get("wall_seconds") is not None:
                total += float(session["wall_seconds"])
            elif session.get("started"):
                try:
                    total += max(0.0, datetime.now().astimezone().timestamp() - _timestamp(session["started"]))
                except ValueError:
                    pass
        return total

    @property
    def ended(self) -> str:
        """finished, interrupted, failed or running: the last session's outcome in run.json (`unreadable` when
        a file could not be read, `not started` before the first session). A process killed with -9 could not
        record its end, so its run still reads `running`."""
        if self.problem is not None:
            return "unreadable"
        if not self.sessions:
            return "not started"
        outcome = str(self.sessions[-1].get("outcome", "running"))
        return "failed" if outcome.startswith("failed") else ENDINGS.get(outcome, outcome)

    def flat_config(self) -> dict[str, Any]:
        return flatten_config(self.config, whole=FREE_FORM)


def is_run_dir(path: Path) -> bool:
    """Whether `path` holds a training run (its config and a session record or checkpoints)."""
    return (path / CONFIG).is_file() and ((path / RUN_INFO).is_file() or (path / CHECKPOINTS).is_dir())


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory at or under `root`, sorted by path (a run's own subfolders are not searched)."""
    found = []
    for folder, subfolders, _ in os.walk(root):
        if is_run_dir(Path(folder)):
            found.append(Path(folder))
            subfolders.clear()
        else:
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    return sorted(found)


def read_run(path: str | Path, root: str | Path | None = None) -> RunSummary:
    """The summary of the run in `path`, named by its path relative to `root` (else its folder name)."""
    path = Path(path)
    name = path.name
    if root is not None and path.resolve() != Path(root).resolve():
        name = os.path.relpath(path, root)
    config: dict[str, Any] = {}
    sessions: list[dict[str, Any]] = []
    validations: list[dict[str, float]] = []
    last_row: list[dict[str, float]] = []
    problem = None
    try:
        config = yaml.safe_load((path / CONFIG).read_text()) or {}
        if (path / RUN_INFO).is_file():
            sessions = list(json.loads((path / RUN_INFO).read_text())["sessions"])
        validations = read_csv(path / VAL_LOG)
        last_row = read_csv(path / TRAIN_LOG)[-1:]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    ends = [int(s["end_iteration"]) for s in sessions[-1:] if isinstance(s.get("end_iteration"), int)]
    logged = [int(row["iteration"]) for row in [*last_row, *validations[-1:]] if "iteration" in row]
    return RunSummary(path, name, config, sessions, validations, max([*ends, *logged], default=0), problem)


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """The dotted config keys whose values are not the same in all `runs`, sorted."""
    flat = [run.flat_config() for run in runs]
    keys = sorted(set().union(*flat))
    return [key for key in keys if len({json.dumps(f.get(key), sort_keys=True) for f in flat}) > 1]


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()
