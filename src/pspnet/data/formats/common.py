"""What the file-based formats share: listing (image, mask) files, reading and checking a sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...classes import IGNORE_INDEX
from ...errors import DataError
from ...io.images import read_label, read_rgb
from ..base import Sample, SegmentationSource


@dataclass(frozen=True)
class SampleFiles:
    """The files of one sample. `image` or `mask` is None for an image without mask or an orphan mask."""

    name: str
    image: Path | None
    mask: Path | None


class FileSource(SegmentationSource):
    """A format whose samples are files on disk.

    Subclasses set `format_name`, `layout` (shown in errors) and `option_names`, and implement
    `setup` (classes and settings), `scan` (every file of the split, orphans included) and `decode_mask`. `load` only sees samples
    that have both files; `files()` lists everything so that `data check` can report orphans.
    """

    format_name = ""
    layout = ""
    option_names: tuple[str, ...] = ()

    def __init__(
        self,
        root: str | Path,
        split: str,
        options: dict[str, Any] | None = None,
        classes_file: str | Path | None = None,
    ):
        self.root = Path(root)
        self.split = split
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.option_names))
        if unknown:
            known = ", ".join(self.option_names) or "none"
            raise DataError(f"{self.format_name}: unknown data.options {unknown}; options of this format: {known}")
        self.setup(classes_file)
        self._files = self.scan()
        self.samples = [files for files in self._files if files.image is not None and files.mask is not None]
        self.colour_pixels = 0
        self.unmatched_pixels = 0

    def setup(self, classes_file: str | Path | None) -> None:
        """Set `classes` (and any setting read from `options`); formats with fixed classes reject a classes file."""
        raise NotImplementedError

    def scan(self) -> list[SampleFiles]:
        """Every image and mask file of the split, paired where possible."""
        raise NotImplementedError

    def decode_mask(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
        """Class ids (HxW uint8, 255 = ignore) of a mask as read, and its count of unmatched colour pixels."""
        raise NotImplementedError

    def read(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        """The image (HxWx3 RGB) and the mask as stored (see `read_label`)."""
        return read_rgb(files.image), read_label(files.mask)

    def read_pair(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        """`read`, with one error naming every unreadable file of the pair."""
        try:
            return self.read(files)
        except DataError as image_error:
            if files.mask is None or files.mask == files.image:
                raise
            try:
                read_label(files.mask)
            except DataError as mask_error:
                raise DataError(f"{image_error}; and {mask_error}") from None
            raise

    def files(self) -> list[SampleFiles]:
        """All files of the split, including images without a mask and masks without an image."""
        return list(self._files)

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        return self.samples[index].name

    def load(self, index: int) -> Sample:
        files = self.samples[index]
        image, raw = self.read_pair(files)
        mask, unmatched = self.decode_mask(raw, files.mask)
        mismatch = size_mismatch(image, mask, files)
        if mismatch:
            raise DataError(mismatch)
        bad = out_of_range(label_histogram(mask), self.classes.num_classes)
        if bad:
            raise DataError(describe_out_of_range(files.mask, bad, self.classes.num_classes))
        if raw.ndim == 3:
            self.colour_pixels += mask.size
            self.unmatched_pixels += unmatched
        return Sample(image, mask, files.name)

    @property
    def unmatched_fraction(self) -> float:
        """Fraction of the colour-mask pixels decoded so far (by this process) that matched no class (set to 255)."""
        return self.unmatched_pixels / self.colour_pixels if self.colour_pixels else 0.0

    def require_dir(self, path: Path) -> Path:
        """`path` if it is a folder, else a DataError that shows the expected layout."""
        if not path.is_dir():
            raise DataError(f"{self.format_name}: folder not found: {path}; expected layout: {self.layout}")
        return path

    def reject_classes_file(self, classes_file: str | Path | None) -> None:
        if classes_file is not None:
            raise DataError(f"{self.format_name} has a fixed class set; remove data.classes_file ({classes_file})")


def index_files(paths: Iterable[Path], key: Callable[[Path], str]) -> dict[str, Path]:
    """Map `key(path)` to path; two files with the same key are an error naming both."""
    index: dict[str, Path] = {}
    for path in paths:
        name = key(path)
        if name in index:
            raise DataError(f"two files for sample '{name}': {index[name]} and {path}")
        index[name] = path
    return index


def match_files(images: dict[str, Path], masks: dict[str, Path]) -> list[SampleFiles]:
    """Pair images and masks by key, sorted by key; unpaired files keep None on the other side."""
    return [SampleFiles(name, images.get(name), masks.get(name)) for name in sorted(images.keys() | masks.keys())]


def index_mask(raw: np.ndarray, path: Path) -> np.ndarray:
    """A single-channel mask as uint8 ids; colour masks and values beyond 255 are errors naming the file."""
    if raw.ndim != 2:
        raise DataError(f"mask {path}: expected a single-channel (index or palette) PNG, got a colour image")
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise DataError(f"mask {path}: label values {int(raw.min())}..{int(raw.max())} do not fit in 0..255")
        raw = raw.astype(np.uint8)
    return raw


def label_histogram(mask: np.ndarray) -> np.ndarray:
    """Pixel count of every value 0..255 of a uint8 mask."""
    return np.bincount(mask.ravel(), minlength=256)


def out_of_range(histogram: np.ndarray, num_classes: int) -> list[int]:
    """Mask values present in `histogram` that are neither a class id nor the ignore label."""
    return [value for value in np.flatnonzero(histogram).tolist() if value >= num_classes and value != IGNORE_INDEX]


def describe_out_of_range(path: Path, values: list[int], num_classes: int) -> str:
    shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
    return f"mask {path}: label values {shown} outside the classes 0..{num_classes - 1} (255 = ignore)"


def size_mismatch(image: np.ndarray, mask: np.ndarray, files: SampleFiles) -> str | None:
    """A message when image and mask differ in size, else None."""
    if image.shape[:2] == mask.shape[:2]:
        return None
    (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
    if files.image == files.mask:
        return f"{files.image}: photo is {ih}x{iw} but mask is {mh}x{mw}"
    return f"image {files.image} is {ih}x{iw} but its mask {files.mask} is {mh}x{mw}"
