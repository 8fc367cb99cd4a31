"""Prediction on image files: label PNGs, colour renderings and overlays, or Cityscapes submissions."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..classes import ClassInfo
from ..config import EvalConfig
from ..data.formats.cityscapes import cityscapes_classes, train_id_to_label_id
from ..errors import ConfigError, DataError
from ..inference.predict import predict_array
from ..io.files import IMAGE_EXTENSIONS, list_images, remove_stale_temp_files, save_image
from ..io.images import read_image
from ..visualize import colorize, overlay, save_label_png
from .distributed import Distributed, check_all, gather, shard
from .progress import progress_bar

OUTPUT_FORMATS = ("pspnet", "cityscapes")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"


@dataclass
class PredictionReport:
    written: list[Path] = field(default_factory=list)
    """The label file (or Cityscapes file) of each image segmented."""
    skipped: list[Path] = field(default_factory=list)
    """Inputs whose outputs were all there already (`skip_existing`)."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """(input, message naming it) for inputs that could not be segmented."""


def collect_inputs(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """(file, output name) for files and folders (searched recursively for images).

    An output name is the file's path relative to the folder that all inputs share (a folder input
    counts as its own root, a file as its parent's), so `a/x.png b/x.png` give `a/x` and `b/x`; files
    whose names differ only by suffix (`x.png`, `x.jpg`) keep it (`x.png`, `x.jpg`). No two outputs
    collide. A file listed twice is segmented once; a missing one is kept (it fails when read).
    """
    found: dict[Path, Path] = {}  # absolute file -> its input's root
    for item in map(Path, inputs):
        if item.is_dir():
            found.update((Path(os.path.abspath(path)), Path(os.path.abspath(item))) for path in list_images(item))
        else:  # a missing file fails on its own when it is read, and the other inputs are still processed
            found.setdefault(Path(os.path.abspath(item)), Path(os.path.abspath(item.parent)))
    if not found:
        return []
    base = Path(os.path.commonpath([str(root) for root in found.values()]))
    relative = {path: path.relative_to(base) for path in found}
    stems = Counter(name.with_suffix("") for name in relative.values())
    return [(path, name.with_suffix("") if stems[name.with_suffix("")] == 1 else name) for path, name in relative.items()]


def cityscapes_prediction_name(stem: Path) -> Path:
    """`city/X_labelIds.png` for the input `city/X_leftImg8bit.png` (`X` = city_sequence_frame).

    The official evaluator finds the prediction of `X_gtFine_labelIds.png` as the one file named
    `X*.png` anywhere under its results folder.
    """
    name = stem.name
    for suffix in IMAGE_EXTENSIONS:
        name = name.removesuffix(suffix)
    return stem.with_name(name.removesuffix(CITYSCAPES_IMAGE_SUFFIX) + "_labelIds.png")


def output_files(out_dir: Path, stem: Path, output_format: str) -> list[Path]:
    """Every file `predict_files` writes for the input named `stem`; the first is the label file."""
    if output_format == "cityscapes":
        return [out_dir / cityscapes_prediction_name(stem)]
    return [out_dir / "labels" / f"{stem}.png", out_dir / "color" / f"{stem}.png", out_dir / "overlay" / f"{stem}.jpg"]


def displayable(image: np.ndarray) -> np.ndarray:
    """An HxWx3 RGB view of a model input for overlays: grey repeated, extra channels (alpha, infrared) dropped."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def _write_pspnet(files: list[Path], image: np.ndarray, label: np.ndarray, classes: ClassInfo) -> None:
    """Colour and overlay renderings, then the palette PNG of class ids (written last: its presence marks a
    complete output)."""
    label_path, color_path, overlay_path = files
    save_image(color_path, Image.fromarray(colorize(label, classes)))
    save_image(overlay_path, Image.fromarray(overlay(displayable(image), label, classes)), quality=90)
    save_label_png(label_path, label, classes)


def _check_cityscapes_model(model: torch.nn.Module) -> None:
    """ConfigError unless `model` predicts the 19 Cityscapes train ids (DataError without cityscapesscripts)."""
    if model.card.num_classes != cityscapes_classes().num_classes:
        raise ConfigError(f"the cityscapes output format needs a model of the {cityscapes_classes().num_classes} "
                          f"Cityscapes train classes; this one predicts {model.card.num_classes}")


def predict_files(model: torch.nn.Module, inputs: list[str | Path], out_dir: str | Path,
                  settings: EvalConfig | None = None, progress: bool = True,
                  output_format: str = "pspnet", skip_existing: bool = False,
                  distributed: Distributed | None = None) -> PredictionReport:
    """Segment every input image and write the results in `output_format`:

    * `pspnet`: `labels/` (palette PNG, value = class id), `color/` and `overlay/`;
    * `cityscapes`: `<name>_labelIds.png` per image (see `cityscapes_prediction_name`), for the
      official evaluator or a benchmark submission; needs a model of the 19 Cityscapes train classes.

    Output names follow `collect_inputs`. Inputs that cannot be read (or are larger than the
    settings' pixel cap) are recorded in the report; the others are still processed. With
    `skip_existing`, inputs whose outputs are all there are skipped (an interrupted image is redone).
    With several processes, each segments its share of the inputs (each image once) and every
    process returns the report of the whole job.
    """
    distributed = distributed or Distributed()
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if output_format == "cityscapes":
        _check_cityscapes_model(model)
    settings = settings or EvalConfig()
    out_dir = Path(out_dir)
    if distributed.is_main:  # before any process writes (check_all is the barrier)
        for folder in ([out_dir] if output_format == "cityscapes" else [out_dir / "labels", out_dir / "color", out_dir / "overlay"]):
            remove_stale_temp_files(folder)
    check_all(distributed, None)
    report = PredictionReport()
    files = shard(collect_inputs(inputs), distributed)
    with progress_bar(len(files), "predict", progress and distributed.is_main) as bar:
        for path, stem in files:
            outputs = output_files(out_dir, stem, output_format)
            if skip_existing and all(output.is_file() for output in outputs):
                report.skipped.append(path)
                bar.update()
                continue
            try:
                image = read_image(path, model.card.in_channels, max_pixels=settings.pixel_cap(), exif=True)
                label = predict_array(model, image, settings)
            except DataError as exc:
                report.failed.append((path, str(exc)))
            else:
                if output_format == "cityscapes":
                    save_image(outputs[0], Image.fromarray(train_id_to_label_id()[label]))
                else:
                    _write_pspnet(outputs, image, label, model.card.classes)
                report.written.append(outputs[0])
            bar.update()
    parts = gather(distributed, report)
    return PredictionReport(*(sum((getattr(part, name) for part in parts), []) for name in ("written", "skipped", "failed")))
