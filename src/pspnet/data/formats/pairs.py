"""Image pairs: one file per sample holding the photo (left half) and its colour-coded mask (right half).

This is the layout of the "Cityscapes image pairs" Kaggle set (256x512 JPEGs). Mask colours are
decoded to the nearest palette colour within `color_tolerance`, and JPEG artefacts are cleaned
(`min_region`, see `pspnet.data.palettes.decode_colors`): fragments smaller than `min_region`
pixels and thin blends of two neighbouring classes take the majority class around them, so that
compression creates no stray classes. Pixels still unmatched become 255 (`unmatched_fraction`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ...io.files import list_images
from ...io.images import read_rgb
from ..palettes import decode_colors, load_classes_file, mask_option
from .cityscapes import cityscapes_classes
from .common import FileSource, SampleFiles, index_files

DEFAULT_TOLERANCE = 40.0
DEFAULT_MIN_REGION = 64
"""Fragments of a class smaller than this (one 8x8 JPEG block) are taken for compression artefacts."""


class ImagePairs(FileSource):
    """Every image of `root/{split}/` is split into photo and mask halves.

    Classes default to Cityscapes' 19 train classes and colours; `classes_file` gives others.
    Options: `color_tolerance`, the largest Euclidean RGB distance to a class colour (default 40);
    `min_region`, the smallest fragment of a class kept as is (default 64 pixels; 0 disables the cleaning).
    """

    format_name = "pairs"
    layout = "root/{split}/*.jpg, each photo | mask side by side (e.g. 256x512)"
    option_names = ("color_tolerance", "min_region")

    def setup(self, classes_file: str | Path | None) -> None:
        self.classes = cityscapes_classes() if classes_file is None else load_classes_file(classes_file)[0]
        self.tolerance = mask_option(self.options, "color_tolerance", DEFAULT_TOLERANCE, self.format_name)
        self.min_region = int(mask_option(self.options, "min_region", DEFAULT_MIN_REGION, self.format_name))

    def scan(self) -> list[SampleFiles]:
        files = index_files(list_images(self.require_dir(self.root / self.split)), lambda p: p.stem)
        return [SampleFiles(name, path, path) for name, path in sorted(files.items())]

    def read(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        pair = read_rgb(files.image)
        width = pair.shape[1]
        if width % 2:
            raise DataError(f"{files.image}: width {width} is odd; expected the photo and its mask side by side")
        return np.ascontiguousarray(pair[:, : width // 2]), pair[:, width // 2 :]

    def decode_mask(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
        return decode_colors(raw, self.classes.palette, self.tolerance, self.min_region)
