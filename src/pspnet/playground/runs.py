"""What the playground shows of a run, read from its run directory and its jobs; and dataset folders recognised.

A run's state is its newest training job's (queued, running, stopping, finished, failed, interrupted); its
iteration, metrics and curves come from the run's own logs (`train_log.csv`, `val_log.csv`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config
from ..errors import DataError
from ..training.run_index import read_csv
from .store import Job

PATH_KEYS = ("data.root", "data.classes_file", "model.encoder_weights", "train.init_from")
"""Config keys that name files: the playground only accepts them inside the workspace or a data root."""


def config_paths(config: Config) -> list[tuple[str, str]]:
    """(key, value) of every file path a config names (`model.encoder_weights: imagenet` is not a path)."""
    found = []
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and not (key == "model.encoder_weights" and value == "imagenet"):
            found.append((key, value))
    return found


def read_csv_rows(path: Path) -> list[dict[str, float | None]]:
    """The rows of a run's CSV log as floats, None for NaN, which JSON cannot carry (an empty list before the
    first row)."""
    return [{key: None if math.isnan(value) else value for key, value in row.items()} for row in read_csv(path)]


def run_config_dict(run: Path) -> dict[str, Any]:
    """The resolved config of a run (its `config.yaml`), or the one its first job was queued with."""
    for path in (run / "config.yaml", run.parent.parent / "jobs" / f"{run.name}.yaml"):
        if path.is_file():
            return yaml.safe_load(path.read_text()) or {}
    return {}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("encoder_kwargs", "options"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def diff_configs(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The dotted keys whose values differ between `configs`, with each config's value."""
    flat = [_flatten(config) for config in configs]
    keys = sorted(set().union(*flat))
    return {key: [f.get(key) for f in flat] for key in keys if len({json.dumps(f.get(key)) for f in flat}) > 1}


@dataclass
class RunInfo:
    """One run of the playground."""

    path: Path
    name: str
    jobs: list[Job]

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict[str, Any]:
        return run_config_dict(self.path)

    @property
    def state(self) -> str:
        training = [job for job in self.jobs if job.kind == "train"]
        return training[-1].state if training else "interrupted"

    def summary(self) -> dict[str, Any]:
        """What the runs table shows (`GET /api/runs`)."""
        config = self.config
        train_rows = read_csv_rows(self.path / "train_log.csv")
        val_rows = read_csv_rows(self.path / "val_log.csv")
        last = val_rows[-1] if val_rows else {}
        training = [job for job in self.jobs if job.kind == "train"]
        failed = next((job.error for job in reversed(training) if job.state == "failed"), None)
        seconds = sum((job.ended or time.time()) - job.started for job in training if job.started)
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "encoder": config.get("model", {}).get("encoder"),
            "iteration": int(train_rows[-1]["iteration"]) if train_rows else 0,
            "max_iters": config.get("train", {}).get("max_iters"),
            "mIoU": last.get("miou"),
            "mAcc": last.get("macc"),
            "aAcc": last.get("aacc"),
            "best_mIoU": max((row["miou"] for row in val_rows if "miou" in row), default=None),
            "seconds": round(seconds, 1),
            "error": failed if self.state == "failed" else None,
        }

    def details(self, curves: bool = False) -> dict[str, Any]:
        """A run's page (`GET /api/runs/{id}`): the summary, an ETA, its jobs and outputs; the logs with `curves`."""
        summary = self.summary()
        train_rows = read_csv_rows(self.path / "train_log.csv")
        val_rows = read_csv_rows(self.path / "val_log.csv")
        seconds_per_iter = train_rows[-1].get("seconds_per_iter") if train_rows else None
        remaining = (summary["max_iters"] or 0) - summary["iteration"]
        summary["eta_seconds"] = round(remaining * seconds_per_iter, 1) if seconds_per_iter and remaining > 0 else None
        last = val_rows[-1] if val_rows else {}
        summary["per_class_iou"] = {key[4:]: value for key, value in last.items() if key.startswith("IoU/")}
        summary["jobs"] = [job.to_dict() for job in self.jobs]
        summary["report"] = (self.path / "report.html").is_file()
        summary["exports"] = (
            sorted(p.name for p in (self.path / "exports").glob("*.onnx")) if (self.path / "exports").is_dir() else []
        )
        summary["evaluations"] = (
            {path.stem: json.loads(path.read_text()) for path in sorted((self.path / "evaluations").glob("*.json"))}
            if (self.path / "evaluations").is_dir()
            else {}
        )
        if curves:
            summary["train_log"] = [{k: row.get(k) for k in ("iteration", "loss", "lr")} for row in train_rows]
            summary["val_log"] = val_rows
        return summary


def read_run(path: Path, jobs: list[Job]) -> RunInfo:
    meta = json.loads((path / "playground.json").read_text())
    return RunInfo(path, meta.get("name", path.name), jobs)


DATASET_LAYOUTS = (
    ("cityscapes", ("leftImg8bit", "gtFine")),
    ("ade20k", ("images/training", "annotations/training")),
    ("voc", ("JPEGImages", "SegmentationClass")),
    ("folders", ("images", "masks")),
    ("folders", ("train/images", "train/masks")),
)
"""Folders that tell a dataset format apart (the first match wins)."""


def detect_format(root: Path) -> str:
    """The dataset format of a folder, from the subfolders each format has; DataError when none fits.
    A folder of images only is taken for the `pairs` format (photo and mask side by side)."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    for name, folders in DATASET_LAYOUTS:
        if all((root / folder).is_dir() for folder in folders) or any(
            all((child / folder).is_dir() for folder in folders) for child in root.iterdir() if child.is_dir()
        ):
            return name
    if any(path.suffix.lower() in (".png", ".jpg", ".jpeg") for path in root.rglob("*")):
        return "pairs"
    raise DataError(
        f"{root}: no dataset format recognised (cityscapes, ade20k, voc, folders or pairs); give the format"
    )
