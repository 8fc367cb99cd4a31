"""Colour renderings of label maps: colourised masks, overlays, error maps, palette PNGs, legends and
preview grids (PIL only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .classes import IGNORE_INDEX, ClassInfo
from .io.files import atomic_path

ERROR_COLOUR = (255, 32, 32)
"""Error maps: pixels whose prediction differs from the ground truth."""
IGNORED_COLOUR = (160, 160, 160)
"""Error maps: pixels whose ground truth is the ignore label."""
CORRECT_BRIGHTNESS = 0.35
"""Error maps: correct pixels show the photo at this brightness, so that the errors stand out in context."""
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
PAD = 4


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be an HxW array of integer class ids, got {label.shape} {label.dtype}")
    return label


def _known(label: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """Mask of pixels holding a real class id (not ignore, not out of range)."""
    return (label >= 0) & (label < classes.num_classes)


def colorize(label: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """HxWx3 uint8 colour picture of an HxW label map; ignore and unknown ids are black."""
    label = _check_label(label)
    ids = np.where(_known(label, classes), label, IGNORE_INDEX)
    return classes.palette_array()[ids]


def displayable(image: np.ndarray) -> np.ndarray:
    """An HxWx3 RGB view of a model input for overlays: grey repeated, extra channels (alpha, infrared) dropped."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def overlay(image: np.ndarray, label: np.ndarray, classes: ClassInfo, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an HxWx3 uint8 photo with weight `alpha`; ignore/unknown pixels keep the photo."""
    label = _check_label(label)
    image = np.asarray(image)
    if image.shape != label.shape + (3,) or image.dtype != np.uint8:
        expected = label.shape + (3,)
        raise ValueError(f"image must be {expected} uint8 to match the label, got {image.shape} {image.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blended = (1.0 - alpha) * image + alpha * colorize(label, classes)
    result = image.copy()
    known = _known(label, classes)
    result[known] = np.rint(blended[known]).astype(np.uint8)
    return result


def error_map(image: np.ndarray, target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 picture of a prediction's errors: the photo darkened where `prediction` equals `target`,
    bright red where it differs, flat grey where `target` is the ignore label."""
    target, prediction = _check_label(target), _check_label(prediction)
    if prediction.shape != target.shape or np.asarray(image).shape != target.shape + (3,):
        raise ValueError(
            f"image {np.asarray(image).shape}, target {target.shape} and prediction {prediction.shape} "
            "must have the same height and width (an HxWx3 image)"
        )
    result = np.rint(np.asarray(image, dtype=np.float64) * CORRECT_BRIGHTNESS).astype(np.uint8)
    result[prediction != target] = ERROR_COLOUR
    result[target == IGNORE_INDEX] = IGNORED_COLOUR
    return result


def label_to_palette_image(label: np.ndarray, classes: ClassInfo) -> Image.Image:
    """Mode "P" image whose pixel values are the class ids and whose palette holds the class colours."""
    label = _check_label(label)
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label ids must lie in 0..255 for a palette PNG, got {label.min()}..{label.max()}")
    height, width = label.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    image.putpalette(classes.palette_array().flatten().tolist())
    return image


def save_label_png(path: str | Path, label: np.ndarray, classes: ClassInfo) -> None:
    """Write `label` atomically as a palette PNG (whatever the suffix of `path`)."""
    image = label_to_palette_image(label, classes)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _font(size: float) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right)), int(math.ceil(bottom))


def legend(classes: ClassInfo, width: int | None = None, swatch_size: int = 18, ids: bool = False) -> Image.Image:
    """Colour swatches with class names (in a font scaled with the swatches), preceded by the class ids
    with `ids`; laid out in as many columns as fit in `width` pixels (one column when `width` is None).
    The image is `width` wide unless one entry needs more."""
    font = _font(0.8 * swatch_size)
    texts = [f"{index}  {name}" if ids else name for index, name in enumerate(classes.names)]
    text_sizes = [_text_size(font, text) for text in texts]
    entry_width = swatch_size + PAD + max(w for w, _ in text_sizes) + 3 * PAD
    entry_height = max(swatch_size, max(h for _, h in text_sizes)) + PAD
    columns = max(1, (width - PAD) // entry_width) if width else 1
    columns = min(columns, classes.num_classes)
    rows = math.ceil(classes.num_classes / columns)
    image_width = max(width or 0, PAD + columns * entry_width)
    image = Image.new("RGB", (image_width, PAD + rows * entry_height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for index, (text, colour) in enumerate(zip(texts, classes.palette)):
        x = PAD + (index % columns) * entry_width
        y = PAD + (index // columns) * entry_height
        draw.rectangle([x, y, x + swatch_size - 1, y + swatch_size - 1], fill=tuple(colour), outline=(128, 128, 128))
        draw.text((x + swatch_size + PAD, y + swatch_size // 2), text, fill=TEXT, font=font, anchor="lm")
    return image


def preview_grid(
    items: Sequence[tuple[np.ndarray, np.ndarray]], classes: ClassInfo, columns: int = 4, tile_width: int = 256
) -> Image.Image:
    """Grid of photos with their masks overlaid (each scaled to `tile_width`), the legend below."""
    if not items:
        raise ValueError("preview_grid needs at least one (image, label) pair")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    tiles = []
    for image, label in items:
        tile = Image.fromarray(overlay(image, label, classes))
        tile_height = max(1, round(tile.height * tile_width / tile.width))
        tiles.append(tile.resize((tile_width, tile_height), Image.Resampling.BILINEAR))
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    cell_height = max(tile.height for tile in tiles)
    grid_width = PAD + columns * (tile_width + PAD)
    grid_height = PAD + rows * (cell_height + PAD)
    key = legend(classes, width=grid_width)
    canvas = Image.new("RGB", (max(grid_width, key.width), grid_height + key.height), BACKGROUND)
    for index, tile in enumerate(tiles):
        x = PAD + (index % columns) * (tile_width + PAD)
        y = PAD + (index // columns) * (cell_height + PAD)
        canvas.paste(tile, (x, y))
    canvas.paste(key, (0, grid_height))
    return canvas
