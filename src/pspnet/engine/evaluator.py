"""Evaluation over a dataset split: confusion matrix -> IoU, accuracy."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..config import EvalConfig
from ..data.loaders import iterate
from ..inference.protocol import Inferencer
from ..metrics import ConfusionMatrix, SegmentationMetrics
from .progress import progress_bar


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
