"""Evaluation over a dataset split: confusion matrix -> IoU, accuracy."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import EvalConfig
from ..data.build import iterate
from ..metrics import ConfusionMatrix, SegmentationMetrics
from .inference import Inferencer

# images/s always (tqdm would switch to s/img below 1 img/s) and the remaining time
PROGRESS_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"


def progress_bar(total: int, desc: str, enabled: bool, leave: bool = True) -> tqdm:
    """A progress bar over images showing images/s and the ETA."""
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=leave, dynamic_ncols=True, bar_format=PROGRESS_FORMAT)


def evaluate(model: torch.nn.Module, loader: DataLoader, num_classes: int, settings: EvalConfig,
             device: torch.device, progress: bool = True, desc: str = "evaluate") -> SegmentationMetrics:
    """Run `model` over `loader` with the protocol in `settings`; ignore-label pixels do not count."""
    was_training = model.training
    model.eval()
    inferencer = Inferencer(model, settings)
    confusion = ConfusionMatrix(num_classes)
    with progress_bar(len(loader.dataset), desc, progress, leave=False) as bar:
        for batch in iterate(loader):
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            confusion.update(inferencer.probabilities(images).argmax(1), masks)
            bar.update(len(images))
    model.train(was_training)
    return confusion.compute(absent=settings.absent)
