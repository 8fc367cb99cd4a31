"""The table of dataset sources: every `data.format` name, how to build it, its default classes.

Training, evaluation, `pspnet data check` and `pspnet convert --dataset` all look formats up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..classes import ClassInfo
from ..config import DataConfig
from ..errors import ConfigError, DataError
from .base import SegmentationSource
from .formats.ade20k import ADE20K, ADE20K_CLASSES
from .formats.cityscapes import Cityscapes, cityscapes_classes
from .formats.coco import COCO
from .formats.common import FileSource
from .formats.cvat import CVAT
from .formats.folders import Folders
from .formats.label_studio import LabelStudio
from .formats.pairs import ImagePairs
from .formats.shards import ShardSource
from .formats.voc import VOC, VOC_CLASSES
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import ContextScenes


@dataclass(frozen=True)
class SourceSpec:
    """A dataset format: its builder, its layout on disk and its classes when they are fixed."""

    name: str
    build: Callable[[DataConfig, str], SegmentationSource]
    layout: str
    classes: Callable[[], ClassInfo] | None
    """The format's own classes; None when they come from `data.classes_file`."""


def _file_source(cls: type[FileSource]) -> Callable[[DataConfig, str], SegmentationSource]:
    def build(data: DataConfig, split: str) -> SegmentationSource:
        if data.root is None:
            raise DataError(f"data.root is not set; the {cls.format_name} format expects {cls.layout}")
        if not Path(data.root).is_dir():
            raise DataError(f"dataset root not found: {data.root}; the {cls.format_name} format expects {cls.layout}")
        return cls(data.root, split, data.options, classes_file=data.classes_file)

    return build


def _shards(data: DataConfig, split: str) -> SegmentationSource:
    if data.root is None:
        raise DataError(f"data.root is not set; the shards format expects {ShardSource.layout}")
    if data.options or data.classes_file is not None:
        raise DataError("shards: the classes come from the shards' index; remove data.options and data.classes_file")
    return ShardSource(data.root, split)


def _synthetic(data: DataConfig, split: str) -> SegmentationSource:
    return ContextScenes.from_config(data.synthetic, "train" if split == data.train_split else split)


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec(
            "synthetic", _synthetic, "no files: scenes generated from data.synthetic", lambda: SYNTHETIC_CLASSES
        ),
        SourceSpec("cityscapes", _file_source(Cityscapes), Cityscapes.layout, cityscapes_classes),
        SourceSpec("ade20k", _file_source(ADE20K), ADE20K.layout, lambda: ADE20K_CLASSES),
        SourceSpec("voc", _file_source(VOC), VOC.layout, lambda: VOC_CLASSES),
        SourceSpec("pairs", _file_source(ImagePairs), ImagePairs.layout, cityscapes_classes),
        SourceSpec("folders", _file_source(Folders), Folders.layout, None),
        SourceSpec("label-studio", _file_source(LabelStudio), LabelStudio.layout, None),
        SourceSpec("coco", _file_source(COCO), COCO.layout, None),
        SourceSpec("cvat", _file_source(CVAT), CVAT.layout, None),
        SourceSpec("shards", _shards, ShardSource.layout, None),
    )
}


def source_spec(name: str) -> SourceSpec:
    """The spec of format `name`; DataError listing the known formats when there is none."""
    if name not in SOURCES:
        raise DataError(f"unknown data format '{name}'; known formats: {', '.join(SOURCES)}")
    return SOURCES[name]


def build_source(data: DataConfig, split: str) -> SegmentationSource:
    """The samples of `split` of the dataset `data` describes."""
    return source_spec(data.format).build(data, split)


def dataset_classes(name: str) -> ClassInfo:
    """The fixed classes of dataset `name`; ConfigError naming the datasets that have them."""
    spec = SOURCES.get(name)
    if spec is None or spec.classes is None:
        known = ", ".join(key for key, value in SOURCES.items() if value.classes is not None)
        problem = (
            "unknown dataset" if spec is None else "no fixed classes for dataset (they come from data.classes_file)"
        )
        raise ConfigError(f"{problem} '{name}'; datasets with their own classes: {known}")
    return spec.classes()
