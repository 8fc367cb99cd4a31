"""One image reader for files, PIL images and arrays, for models of any input channel count.

`read_image(source, channels)` returns an HxWxC uint8 array: C = 1 (grey), 3 (RGB) or 4 (RGBA)
for files and PIL images, any C for arrays. `read_label` reads a mask as stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

MODES = {1: "L", 3: "RGB", 4: "RGBA"}
"""PIL mode that files and PIL images are converted to, by the model's input channel count."""


def open_image(path: str | Path) -> Image.Image:
    """A decoded PIL image; DataError naming the file when it is missing or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    return image


def read_image(source: Any, channels: int = 3) -> np.ndarray:
    """HxWxC uint8 array of a path, a PIL image or an array (HxW for one channel, or HxWxC)."""
    if isinstance(source, (str, Path)):
        source = open_image(source)
    if isinstance(source, Image.Image):
        if channels not in MODES:
            raise DataError(f"a {channels}-channel model takes HxWx{channels} uint8 arrays, not image files")
        array = np.array(source.convert(MODES[channels]))  # a copy: writable, owned
    else:
        array = np.asarray(source)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] != channels or array.dtype != np.uint8:
        raise DataError(f"expected an HxWx{channels} uint8 array, got shape {array.shape} and dtype {array.dtype}")
    return array


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB array of an image file."""
    return read_image(path, 3)


def read_label(path: str | Path) -> np.ndarray:
    """A label image as stored: HxW for index/grey/palette PNGs (palette indices, not colours), HxWx3 for colour."""
    image = open_image(path)
    if image.mode in ("P", "L", "I", "I;16"):
        return np.array(image)
    return np.array(image.convert("RGB"))
