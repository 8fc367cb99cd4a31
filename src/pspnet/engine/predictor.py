"""Prediction on image files: label PNGs, colour renderings and overlays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import EvalConfig
from ..data.transforms import normalize_image
from ..errors import DataError
from ..utils.io import IMAGE_EXTENSIONS, list_images, read_rgb, save_image
from ..visualize import colorize, overlay, save_label_png
from .inference import Inferencer


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


def predict_files(model: torch.nn.Module, inputs: list[str | Path], out_dir: str | Path,
                  settings: EvalConfig | None = None, progress: bool = True) -> PredictionReport:
    """Segment every input image; write `labels/` (palette PNG, value = class id), `color/` and `overlay/`.

    Unreadable inputs are recorded in the report and skipped; the others are still processed.
    """
    out_dir = Path(out_dir)
    inferencer = Inferencer(model.eval(), settings)
    device = next(model.parameters()).device
    report = PredictionReport()
    files = collect_inputs(inputs)
    for path, relative in tqdm(files, desc="predict", unit="img", disable=not progress, dynamic_ncols=True):
        try:
            image = read_rgb(path)
        except DataError as exc:
            report.failed.append((path, str(exc)))
            continue
        tensor = normalize_image(image, model.mean, model.std).unsqueeze(0).to(device)
        label = inferencer.probabilities(tensor).argmax(1)[0].to(torch.uint8).cpu().numpy()
        stem = relative.with_suffix("")
        label_path = out_dir / "labels" / f"{stem}.png"
        save_label_png(label_path, label, model.classes)
        save_image(out_dir / "color" / f"{stem}.png", Image.fromarray(colorize(label, model.classes)))
        save_image(out_dir / "overlay" / f"{stem}.jpg", Image.fromarray(overlay(image, label, model.classes)), quality=90)
        report.written.append(label_path)
    return report
