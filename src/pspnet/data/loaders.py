"""Datasets and loaders from a `DataConfig`: the resumable training stream and evaluation batches."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from ..config import DataConfig
from ..errors import DataError
from .base import SegmentationDataset
from .sources import build_source
from .transforms import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)


def build_dataset(data: DataConfig, split: str, train: bool, max_pixels: int | None = None) -> SegmentationDataset:
    """A source wrapped with the training (augmenting) or evaluation transform; images over `max_pixels` are refused."""
    transform = (
        build_train_transform(data.augment, data.mean, data.std) if train else build_eval_transform(data.mean, data.std)
    )
    return SegmentationDataset(build_source(data, split), transform, skip_bad=data.skip_bad, max_pixels=max_pixels)


class TrainStream(Sampler):
    """An endless stream of batches of `(index, seed)` keys, resumable at any iteration.

    Sample position p of the stream belongs to epoch p // N, which visits the dataset in a
    permutation seeded by (seed, epoch); its augmentation is seeded by (seed, p). Starting at
    iteration k therefore yields exactly the batches an uninterrupted run would see from k on.
    With several processes, each yields its own slice (by `rank`) of every global batch.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0, world_size: int = 1
    ):
        if num_samples < 1:
            raise DataError("the training split is empty")
        self.num_samples, self.batch_size, self.seed, self.start_iter = num_samples, batch_size, seed, start_iter
        self.rank, self.local_batch = rank, batch_size // world_size

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start_iter * self.batch_size
        epoch, order = -1, []
        while True:
            batch = []
            for _ in range(self.batch_size):
                if position // self.num_samples != epoch:
                    epoch = position // self.num_samples
                    order = self._permutation(epoch)
                batch.append((order[position % self.num_samples], (self.seed * 0x9E3779B1 + position) % 2**62))
                position += 1
            yield batch[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


def collate(batch: list[dict]) -> dict:
    """Stack samples, or pass the first bad sample's error on."""
    errors = [item["error"] for item in batch if "error" in item]
    if errors:
        return {"error": errors[0]}
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "mask": torch.stack([item["mask"] for item in batch]),
        "name": [item["name"] for item in batch],
        "skipped": [message for item in batch for message in item["skipped"]],
    }


class SkipLog:
    """Bad samples skipped with `data.skip_bad`: a warning the first time each one is met, and a count."""

    def __init__(self) -> None:
        self.count = 0
        self.messages: dict[str, int] = {}

    def record(self, message: str) -> None:
        self.count += 1
        if message not in self.messages:
            log.warning("skipping bad sample (data.skip_bad): %s", message)
        self.messages[message] = self.messages.get(message, 0) + 1

    def summary(self) -> str:
        return f"data.skip_bad: skipped {self.count} bad sample(s) from {len(self.messages)} file(s)"


def iterate(loader: DataLoader, skipped: SkipLog | None = None) -> Iterator[dict]:
    """Batches of `loader`; a bad file stops here with a DataError naming it (in the main process).
    Samples skipped with `data.skip_bad` are recorded in `skipped`."""
    for batch in loader:
        if "error" in batch:
            raise DataError(batch["error"])
        for message in batch["skipped"]:
            if skipped is not None:
                skipped.record(message)
        yield batch


def _ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave Ctrl-C (sent to the whole process group) to the main process, which stops them
    after saving. SIGTERM keeps its default: the loader itself stops workers with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def default_workers(device: torch.device, cores: int | None = None) -> int:
    """Loader workers when `data.num_workers` is null. A GPU computes while the CPU cores prepare batches:
    one core stays with the training process, up to 8 workers. On a CPU the workers would take cores
    from the step itself, whose threads then wait for each other: none on 2 cores or fewer (the batch is
    prepared between steps), a quarter of the cores beyond."""
    cores = cores or os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return 0 if cores <= 2 else min(4, cores // 4)


def _loader_options(data: DataConfig, device: torch.device, seed: int = 0) -> dict:
    """Shared loader settings. The loader gets its own generator: drawing worker seeds from the global
    RNG would shift the model's dropout randomness and break exact resume."""
    workers = data.num_workers if data.num_workers is not None else default_workers(device)
    return {
        "generator": torch.Generator().manual_seed(seed),
        "worker_init_fn": _ignore_interrupts,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "collate_fn": collate,
    }


def build_train_loader(
    dataset: SegmentationDataset,
    data: DataConfig,
    batch_size: int,
    seed: int,
    start_iter: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """This process's share of the global training batches of `batch_size`."""
    stream = TrainStream(len(dataset), batch_size, seed, start_iter, rank, world_size)
    return DataLoader(dataset, batch_sampler=stream, **_loader_options(data, device, seed))


def build_eval_loader(
    dataset: SegmentationDataset,
    data: DataConfig,
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of equal-sized images (batch_size > 1 only makes sense when all images share a size); with
    several processes, this one's share: every `world_size`-th image from `rank` on, each image once."""
    options = _loader_options(data, device)
    options["persistent_workers"] = False
    share = dataset if world_size == 1 else Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(share, batch_size=batch_size, shuffle=False, **options)
