"""PASCAL VOC 2012 segmentation (21 classes), optionally with the SBD augmented masks.

VOC's `SegmentationClass` PNGs are palette images whose pixel values are the class ids; the
object borders carry 255 and stay ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...classes import ClassInfo, default_palette
from ...errors import DataError
from .common import FileSource, SampleFiles, index_mask

VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

VOC_CLASSES = ClassInfo(VOC_NAMES, tuple(default_palette(len(VOC_NAMES))))


class VOC(FileSource):
    """`JPEGImages/<id>.jpg` and `SegmentationClass/<id>.png` for the ids of `ImageSets/Segmentation/{split}.txt`.

    Options: `aug: true` reads SBD's `SegmentationClassAug/<id>.png` with the list
    `ImageSets/Segmentation/{split}_aug.txt`; `list_file` (relative to root, or absolute) names another list.
    """

    format_name = "voc"
    layout = (
        "root/JPEGImages/<id>.jpg, root/SegmentationClass[Aug]/<id>.png, root/ImageSets/Segmentation/{split}[_aug].txt"
    )
    option_names = ("aug", "list_file")

    def setup(self, classes_file: str | Path | None) -> None:
        self.reject_classes_file(classes_file)
        self.classes = VOC_CLASSES

    def scan(self) -> list[SampleFiles]:
        aug = self.options.get("aug", False)
        if not isinstance(aug, bool):
            raise DataError(f"voc: data.options.aug must be true or false, got {aug!r}")
        image_dir = self.require_dir(self.root / "JPEGImages")
        mask_dir = self.require_dir(self.root / ("SegmentationClassAug" if aug else "SegmentationClass"))
        default_list = Path("ImageSets/Segmentation") / f"{self.split}{'_aug' if aug else ''}.txt"
        list_file = self.root / self.options.get("list_file", default_list)
        if not list_file.is_file():
            raise DataError(f"voc: list file not found: {list_file}; expected layout: {self.layout}")
        try:
            lines = list_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"voc: cannot read list file {list_file}: {exc}") from None
        # A line is an id, or "image_path mask_path" as in common train_aug lists: keep the stem.
        ids = [Path(line.split()[0]).stem for line in lines if line.strip()]
        return [
            SampleFiles(id_, _existing(image_dir / f"{id_}.jpg"), _existing(mask_dir / f"{id_}.png"))
            for id_ in dict.fromkeys(ids)
        ]

    def decode_mask(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
        return index_mask(raw, path), 0


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None
