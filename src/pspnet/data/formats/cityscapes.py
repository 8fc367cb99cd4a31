"""Cityscapes fine annotations, trained on the 19 evaluation classes (trainIds).

The id -> trainId table, class names and colours all come from `cityscapesscripts.helpers.labels`,
the benchmark's own definition, imported on first use.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...classes import IGNORE_INDEX, ClassInfo
from ...errors import DataError
from .common import FileSource, SampleFiles, index_files, index_mask, match_files

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"
UNLABELED_ID = 0


class _Tables(NamedTuple):
    label_to_train: np.ndarray
    train_to_label: np.ndarray
    classes: ClassInfo


@functools.cache
def _tables() -> _Tables:
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        raise DataError(
            "the cityscapes format needs the cityscapesscripts package: pip install cityscapesscripts"
        ) from None
    train_labels = sorted(
        (label for label in labels if label.id >= 0 and 0 <= label.trainId < IGNORE_INDEX),
        key=lambda label: label.trainId,
    )
    label_to_train = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    train_to_label = np.full(256, UNLABELED_ID, dtype=np.uint8)
    for label in train_labels:
        label_to_train[label.id] = label.trainId
        train_to_label[label.trainId] = label.id
    label_to_train.flags.writeable = False
    train_to_label.flags.writeable = False
    classes = ClassInfo(
        tuple(label.name for label in train_labels), tuple(tuple(label.color) for label in train_labels)
    )
    return _Tables(label_to_train, train_to_label, classes)


def label_id_to_train_id() -> np.ndarray:
    """(256,) uint8 lookup table: Cityscapes label id -> train id; ids of non-train classes -> 255."""
    return _tables().label_to_train


def train_id_to_label_id() -> np.ndarray:
    """(256,) uint8 lookup table: train id -> label id (for benchmark submissions); everything else -> 0 (unlabeled)."""
    return _tables().train_to_label


def cityscapes_classes() -> ClassInfo:
    """The 19 train classes with their official names and colours, in train-id order."""
    return _tables().classes


class Cityscapes(FileSource):
    """`leftImg8bit/{split}/<city>/*_leftImg8bit.png` with `gtFine/{split}/<city>/*_gtFine_labelIds.png`."""

    format_name = "cityscapes"
    layout = "root/leftImg8bit/{split}/<city>/*" + IMAGE_SUFFIX + " and root/gtFine/{split}/<city>/*" + MASK_SUFFIX

    def setup(self, classes_file: str | Path | None) -> None:
        self.reject_classes_file(classes_file)
        self.classes = cityscapes_classes()

    def scan(self) -> list[SampleFiles]:
        image_dir = self.require_dir(self.root / "leftImg8bit" / self.split)
        mask_dir = self.require_dir(self.root / "gtFine" / self.split)
        images = index_files(sorted(image_dir.glob("*/*" + IMAGE_SUFFIX)), lambda p: p.name[: -len(IMAGE_SUFFIX)])
        masks = index_files(sorted(mask_dir.glob("*/*" + MASK_SUFFIX)), lambda p: p.name[: -len(MASK_SUFFIX)])
        return match_files(images, masks)

    def decode_mask(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
        return label_id_to_train_id()[index_mask(raw, path)], 0
