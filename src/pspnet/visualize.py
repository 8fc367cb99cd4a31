"""Colour renderings of label maps: colourised masks, overlays, palette PNGs, legends,
confusion-matrix heatmaps and preview grids (PIL only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .classes import IGNORE_INDEX, ClassInfo
from .io.files import atomic_path, save_image

HEATMAP_LOW = np.array([255, 255, 255], dtype=np.float64)  # colour of a 0 % cell
HEATMAP_HIGH = np.array([8, 48, 107], dtype=np.float64)  # colour of a 100 % cell
HEATMAP_EMPTY_ROW = (200, 200, 200)  # rows of classes absent from the ground truth
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


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right)), int(math.ceil(bottom))


def legend(classes: ClassInfo, width: int | None = None, swatch_size: int = 16) -> Image.Image:
    """Colour swatches with class names; laid out in as many columns as fit in `width` pixels
    (one column when `width` is None). The image is `width` wide unless one entry needs more."""
    font = _font()
    text_sizes = [_text_size(font, name) for name in classes.names]
    entry_width = swatch_size + PAD + max(w for w, _ in text_sizes) + 2 * PAD
    entry_height = max(swatch_size, max(h for _, h in text_sizes)) + PAD
    columns = max(1, (width - PAD) // entry_width) if width else 1
    columns = min(columns, classes.num_classes)
    rows = math.ceil(classes.num_classes / columns)
    image_width = max(width or 0, PAD + columns * entry_width)
    image = Image.new("RGB", (image_width, PAD + rows * entry_height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for index, (name, colour) in enumerate(zip(classes.names, classes.palette)):
        x = PAD + (index % columns) * entry_width
        y = PAD + (index // columns) * entry_height
        draw.rectangle([x, y, x + swatch_size - 1, y + swatch_size - 1], fill=tuple(colour), outline=(128, 128, 128))
        text_y = y + (swatch_size - text_sizes[index][1]) // 2
        draw.text((x + swatch_size + PAD, text_y), name, fill=TEXT, font=font)
    return image


def _heatmap_colours(fractions: np.ndarray) -> np.ndarray:
    """(K, K, 3) uint8 colours interpolating from white (0) to dark blue (1)."""
    colours = HEATMAP_LOW + fractions[..., None] * (HEATMAP_HIGH - HEATMAP_LOW)
    return np.rint(colours).astype(np.uint8)


def confusion_heatmap(
    confusion: np.ndarray, class_names: Sequence[str], path: str | Path, cell_size: int | None = None
) -> Image.Image:
    """Write (atomically) and return a heatmap of the row-normalised confusion matrix ``[gt, pred]``.

    Rows are ground-truth classes (names on the left), columns predictions (names on top); each cell
    is the fraction of a class's pixels predicted as the column class, white 0 % to dark blue 100 %.
    Rows of classes absent from the ground truth are grey. `cell_size` defaults to a size that fits the names.
    """
    confusion = np.asarray(confusion)
    num_classes = len(class_names)
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix of shape {confusion.shape} does not match {num_classes} class names")
    font = _font()
    text_sizes = [_text_size(font, name) for name in class_names]
    name_length = max(w for w, _ in text_sizes)
    if cell_size is None:
        cell_size = max(max(h for _, h in text_sizes) + 2, min(32, 600 // num_classes))

    row_totals = confusion.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = np.divide(confusion, row_totals, out=np.zeros(confusion.shape), where=row_totals > 0)
    colours = _heatmap_colours(fractions)
    colours[row_totals[:, 0] == 0] = HEATMAP_EMPTY_ROW
    grid = np.repeat(np.repeat(colours, cell_size, axis=0), cell_size, axis=1)

    caption = "rows: ground truth, columns: prediction (row-normalised)"
    caption_width, caption_height = _text_size(font, caption)
    left = top = name_length + 2 * PAD
    side = num_classes * cell_size
    image = Image.new("RGB", (max(left + side, caption_width) + PAD, top + side + caption_height + 2 * PAD), BACKGROUND)
    image.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(image)
    for index, (name, (text_width, text_height)) in enumerate(zip(class_names, text_sizes)):
        offset = index * cell_size + (cell_size - text_height) // 2
        draw.text((left - PAD - text_width, top + offset), name, fill=TEXT, font=font)
        # column names: drawn horizontally on a strip, then turned to read bottom-up above the column
        strip = Image.new("RGB", (name_length, cell_size), BACKGROUND)
        ImageDraw.Draw(strip).text((0, (cell_size - text_height) // 2), name, fill=TEXT, font=font)
        image.paste(strip.rotate(90, expand=True), (left + index * cell_size, top - PAD - name_length))
    draw.text((PAD, top + side + PAD), caption, fill=TEXT, font=font)
    save_image(path, image)
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
