"""CVAT's "Segmentation mask 1.1" export: colour masks and `labelmap.txt`.

`data.root` is the unzipped export: `labelmap.txt` (`name:r,g,b:parts:actions` per line), the colour
masks `SegmentationClass/NAME.png`, and the images `JPEGImages/NAME.*` (export "with images"), or any
folder of images named like the masks given by `data.options.images` (relative to the root). Classes are
the labelmap's names and colours in its order (CVAT's `background` included); pixels of a colour that no
label has are ignored (255). `ImageSets/Segmentation/SPLIT.txt`, when it exists for the split asked for,
lists the split's names (CVAT writes one per task subset); otherwise the masks are split as `annotations`
describes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ...io.files import list_images
from ...io.images import read_rgb
from ..palettes import decode_colors
from .annotations import AnnotationExport, export_classes, split_samples
from .common import SampleFiles, index_files, match_files

LABELMAP = "labelmap.txt"


def read_labelmap(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Names and colours of a CVAT/VOC `labelmap.txt`."""
    if not path.is_file():
        raise DataError(f"cvat: {path} not found; expected the Segmentation mask 1.1 layout with labelmap.txt")
    names, colours = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        try:
            colour = tuple(int(value) for value in rest.split(":")[0].split(","))
        except ValueError:
            colour = ()
        if not name or len(colour) != 3 or not all(0 <= value <= 255 for value in colour):
            raise DataError(f"cvat: {path} line {number}: expected `name:r,g,b:parts:actions`, got {line!r}")
        names.append(name)
        colours.append(colour)
    if not names:
        raise DataError(f"cvat: {path} lists no labels")
    return names, colours  # type: ignore[return-value]


def _by_name(folder: Path) -> dict[str, Path]:
    """The images under `folder` by their path relative to it, without suffix."""
    return index_files(list_images(folder), lambda path: path.relative_to(folder).with_suffix("").as_posix())


class CVAT(AnnotationExport):
    """CVAT Segmentation mask 1.1; see the module docstring."""

    format_name = "cvat"
    layout = "root/labelmap.txt, root/SegmentationClass/NAME.png, root/JPEGImages/NAME.jpg (or data.options.images)"
    option_names = (*AnnotationExport.option_names, "images")
    masks_are_files = True

    def read_export(self) -> None:
        names, colours = read_labelmap(self.root / LABELMAP)
        self.export_classes = export_classes(names, colours)

    def annotated(self) -> list[SampleFiles]:
        mask_dir = self.require_dir(self.root / "SegmentationClass")
        image_dir = self.require_dir(self.root / str(self.options.get("images", "JPEGImages")))
        return match_files(_by_name(image_dir), _by_name(mask_dir))

    def scan(self) -> list[SampleFiles]:
        files = [f for f in self.annotated() if f.mask is not None]  # images without a mask were not labelled
        listing = self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        if listing.is_file():
            wanted = set(listing.read_text(encoding="utf-8").split())
            return [f for f in files if f.name in wanted]
        return split_samples(files, self.split, self.val_fraction, f"cvat export {self.root}")

    def read(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        """The image and the mask's colours (a palette PNG's too)."""
        return read_rgb(files.image), read_rgb(files.mask)

    def decode_mask(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
        ids, unmatched = decode_colors(raw, self.export_classes.palette, 0.0)
        return self.lookup[ids], unmatched
