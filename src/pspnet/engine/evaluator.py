"""Evaluation over a dataset split: confusion matrix -> IoU, accuracy; what a protocol will cost."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader

from ..config import EvalConfig
from ..data.loaders import SkipLog, iterate
from ..inference.predict import evaluation_mode
from ..inference.protocol import Inferencer, forward_passes, scaled_size, upsampling_factor
from ..errors import DataError
from ..metrics import ConfusionMatrix, SegmentationMetrics
from .distributed import Distributed, all_reduce_sum, check_all
from .progress import progress_bar


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, num_classes: int, settings: EvalConfig,
             device: torch.device, progress: bool = True, desc: str = "evaluate",
             skipped: SkipLog | None = None, distributed: Distributed | None = None) -> SegmentationMetrics:
    """Run `model` (a torch module or any backend) over `loader` with the protocol in `settings`;
    ignore-label pixels do not count.

    With several processes, each evaluates its loader (its share of the split) and the confusion
    matrices are summed: the result is exactly one process's on the whole split.
    """
    distributed = distributed or Distributed()
    inferencer = Inferencer(model, settings)
    confusion = ConfusionMatrix(num_classes)
    failure = None
    with evaluation_mode(model), progress_bar(len(loader.dataset), desc, progress and distributed.is_main,
                                              leave=False) as bar:
        try:
            for batch in iterate(loader, skipped):
                images = batch["image"].to(device, non_blocking=True)
                masks = batch["mask"].to(device, non_blocking=True)
                confusion.update(inferencer.labels(images), masks)
                bar.update(len(images))
        except DataError as exc:  # shared with the other processes instead of leaving them waiting
            failure = exc
    check_all(distributed, failure)
    all_reduce_sum(distributed, confusion.matrix)
    return confusion.compute(absent=settings.absent)


UPSAMPLING_WARNING = 2.0
"""A protocol that enlarges images by more than this factor is almost surely meant for larger images."""


@dataclass
class ProtocolCost:
    """What evaluating `images` images of one size under a protocol takes."""

    upsampling: float
    """Largest factor by which the protocol enlarges an image."""
    passes_per_image: int
    seconds: float
    """Estimated time, from one timed forward pass of each input size."""

    def describe(self, settings: EvalConfig, height: int, width: int, images: int) -> str:
        largest = max(scaled_size(height, width, scale, settings.base_size, settings.resize) for scale in settings.scales)
        return (f"the protocol ({settings.describe()}) enlarges these {height}x{width} images {self.upsampling:.1f}x, to "
                f"{largest[0]}x{largest[1]}: {self.passes_per_image} forward passes per image, about "
                f"{self.seconds / 60:.1f} min for {images} images; a protocol for small images (e.g. --mode whole "
                f"without --base-size) is probably what you want")


@torch.inference_mode()
def protocol_cost(model: Callable[[torch.Tensor], torch.Tensor], settings: EvalConfig, height: int, width: int,
                  images: int, device: torch.device) -> ProtocolCost:
    """Upsampling factor, forward passes and an ETA for evaluating `images` images of `height` x `width`."""
    passes = forward_passes(settings, height, width)
    seconds = 0.0
    with evaluation_mode(model):
        for size in dict.fromkeys(size for size, _ in passes):
            start = time.perf_counter()
            model(torch.zeros((1, model.card.in_channels, *size), device=device))
            seconds += (time.perf_counter() - start) * sum(count for other, count in passes if other == size)
    return ProtocolCost(upsampling_factor(settings, height, width), sum(count for _, count in passes), seconds * images)
