"""What the worker does with one upload: decode it, segment it, and encode the answer (no HTTP here).

The label map takes the same route as `pspnet predict` (`read_image` with the EXIF orientation,
`predict_array`, `label_to_palette_image`), so its PNG holds the same class ids.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..classes import ClassInfo
from ..config import EvalConfig
from ..inference.predict import predict_array
from ..io.images import read_image
from ..visualize import displayable, label_to_palette_image, overlay


@dataclass(frozen=True)
class Segmentation:
    """One segmented upload: the label map's PNG (pixel value = class id), areas and timing."""

    width: int
    height: int
    inference_ms: float
    areas: list[dict[str, Any]]
    label_png: bytes
    overlay_png: bytes | None

    def to_json(self, queue_ms: float) -> dict[str, Any]:
        """The JSON answer of `POST /v1/segment`; PNGs as base64."""
        result = {
            "width": self.width,
            "height": self.height,
            "inference_ms": round(self.inference_ms, 2),
            "queue_ms": round(queue_ms, 2),
            "classes": self.areas,
            "label_png": base64.b64encode(self.label_png).decode("ascii"),
        }
        if self.overlay_png is not None:
            result["overlay_png"] = base64.b64encode(self.overlay_png).decode("ascii")
        return result


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def class_areas(label: np.ndarray, classes: ClassInfo) -> list[dict[str, Any]]:
    """Id, name, colour, pixel count and fraction of each class present in `label`, largest first."""
    counts = np.bincount(label.ravel(), minlength=classes.num_classes)
    present = sorted(np.flatnonzero(counts), key=lambda index: (-counts[index], index))
    return [
        {
            "id": int(index),
            "name": classes.names[index],
            "color": list(classes.palette[index]),
            "pixels": int(counts[index]),
            "fraction": float(counts[index]) / label.size,
        }
        for index in present
    ]


def segment_upload(
    model: Any, settings: EvalConfig, data: bytes, max_pixels: int, with_overlay: bool = False
) -> Segmentation:
    """Segment encoded image bytes; DataError (ImageTooLargeError, NotAnImageError) for bad uploads."""
    image = read_image(data, model.card.in_channels, max_pixels=max_pixels, exif=True)
    start = time.perf_counter()
    label = predict_array(model, image, settings)
    inference_ms = (time.perf_counter() - start) * 1000
    classes = model.card.classes
    blended = png_bytes(Image.fromarray(overlay(displayable(image), label, classes))) if with_overlay else None
    return Segmentation(
        width=image.shape[1],
        height=image.shape[0],
        inference_ms=inference_ms,
        areas=class_areas(label, classes),
        label_png=png_bytes(label_to_palette_image(label, classes)),
        overlay_png=blended,
    )
