"""Metrics as files: a JSON-ready summary and a per-class CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from ..io.files import atomic_path
from ..metrics import SegmentationMetrics
from .table import check_names


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def metrics_to_dict(metrics: SegmentationMetrics, class_names: Sequence[str], protocol: str | None = None) -> dict:
    """JSON-ready summary: fractions in 0..1, None where a value is undefined (NaN)."""
    check_names(metrics, class_names)
    return {
        "miou": _optional(metrics.miou),
        "macc": _optional(metrics.macc),
        "aacc": _optional(metrics.aacc),
        "absent": metrics.absent,
        "protocol": protocol,
        "per_class": {
            name: {"iou": _optional(iou), "acc": _optional(acc)}
            for name, iou, acc in zip(class_names, metrics.iou, metrics.acc)
        },
    }


def _csv_value(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def save_csv(path: str | Path, metrics: SegmentationMetrics, class_names: Sequence[str]) -> None:
    """Write one row per class (class, iou, acc as fractions; empty where undefined), atomically."""
    check_names(metrics, class_names)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "iou", "acc"])
            for name, iou, acc in zip(class_names, metrics.iou, metrics.acc):
                writer.writerow([name, _csv_value(iou), _csv_value(acc)])
