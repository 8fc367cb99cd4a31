"""Segmentation metrics as papers report them: per-class IoU, mIoU, mAcc and aAcc.

Everything is derived from one confusion matrix ``matrix[gt, pred]`` of pixel counts, accumulated
over the whole evaluation set (never averaged per image). Pixels whose ground truth is the ignore
label (255) are left out. For a class c with TP, FP, FN its pixel counts:

* IoU_c = TP / (TP + FP + FN) and per-class accuracy Acc_c = TP / (TP + FN);
  each is NaN where its denominator is 0.
* aAcc = sum of TP / number of valid pixels (overall pixel accuracy).
* mAcc = mean of Acc_c over the classes present in the ground truth, whatever `absent` says.
* mIoU depends on how classes without any pixel are treated (`absent`):

  - ``"exclude"`` (default; mmsegmentation and the official Cityscapes evaluator): a class absent
    from both ground truth and prediction (union 0) has IoU NaN and is left out of the mean.
    A class absent from the ground truth but predicted somewhere has IoU 0 and counts.
  - ``"zero"`` (semseg, the PSPNet authors' PyTorch code): the mean runs over all K classes,
    classes with union 0 counting as 0.

All rates are fractions in 0..1; `pspnet.report` presents them (tables in percent, JSON, CSV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .classes import IGNORE_INDEX

ABSENT_CONVENTIONS = ("exclude", "zero")


@dataclass(eq=False)
class SegmentationMetrics:
    """Result of `ConfusionMatrix.compute`: per-class arrays (NaN where undefined) and the summary rates."""

    iou: np.ndarray
    acc: np.ndarray
    miou: float
    macc: float
    aacc: float
    absent: str
    confusion: np.ndarray


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0."""
    result = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=result, where=denominator > 0)
    return result


class ConfusionMatrix:
    """Accumulates ``matrix[gt, pred]`` pixel counts over any number of batches."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: `pred` and `target` hold class ids and have the same (any) shape.

        Every predicted id (on ignored pixels too) must lie in 0..K-1, every target id there or be the ignore label.
        """
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        for name, tensor in (("prediction", pred), ("target", target)):
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise ValueError(
                    f"{name} must hold integer class ids, got dtype {tensor.dtype} (take the argmax of logits first)"
                )
        k = self.num_classes
        target = target.to(torch.int64)
        pred = pred.to(device=target.device, dtype=torch.int64)
        valid = target != self.ignore_index
        bad_pred = ((pred < 0) | (pred >= k)).any()
        bad_target = (valid & ((target < 0) | (target >= k))).any()
        bad_pred, bad_target = torch.stack([bad_pred, bad_target]).tolist()  # one device sync for both checks
        if bad_pred:
            low, high = pred.min().item(), pred.max().item()
            raise ValueError(f"predicted class ids must lie in 0..{k - 1}, got {low}..{high}")
        if bad_target:
            raise ValueError(f"target class ids must lie in 0..{k - 1} or be the ignore label {self.ignore_index}")
        # ignored pixels go to an extra bin k*k that is dropped, which avoids a sync from boolean indexing
        index = torch.where(valid, target * k + pred, k * k)
        counts = torch.bincount(index.flatten(), minlength=k * k + 1)[: k * k].view(k, k)
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        self.matrix += counts

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.matrix.zero_()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of `other` (e.g. from another process or data split) into this matrix."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a confusion matrix of {other.num_classes} classes (ignore {other.ignore_index}) "
                f"into one of {self.num_classes} classes (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def compute(self, absent: str = "exclude") -> SegmentationMetrics:
        """Per-class and mean metrics; `absent` is "exclude" or "zero" (see the module docstring)."""
        if absent not in ABSENT_CONVENTIONS:
            raise ValueError(f"absent must be one of {ABSENT_CONVENTIONS}, got {absent!r}")
        confusion = self.matrix.cpu().numpy().astype(np.int64)
        counts = confusion.astype(np.float64)
        true_positive = np.diag(counts)
        gt_pixels = counts.sum(axis=1)
        pred_pixels = counts.sum(axis=0)
        union = gt_pixels + pred_pixels - true_positive
        iou = _ratio(true_positive, union)
        acc = _ratio(true_positive, gt_pixels)
        miou = _nanmean(iou) if absent == "exclude" else float(np.nan_to_num(iou, nan=0.0).mean())
        total = counts.sum()
        aacc = float(true_positive.sum() / total) if total > 0 else math.nan
        return SegmentationMetrics(
            iou=iou, acc=acc, miou=miou, macc=_nanmean(acc), aacc=aacc, absent=absent, confusion=confusion
        )
