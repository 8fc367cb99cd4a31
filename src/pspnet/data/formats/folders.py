"""A folder of images and a folder of masks, paired by file name, with classes from a classes file.

Layout: `root/{split}/images/` and `root/{split}/masks/`; when `root/{split}` does not exist, the
flat `root/images/` and `root/masks/` serve every split. Subfolders are allowed: a sample is named
by its path relative to `images/` without the suffix (`a/b.jpg` pairs with `a/b.png`).

Masks are index images (values = class ids; the classes file's `ignore` value maps to 255) or RGB
images decoded through the classes' palette (exact colours by default; `color_tolerance` allows JPEG-like noise
and `min_region` cleans JPEG artefacts, as in the pairs format).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...classes import IGNORE_INDEX
from ...errors import DataError
from ...io.files import list_images
from ..palettes import decode_colors, load_classes_file, mask_option
from .common import FileSource, SampleFiles, index_files, index_mask, match_files


class Folders(FileSource):
    """Images and masks in parallel folders; see the module docstring for the layout."""

    format_name = "folders"
    layout = "root/{split}/images/* with root/{split}/masks/* (or root/images/* with root/masks/* for every split), same file names"
    option_names = ("color_tolerance", "min_region")

    def setup(self, classes_file: str | Path | None) -> None:
        if classes_file is None:
            raise DataError("folders: set data.classes_file (YAML/JSON with `names`, optional `palette` and `ignore`)")
        self.classes, self.ignore = load_classes_file(classes_file)
        self.tolerance = mask_option(self.options, "color_tolerance", 0.0, self.format_name)
        self.min_region = int(mask_option(self.options, "min_region", 0, self.format_name))

    def scan(self) -> list[SampleFiles]:
        split_dir = self.root / self.split
        if not split_dir.is_dir() and not (self.root / "images").is_dir():
            raise DataError(
                f"folders: split '{self.split}' not found: neither {split_dir} nor a flat "
                f"{self.root / 'images'} exists; expected layout: {self.layout}"
            )
        base = split_dir if split_dir.is_dir() else self.root
        image_dir, mask_dir = self.require_dir(base / "images"), self.require_dir(base / "masks")
        images = index_files(list_images(image_dir), lambda p: p.relative_to(image_dir).with_suffix("").as_posix())
        masks = index_files(list_images(mask_dir), lambda p: p.relative_to(mask_dir).with_suffix("").as_posix())
        return match_files(images, masks)

    def decode_mask(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
        if raw.ndim == 3:
            return decode_colors(raw, self.classes.palette, self.tolerance, self.min_region)
        ids = index_mask(raw, path)
        if self.ignore is not None:
            ids = np.where(ids == self.ignore, np.uint8(IGNORE_INDEX), ids)
        return ids, 0
