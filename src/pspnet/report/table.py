"""Metrics as text: the paper-style per-class IoU table with the paper's abbreviations."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ..metrics import SegmentationMetrics

# Abbreviations used in the PSPNet paper's tables (keys: lowercase letters and digits only).
PAPER_ABBREVIATIONS = {
    "sidewalk": "swalk",
    "building": "build.",
    "trafficlight": "tlight",
    "trafficsign": "sign",
    "vegetation": "veg.",
    "motorcycle": "mbike",
    "bicycle": "bike",
    "aeroplane": "aero",
    "airplane": "aero",
    "diningtable": "table",
    "motorbike": "mbike",
    "pottedplant": "plant",
    "tvmonitor": "tv",
}


def abbreviate(name: str, max_length: int = 7) -> str:
    """Short column header for a class name: the paper's abbreviation where it has one, else
    initials of the leading words plus the last word ("traffic light" -> "tlight"), cut to
    `max_length` characters with a trailing dot."""
    base = name.split(",")[0].strip() or name  # ADE20K-style "building, edifice" -> "building"
    key = re.sub(r"[^a-z0-9]", "", base.lower())
    if key in PAPER_ABBREVIATIONS:
        return PAPER_ABBREVIATIONS[key]
    words = [word for word in re.split(r"[\s_\-/]+", base) if word] or [base]
    short = "".join(word[0] for word in words[:-1]) + words[-1]
    if len(short) > max_length:
        short = short[: max_length - 1] + "."
    return short


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def _summary_line(metrics: SegmentationMetrics, protocol: str | None) -> str:
    parts = [
        f"mIoU {_percent(metrics.miou)}",
        f"mAcc {_percent(metrics.macc)}",
        f"aAcc {_percent(metrics.aacc)}",
        f"absent classes: {metrics.absent}",
    ]
    if protocol:
        parts.append(f"protocol: {protocol}")
    return " | ".join(parts)


def check_names(metrics: SegmentationMetrics, class_names: Sequence[str]) -> None:
    if len(class_names) != len(metrics.iou):
        raise ValueError(f"{len(class_names)} class names for metrics of {len(metrics.iou)} classes")


def _wrap(widths: list[int], limit: int) -> list[list[int]]:
    """Greedily group column indices into blocks whose lines (one space between columns) fit `limit`."""
    blocks: list[list[int]] = [[]]
    line_length = 0
    for column, column_width in enumerate(widths):
        if blocks[-1] and line_length + 1 + column_width > limit:
            blocks.append([])
        line_length = column_width if not blocks[-1] else line_length + 1 + column_width
        blocks[-1].append(column)
    return blocks


def format_table(
    metrics: SegmentationMetrics,
    class_names: Sequence[str],
    title: str | None = None,
    protocol: str | None = None,
    width: int = 110,
) -> str:
    """Paper-style table: one column per class (abbreviated name over IoU in %), then mIoU.

    Columns that do not fit in `width` characters wrap into further row blocks. The last line gives
    mIoU / mAcc / aAcc, the absent-class convention and, if given, the evaluation `protocol`
    (a description such as "whole image, scales [1.0], no flip").
    """
    check_names(metrics, class_names)
    headers = [abbreviate(name) for name in class_names] + ["mIoU"]
    values = [_percent(v) for v in metrics.iou] + [_percent(metrics.miou)]
    widths = [max(len(h), len(v)) for h, v in zip(headers, values)]

    # fewest blocks that fit `width`, then the narrowest line length giving that many (balanced blocks)
    fewest = len(_wrap(widths, width))
    limit = max(widths)
    while len(_wrap(widths, limit)) > fewest:
        limit += 1
    blocks = _wrap(widths, limit)

    lines = [title] if title else []
    for number, block in enumerate(blocks):
        if number:
            lines.append("")
        lines.append(" ".join(headers[c].rjust(widths[c]) for c in block))
        lines.append(" ".join(values[c].rjust(widths[c]) for c in block))
    lines.append(_summary_line(metrics, protocol))
    return "\n".join(lines)
