"""Dataset formats on disk: Cityscapes, ADE20K, PASCAL VOC, image pairs and plain folders.

`build_source(format, root, split, ...)` returns the `SegmentationSource` of one split; every
format also lists its files (`files()`) so that `pspnet data check` can report orphans.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import DataError
from .ade20k import ADE20K
from .cityscapes import Cityscapes
from .common import FileSource, SampleFiles
from .folders import Folders
from .pairs import ImagePairs
from .voc import VOC

FORMATS: dict[str, type[FileSource]] = {cls.format_name: cls for cls in (Cityscapes, ADE20K, VOC, ImagePairs, Folders)}

__all__ = ["FORMATS", "build_source", "FileSource", "SampleFiles", "Cityscapes", "ADE20K", "VOC", "ImagePairs", "Folders"]


def build_source(format: str, root: str | Path | None, split: str, classes_file: str | Path | None = None,
                 options: dict[str, Any] | None = None) -> FileSource:
    """The samples of `split` of the dataset at `root` in `format` (a key of `FORMATS`)."""
    if format not in FORMATS:
        raise DataError(f"unknown data format '{format}'; known formats: {', '.join(FORMATS)}")
    cls = FORMATS[format]
    if root is None:
        raise DataError(f"data.root is not set; the {format} format expects {cls.layout}")
    if not Path(root).is_dir():
        raise DataError(f"dataset root not found: {root}; the {format} format expects {cls.layout}")
    return cls(root, split, options, classes_file=classes_file)
