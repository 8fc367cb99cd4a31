"""Figures with matplotlib (Agg, no pyplot state): training curves, per-class scores, the confusion matrix.

Each function returns a `Figure`; `png_bytes` renders one and `save_png` writes it atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io.files import atomic_path

LOSS_TERMS = {"loss": "total", "main": "main head", "aux": "aux head", "cls": "class presence"}
"""Columns of train_log.csv drawn in the loss panel, with their legend labels."""
VALIDATION_METRICS = {"miou": "mIoU", "macc": "mAcc", "aacc": "aAcc"}
IOU_COLOUR, ACC_COLOUR = "#2166ac", "#92c5de"
ABSENT_ROW_COLOUR = "#d9d9d9"
ANNOTATED_CLASSES = 25
"""Confusion matrices with at most this many classes get their percentages written in the cells."""
DPI = 100

Rows = Sequence[Mapping[str, float]]


def _figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(np.atleast_1d(figure.subplots(1, columns)))


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_png(figure: Figure, path: str | Path) -> None:
    """Write `figure` as a PNG, atomically."""
    data = png_bytes(figure)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Moving average over `window` values (shorter at the start), as long as `values`."""
    values = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _column(rows: Rows, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Iterations and values of `key` in the rows that have it."""
    kept = [row for row in rows if key in row and row[key] is not None and not math.isnan(row[key])]
    return np.array([row["iteration"] for row in kept]), np.array([row[key] for row in kept])


def _empty(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="grey")


def training_curves(train_rows: Rows, val_rows: Rows) -> Figure:
    """Three panels over iterations: the training losses (raw and smoothed), the learning rate, and the
    validation mIoU / mAcc / aAcc in %. Rows are those of train_log.csv and val_log.csv."""
    figure, (loss_axes, lr_axes, val_axes) = _figure(13, 3.8, columns=3)
    window = max(1, len(train_rows) // 25)
    for axes, title in (
        (loss_axes, "training loss"),
        (lr_axes, "learning rate (encoder; head x10)"),
        (val_axes, "validation (%)"),
    ):
        axes.set_title(title, fontsize=11)
        axes.set_xlabel("iteration")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for index, (key, label) in enumerate(LOSS_TERMS.items()):
        iterations, values = _column(train_rows, key)
        if len(values):
            colour = f"C{index}"
            if window > 1:
                loss_axes.plot(iterations, values, color=colour, alpha=0.25, linewidth=0.8)
            loss_axes.plot(iterations, smooth(values, window), color=colour, linewidth=1.8, label=label)
    iterations, values = _column(train_rows, "lr")
    if len(values):
        lr_axes.plot(iterations, values, color="C4", linewidth=1.8)
        lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for index, (key, label) in enumerate(VALIDATION_METRICS.items()):
        iterations, values = _column(val_rows, key)
        if len(values):
            val_axes.plot(iterations, 100 * values, marker="o", markersize=4, color=f"C{index}", label=label)
    if train_rows:
        loss_axes.set_ylim(bottom=0)
        loss_axes.legend(fontsize=9, loc="best")
        if window > 1:
            loss_axes.text(
                0.01,
                0.02,
                f"bold: mean of {window} logged values",
                transform=loss_axes.transAxes,
                fontsize=8,
                color="grey",
            )
    else:
        _empty(loss_axes, "no training log yet")
        _empty(lr_axes, "no training log yet")
    if val_rows:
        val_axes.set_ylim(0, 100)
        val_axes.legend(fontsize=9, loc="best")
    else:
        _empty(val_axes, "no validation yet")
    return figure


def class_scores(names: Sequence[str], iou: Sequence[float], acc: Sequence[float]) -> Figure:
    """Horizontal bars of each class's IoU and accuracy in %, best IoU at the top; classes whose IoU is
    undefined (absent from ground truth and prediction) are left out and counted in the title."""
    iou, acc = np.asarray(iou, dtype=np.float64), np.asarray(acc, dtype=np.float64)
    shown = sorted((index for index in range(len(names)) if not math.isnan(iou[index])), key=lambda i: -iou[i])
    figure, (axes,) = _figure(8, 1.0 + 0.32 * max(len(shown), 1))
    positions = np.arange(len(shown))
    height = 0.4
    axes.barh(positions - height / 2, 100 * iou[shown], height, color=IOU_COLOUR, label="IoU")
    accuracy = np.nan_to_num(acc[shown], nan=0.0)
    axes.barh(positions + height / 2, 100 * accuracy, height, color=ACC_COLOUR, label="accuracy")
    for position, value in zip(positions, iou[shown]):
        axes.text(100 * value + 1, position - height / 2, f"{100 * value:.1f}", va="center", fontsize=8)
    axes.set_yticks(positions, [names[index] for index in shown])
    axes.invert_yaxis()
    axes.set_xlim(0, 108)
    axes.set_xlabel("%")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower right", fontsize=9)
    left_out = len(names) - len(shown)
    absent = f" ({left_out} absent class{'es' if left_out > 1 else ''} not shown)" if left_out else ""
    axes.set_title(f"per-class IoU and accuracy{absent}", fontsize=11)
    return figure


def confusion_matrix(confusion: np.ndarray, names: Sequence[str]) -> Figure:
    """Heatmap of the row-normalised confusion matrix `[gt, pred]` in %: rows are ground-truth classes,
    columns predictions; rows of classes absent from the ground truth are grey."""
    confusion = np.asarray(confusion, dtype=np.float64)
    count = len(names)
    if confusion.shape != (count, count):
        raise ValueError(f"confusion matrix of shape {confusion.shape} does not match {count} class names")
    totals = confusion.sum(axis=1, keepdims=True)
    percent = np.divide(100 * confusion, totals, out=np.full(confusion.shape, np.nan), where=totals > 0)
    side = min(30.0, max(5.0, 0.42 * count + 2.5))
    figure, (axes,) = _figure(side + 0.8, side)
    colours = colormaps["Blues"].with_extremes(bad=ABSENT_ROW_COLOUR)
    image = axes.imshow(np.ma.masked_invalid(percent), cmap=colours, vmin=0, vmax=100, interpolation="nearest")
    font = 9 if count <= 60 else max(4, round(540 / count))  # the cells shrink once the figure is at its cap
    axes.set_xticks(range(count), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    axes.set_yticks(range(count), names, fontsize=font)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title("confusion matrix (% of each ground-truth class's pixels)", fontsize=11)
    if count <= ANNOTATED_CLASSES:
        for row, column in zip(*np.nonzero(np.nan_to_num(percent) >= 0.5)):
            value = percent[row, column]
            axes.text(
                column,
                row,
                f"{value:.0f}",
                ha="center",
                va="center",
                fontsize=font - 1,
                color="white" if value > 55 else "black",
            )
    figure.colorbar(image, cax=axes.inset_axes([1.03, 0.2, 0.035, 0.6]), label="%")  # beside the square cells
    return figure
