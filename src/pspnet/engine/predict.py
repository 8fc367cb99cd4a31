"""Prediction on image files: label PNGs, colour renderings and overlays, or Cityscapes submissions."""

from __future__ import annotations

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
from ..io.files import IMAGE_EXTENSIONS, list_images, save_image
from ..io.images import read_image
from ..visualize import colorize, overlay, save_label_png
from .progress import progress_bar

OUTPUT_FORMATS = ("pspnet", "cityscapes")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"


@dataclass
class PredictionReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def collect_inputs(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """(file, name relative to its input) for files and folders (searched recursively for images)."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend((path, path.relative_to(item)) for path in list_images(item))
        elif item.suffix.lower() in IMAGE_EXTENSIONS or item.exists():
            found.append((item, Path(item.name)))
        else:
            raise DataError(f"input not found: {item}")
    return found


def cityscapes_prediction_name(relative: Path) -> Path:
    """`city/X_labelIds.png` for the input `city/X_leftImg8bit.png` (`X` = city_sequence_frame).

    The official evaluator finds the prediction of `X_gtFine_labelIds.png` as the one file named
    `X*.png` anywhere under its results folder.
    """
    return relative.with_name(relative.stem.removesuffix(CITYSCAPES_IMAGE_SUFFIX) + "_labelIds.png")


def displayable(image: np.ndarray) -> np.ndarray:
    """An HxWx3 RGB view of a model input for overlays: grey repeated, extra channels (alpha, infrared) dropped."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def _write_pspnet(out_dir: Path, relative: Path, image: np.ndarray, label: np.ndarray, classes: ClassInfo) -> Path:
    """`labels/` (palette PNG, value = class id), `color/` and `overlay/`; returns the label file."""
    stem = relative.with_suffix("")
    label_path = out_dir / "labels" / f"{stem}.png"
    save_label_png(label_path, label, classes)
    save_image(out_dir / "color" / f"{stem}.png", Image.fromarray(colorize(label, classes)))
    save_image(out_dir / "overlay" / f"{stem}.jpg", Image.fromarray(overlay(displayable(image), label, classes)), quality=90)
    return label_path


def _check_cityscapes_model(model: torch.nn.Module) -> None:
    """ConfigError unless `model` predicts the 19 Cityscapes train ids (DataError without cityscapesscripts)."""
    if model.card.num_classes != cityscapes_classes().num_classes:
        raise ConfigError(f"the cityscapes output format needs a model of the {cityscapes_classes().num_classes} "
                          f"Cityscapes train classes; this one predicts {model.card.num_classes}")


def _write_cityscapes(out_dir: Path, relative: Path, label: np.ndarray) -> Path:
    """A greyscale PNG of Cityscapes label ids (train ids mapped back), nothing else: the evaluator
    refuses a folder holding two files for one image."""
    path = out_dir / cityscapes_prediction_name(relative)
    save_image(path, Image.fromarray(train_id_to_label_id()[label]))
    return path


def predict_files(model: torch.nn.Module, inputs: list[str | Path], out_dir: str | Path,
                  settings: EvalConfig | None = None, progress: bool = True,
                  output_format: str = "pspnet") -> PredictionReport:
    """Segment every input image and write the results in `output_format`:

    * `pspnet`: `labels/` (palette PNG, value = class id), `color/` and `overlay/`;
    * `cityscapes`: `<name>_labelIds.png` per image (see `cityscapes_prediction_name`), for the
      official evaluator or a benchmark submission; needs a model of the 19 Cityscapes train classes.

    Unreadable inputs are recorded in the report and skipped; the others are still processed.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if output_format == "cityscapes":
        _check_cityscapes_model(model)
    out_dir = Path(out_dir)

    def segment(path: Path, relative: Path) -> Path:
        image = read_image(path, model.card.in_channels)
        label = predict_array(model, image, settings)
        if output_format == "cityscapes":
            return _write_cityscapes(out_dir, relative, label)
        return _write_pspnet(out_dir, relative, image, label, model.card.classes)

    report = PredictionReport()
    files = collect_inputs(inputs)
    with progress_bar(len(files), "predict", progress) as bar:
        for path, relative in files:
            try:
                report.written.append(segment(path, relative))
            except DataError as exc:
                report.failed.append((path, str(exc)))
            bar.update()
    return report
