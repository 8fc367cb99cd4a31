"""The contract every dataset format implements, and the torch Dataset that applies transforms.

A *source* knows where samples are and how to decode them into numpy arrays with class ids
(255 = ignore). Transforms, seeding and batching are the same for every source and live here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..classes import ClassInfo
from ..errors import DataError

MAX_SUBSTITUTES = 16
"""With `skip_bad`, how many following samples may stand in for a bad one."""


@dataclass
class Sample:
    """One decoded example. `image`: HxWx3 uint8 RGB; `mask`: HxW uint8 class ids, 255 = ignore."""

    image: np.ndarray
    mask: np.ndarray | None
    name: str


class SegmentationSource:
    """Base class of dataset formats: a list of samples plus their class metadata."""

    classes: ClassInfo

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        """Decode sample `index`; raise `pspnet.errors.DataError` naming the file when it is bad."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A short identifier of sample `index` (its file stem), without decoding it."""
        return self.load(index).name


SampleTransform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """Applies a transform to a source's samples.

    Indexing with `(index, seed)` runs the random transform under that seed, in a forked RNG, so a
    sample's augmentation depends only on its position in the training stream. This is what makes
    `--resume` reproduce an uninterrupted run exactly, whatever the number of loader workers.
    """

    def __init__(
        self,
        source: SegmentationSource,
        transform: SampleTransform,
        skip_bad: bool = False,
        max_pixels: int | None = None,
    ):
        self.source = source
        self.transform = transform
        self.skip_bad = skip_bad
        self.max_pixels = max_pixels

    def _load(self, index: int) -> Sample:
        """The source's sample, refused (DataError) when it is larger than `max_pixels`."""
        sample = self.source.load(index)
        height, width = sample.image.shape[:2]
        if self.max_pixels is not None and height * width > self.max_pixels:
            raise DataError(
                f"sample {sample.name}: the image is {width}x{height} ({height * width / 1e6:.1f} M pixels), "
                f"more than the cap of {self.max_pixels / 1e6:.1f} M pixels (eval.max_pixels / --max-pixels)"
            )
        return sample

    @property
    def classes(self) -> ClassInfo:
        return self.source.classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """The transformed sample. A bad file gives `{"error": message}`, re-raised as a DataError in
        the main process by `data.loaders.iterate` (without the loader worker's traceback). With
        `skip_bad` the next readable sample takes its place, so batches keep their size, and the bad
        file's message travels in `skipped` to the main process, which warns once per file."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        skipped = []
        for attempt in range(min(len(self.source), MAX_SUBSTITUTES + 1)):
            candidate = (index + attempt) % len(self.source)
            try:
                sample = self._load(candidate)
                break
            except DataError as exc:
                if not self.skip_bad:
                    return {"error": str(exc)}
                skipped.append(str(exc))
        else:
            return {
                "error": f"no readable sample among {MAX_SUBSTITUTES + 1} consecutive ones from index {index}: "
                f"{skipped[-1] if skipped else ''}"
            }
        if sample.mask is None:
            sample.mask = np.full(sample.image.shape[:2], 255, dtype=np.uint8)
        if seed is None:
            image, mask = self.transform(sample.image, sample.mask)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image, mask = self.transform(sample.image, sample.mask)
        return {"image": image, "mask": mask, "name": sample.name, "skipped": skipped}
