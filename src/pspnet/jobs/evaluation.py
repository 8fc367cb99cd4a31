"""Evaluation over a dataset split: confusion matrix -> IoU, accuracy; what a protocol will cost."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from ..checkpoint import LoadedModel
from ..classes import ClassInfo
from ..config import EvalConfig
from ..data.base import SegmentationDataset
from ..data.loaders import SkipLog, build_dataset, build_eval_loader, iterate
from ..errors import ConfigError, DataError
from ..inference.predict import evaluation_mode
from ..inference.protocol import Inferencer, forward_passes, scaled_size, upsampling_factor
from ..metrics import ConfusionMatrix, SegmentationMetrics
from ..system.distributed import Distributed, all_reduce_sum, check_all, gather
from ..system.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class ImageScores:
    """Per-image mIoU of an evaluation, in the loader's order (`evaluate(..., observe=scores)`): the mean
    IoU over the classes in the image's ground truth or prediction (NaN for an image without labels)."""

    num_classes: int
    names: list[str] = field(default_factory=list)
    miou: list[float] = field(default_factory=list)

    def __call__(self, batch: dict, labels: torch.Tensor) -> None:
        for name, label, mask in zip(batch["name"], labels, batch["mask"]):
            confusion = ConfusionMatrix(self.num_classes)
            confusion.update(label, mask)
            self.names.append(name)
            self.miou.append(confusion.compute(absent="exclude").miou)

    def gather(self, distributed: Distributed) -> ImageScores:
        """Every process's scores in dataset order (process r of W scored images r, r + W, ...; see
        `build_eval_loader`), on every process; returns self."""
        shares = gather(distributed, (self.names, self.miou))
        total = sum(len(miou) for _, miou in shares)
        self.names, self.miou = [""] * total, [math.nan] * total
        for rank, (names, miou) in enumerate(shares):
            self.names[rank :: len(shares)], self.miou[rank :: len(shares)] = names, miou
        return self


@dataclass
class Validation:
    """An evaluation of the model saved at `iteration` on the val split: its metrics and per-image scores."""

    iteration: int
    metrics: SegmentationMetrics
    scores: ImageScores


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    num_classes: int,
    settings: EvalConfig,
    device: torch.device,
    progress: bool = True,
    desc: str = "evaluate",
    skipped: SkipLog | None = None,
    distributed: Distributed | None = None,
    observe: Callable[[dict, torch.Tensor], None] | None = None,
) -> SegmentationMetrics:
    """Run `model` (a torch module or any backend) over `loader` with the protocol in `settings`;
    ignore-label pixels do not count. `observe(batch, labels)` sees each batch with its predicted labels
    (e.g. `ImageScores`).

    With several processes, each evaluates its loader (its share of the split) and the confusion
    matrices are summed: the result is exactly one process's on the whole split.
    """
    distributed = distributed or Distributed()
    inferencer = Inferencer(model, settings)
    confusion = ConfusionMatrix(num_classes)
    failure = None
    with (
        evaluation_mode(model),
        progress_bar(len(loader.dataset), desc, progress and distributed.is_main, leave=False) as bar,
    ):
        try:
            for batch in iterate(loader, skipped):
                images = batch["image"].to(device, non_blocking=True)
                masks = batch["mask"].to(device, non_blocking=True)
                labels = inferencer.labels(images)
                confusion.update(labels, masks)
                if observe is not None:
                    observe({**batch, "mask": masks}, labels)
                bar.update(len(images))
        except DataError as exc:  # shared with the other processes instead of leaving them waiting
            failure = exc
    check_all(distributed, failure)
    all_reduce_sum(distributed, confusion.matrix)
    return confusion.compute(absent=settings.absent)


def split_dataset(loaded: LoadedModel, split: str) -> SegmentationDataset:
    """The evaluation dataset of `split` under `loaded.config` (its data section, normalised with the model's card;
    images over the protocol's pixel cap refused); ConfigError when its classes are not the model's."""
    config, card = loaded.config, loaded.card
    dataset = build_dataset(config.data, split, train=False, max_pixels=config.eval.pixel_cap())
    check_classes(card.classes, dataset.classes, f"{loaded.path}", f"split '{split}' of {config.data.format}")
    return dataset


def check_classes(model: ClassInfo, data: ClassInfo, model_source: str, data_source: str) -> None:
    """ConfigError when a dataset's classes are not the model's: another count, or other names (placeholder
    names `class_N` on either side match any)."""
    if data.num_classes != model.num_classes:
        raise ConfigError(
            f"{model_source} predicts {model.num_classes} classes but {data_source} has {data.num_classes}"
        )
    generic = ClassInfo.generic(model.num_classes).names
    if generic in (model.names, data.names) or model.names == data.names:
        return
    index = next(i for i, (ours, theirs) in enumerate(zip(model.names, data.names)) if ours != theirs)
    raise ConfigError(
        f"{model_source} and {data_source} name their classes differently: class {index} is "
        f"'{model.names[index]}' in the checkpoint but '{data.names[index]}' in the dataset (checkpoint: "
        f"{', '.join(model.names)}; dataset: {', '.join(data.names)})"
    )


def evaluate_split(
    loaded: LoadedModel,
    dataset: SegmentationDataset,
    progress: bool = True,
    distributed: Distributed | None = None,
    observe: Callable[[dict, torch.Tensor], None] | None = None,
) -> SegmentationMetrics:
    """Metrics of `loaded` (on its device) over `dataset` under `loaded.config.eval`, each process evaluating its
    share; first a warning with the cost when the protocol would enlarge the images more than
    `UPSAMPLING_WARNING` times."""
    distributed = distributed or Distributed()
    model, config, device = loaded.model, loaded.config, loaded.device
    first = dataset[0] if len(dataset) and distributed.is_main else {}
    if "image" in first:  # a bad first file is reported by the evaluation itself
        height, width = first["image"].shape[-2:]
        if upsampling_factor(config.eval, height, width) > UPSAMPLING_WARNING:
            cost = protocol_cost(model, config.eval, height, width, len(dataset), device)
            log.warning("%s", cost.describe(config.eval, height, width, len(dataset)))
    loader = build_eval_loader(
        dataset, config.data, config.eval.batch_size, device, distributed.rank, distributed.world_size
    )
    return evaluate(
        model, loader, loaded.card.num_classes, config.eval, device, progress, distributed=distributed, observe=observe
    )


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
        largest = max(
            scaled_size(height, width, scale, settings.base_size, settings.resize) for scale in settings.scales
        )
        return (
            f"the protocol ({settings.describe()}) enlarges these {height}x{width} images {self.upsampling:.1f}x, to "
            f"{largest[0]}x{largest[1]}: {self.passes_per_image} forward passes per image, about "
            f"{self.seconds / 60:.1f} min for {images} images; a protocol for small images (e.g. --mode whole "
            f"without --base-size) is probably what you want"
        )


@torch.inference_mode()
def protocol_cost(
    model: Callable[[torch.Tensor], torch.Tensor],
    settings: EvalConfig,
    height: int,
    width: int,
    images: int,
    device: torch.device,
) -> ProtocolCost:
    """Upsampling factor, forward passes and an ETA for evaluating `images` images of `height` x `width`."""
    passes = forward_passes(settings, height, width)
    seconds = 0.0
    with evaluation_mode(model):
        for size in dict.fromkeys(size for size, _ in passes):
            start = time.perf_counter()
            model(torch.zeros((1, model.card.in_channels, *size), device=device))
            seconds += (time.perf_counter() - start) * sum(count for other, count in passes if other == size)
    return ProtocolCost(upsampling_factor(settings, height, width), sum(count for _, count in passes), seconds * images)
