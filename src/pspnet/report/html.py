"""The run report: one self-contained HTML page (pictures inline as data URIs) from a Jinja2 template.

`render_report` takes what the engine measured (a run's record and logs, an evaluation, sample
predictions) and only presents it; `select_samples` picks the images to show from per-image scores.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from PIL import Image

from .. import __version__
from ..classes import ClassInfo
from ..metrics import SegmentationMetrics
from ..visualize import colorize, error_map
from . import plots
from .results import metrics_to_dict

THUMBNAIL_SIDE = 480
"""Sample pictures larger than this (in pixels, either side) are shrunk to keep the page light."""


@dataclass
class RunRecord:
    """What a run directory tells: its path, run.json's sessions and the rows of its CSV logs."""

    path: str
    sessions: list[dict[str, Any]]
    train_log: list[dict[str, float]]
    val_log: list[dict[str, float]]


@dataclass
class EvaluationRecord:
    """An evaluation of `checkpoint` (saved at `iteration`, when known) on `images` images of `dataset`."""

    metrics: SegmentationMetrics
    classes: ClassInfo
    protocol: str
    checkpoint: str
    iteration: int | None
    dataset: str
    images: int


@dataclass
class SamplePrediction:
    """One image of the evaluation with its ground truth, prediction, mIoU and rank (1 = worst)."""

    name: str
    image: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    miou: float
    rank: int


def select_samples(scores: Sequence[float], count: int) -> list[int]:
    """Indices of up to `count` images to show, chosen by per-image mIoU: the worst half (rounded up),
    worst first, then the others spread evenly over the remaining ranks up to the best, in rising order.
    Images without a score (NaN: no labelled pixel) are shown only when no image has one."""
    order = [index for index in ranking(scores) if not math.isnan(scores[index])] or ranking(scores)
    count = min(count, len(order))
    worst = (count + 1) // 2
    rest, spread = order[worst:], count - worst
    positions = sorted(len(rest) - 1 - step * len(rest) // spread for step in range(spread))
    return order[:worst] + [rest[position] for position in positions]


def ranking(scores: Sequence[float]) -> list[int]:
    """Image indices from the lowest score to the highest; NaN scores last, ties by index."""
    return sorted(
        range(len(scores)), key=lambda i: (math.isnan(scores[i]), 0.0 if math.isnan(scores[i]) else scores[i], i)
    )


def _data_uri(picture: np.ndarray | bytes, photo: bool = False) -> str:
    """A data URI of PNG bytes, or of an HxWx3 array (shrunk to THUMBNAIL_SIDE; photos as JPEG)."""
    if isinstance(picture, bytes):
        return "data:image/png;base64," + base64.b64encode(picture).decode("ascii")
    image = Image.fromarray(picture)
    if max(image.size) > THUMBNAIL_SIDE:
        scale = THUMBNAIL_SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS if photo else Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if photo else "PNG", quality=90)
    kind = "jpeg" if photo else "png"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _hex(colour: Sequence[int]) -> str:
    return "#" + "".join(f"{value:02x}" for value in colour)


def _finite(rows: list[dict[str, float]]) -> list[dict[str, float | None]]:
    """Log rows for JSON: NaN (a diverged loss) becomes null."""
    return [{key: None if math.isnan(value) else value for key, value in row.items()} for row in rows]


def _json_script(data: Any) -> Markup:
    """JSON safe inside a <script> element (no `</script>` can end it early)."""
    return Markup(json.dumps(data, allow_nan=False).replace("<", "\\u003c"))


def _evaluation_context(evaluation: EvaluationRecord) -> dict[str, Any]:
    metrics, classes = evaluation.metrics, evaluation.classes
    pixels = metrics.confusion.sum(axis=1)
    rows = [
        {"name": name, "colour": _hex(colour), "iou": iou, "acc": acc, "share": pixels[index] / max(pixels.sum(), 1)}
        for index, (name, colour, iou, acc) in enumerate(zip(classes.names, classes.palette, metrics.iou, metrics.acc))
    ]
    return {
        "record": evaluation,
        "summary": [("mIoU", metrics.miou), ("mAcc", metrics.macc), ("aAcc", metrics.aacc)],
        "classes": rows,
        "bars": _data_uri(plots.png_bytes(plots.class_scores(classes.names, metrics.iou, metrics.acc))),
        "confusion": _data_uri(plots.png_bytes(plots.confusion_matrix(metrics.confusion, classes.names))),
    }


def _sample_context(sample: SamplePrediction, classes: ClassInfo) -> dict[str, Any]:
    return {
        "name": sample.name,
        "miou": sample.miou,
        "rank": sample.rank,
        "pictures": [
            _data_uri(sample.image, photo=True),
            _data_uri(colorize(sample.target, classes)),
            _data_uri(colorize(sample.prediction, classes)),
            _data_uri(error_map(sample.image, sample.target, sample.prediction)),
        ],
    }


def render_report(
    title: str,
    config_yaml: str,
    run: RunRecord | None,
    evaluation: EvaluationRecord | None,
    samples: Sequence[SamplePrediction] = (),
    classes: ClassInfo | None = None,
) -> str:
    """The report page: the run (config, command lines, software, hardware, wall time) and its training
    curves when `run` is given, the evaluation (summary, per-class chart and table, confusion matrix),
    and the sample predictions (image, ground truth, prediction, errors; needs `classes`). The numbers
    are also embedded as JSON (`<script id="report-data">`)."""
    environment = Environment(
        loader=PackageLoader("pspnet.report"), autoescape=select_autoescape(), trim_blocks=True, lstrip_blocks=True
    )
    environment.filters.update(percent=_percent, duration=_duration)
    data: dict[str, Any] = {"title": title}
    context: dict[str, Any] = {
        "title": title,
        "config_yaml": config_yaml,
        "version": __version__,
        "created": datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
    if run is not None:
        sessions = run.sessions
        context["run"] = {
            "record": run,
            "latest": sessions[-1] if sessions else None,
            "wall_seconds": sum(session.get("wall_seconds") or 0 for session in sessions),
            "curves": _data_uri(plots.png_bytes(plots.training_curves(run.train_log, run.val_log))),
        }
        data.update(sessions=sessions, train_log=_finite(run.train_log), val_log=_finite(run.val_log))
    if evaluation is not None:
        context["evaluation"] = _evaluation_context(evaluation)
        data["evaluation"] = {
            **metrics_to_dict(evaluation.metrics, evaluation.classes.names, evaluation.protocol),
            "checkpoint": evaluation.checkpoint,
            "iteration": evaluation.iteration,
            "dataset": evaluation.dataset,
            "images": evaluation.images,
        }
    if samples:
        if classes is None:
            raise ValueError("render_report needs the classes to draw sample predictions")
        context["samples"] = [_sample_context(sample, classes) for sample in samples]
        context["legend"] = [(name, _hex(colour)) for name, colour in zip(classes.names, classes.palette)]
        data["samples"] = [
            {"name": s.name, "miou": None if math.isnan(s.miou) else s.miou, "rank": s.rank} for s in samples
        ]
    context["data"] = _json_script(data)
    return environment.get_template("report.html").render(context)
