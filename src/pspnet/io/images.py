"""One image reader for files, PIL images and arrays, for models of any input channel count.

`read_image(source, channels)` returns an HxWxC uint8 array: C = 1 (grey), 3 (RGB) or 4 (RGBA)
for files, encoded bytes (uploads) and PIL images, any C for arrays. Sizes are checked from the
header before any pixel is decoded (`max_pixels`; decompression bombs are refused), 16-bit images
are scaled to 8 bits (not clipped), CMYK and palette images are converted. `read_label` reads a mask as stored.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, ImageTooLargeError, NotAnImageError

MODES = {1: "L", 3: "RGB", 4: "RGBA"}
"""PIL mode that files and PIL images are converted to, by the model's input channel count."""

DECODE_LIMIT = 2 * Image.MAX_IMAGE_PIXELS
"""Pixels above which no image is decoded at all (PIL's decompression-bomb limit, about 179 M)."""

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""Grey modes holding 16-bit values (PIL reads 16-bit grey PNGs and TIFFs as these)."""


def describe_size(width: int, height: int) -> str:
    return f"{width}x{height} ({width * height / 1e6:.1f} M pixels)"


def _check_size(image: Image.Image, max_pixels: int | None, name: str) -> None:
    width, height = image.size
    limit = DECODE_LIMIT if max_pixels is None else min(max_pixels, DECODE_LIMIT)
    if width * height > limit:
        setting = "" if max_pixels is None else " (eval.max_pixels / --max-pixels)"
        raise ImageTooLargeError(
            f"image {name} is {describe_size(width, height)}, more than the cap of "
            f"{limit / 1e6:.1f} M pixels{setting}; refused before decoding"
        )


def open_image(source: str | Path | bytes, max_pixels: int | None = None) -> Image.Image:
    """A decoded PIL image of a file or of an encoded image's bytes (an upload); DataError naming it when
    it is missing or empty, too large (ImageTooLargeError, checked from its header, before decoding), in no
    format Pillow recognises (NotAnImageError) or cannot be decoded (e.g. truncated)."""
    if isinstance(source, bytes):
        if not source:
            raise DataError("empty upload: no image bytes")
        name, stream = "(upload)", io.BytesIO(source)
    else:
        name, stream = str(source), Path(source)
        if not stream.is_file():
            raise DataError(f"image not found: {name}")
    try:
        with warnings.catch_warnings():  # our own cap below is the check; PIL's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image {name} refused before decoding: {exc}") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"cannot read image {name}: not an image format Pillow recognises") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None
    _check_size(image, max_pixels, name)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None
    return image


def _to_eight_bits(image: Image.Image, name: str) -> Image.Image:
    """16-bit grey images scaled to 8 bits (value >> 8, as Pillow does for 16-bit colour); float images refused."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"image {name}: 32-bit integer values outside 0..65535 cannot be shown as 8-bit")
        return Image.fromarray((values >> 8).astype(np.uint8), "L")
    if image.mode == "F":
        raise DataError(f"image {name}: 32-bit float images are not supported; save it as 8- or 16-bit")
    return image


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is, uint16 scaled (>> 8), floats in [0, 1] scaled by 255; anything else is an error."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
            raise DataError("float image arrays must hold values in [0, 1]")
        return np.rint(array * 255).astype(np.uint8)
    raise DataError(f"image arrays must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}")


def read_image(source: Any, channels: int = 3, max_pixels: int | None = None, exif: bool = False) -> np.ndarray:
    """HxWxC uint8 array of a path, encoded image bytes, a PIL image or an array (HxW for one channel, or HxWxC).

    `max_pixels` caps the size (checked from the header for files); `exif` applies the EXIF
    orientation of photos (use it for inference inputs, not for dataset images whose masks have none).
    """
    name = "(in memory)"
    if isinstance(source, (str, Path, bytes)):
        name = "(upload)" if isinstance(source, bytes) else str(source)
        source = open_image(source, max_pixels)
    if isinstance(source, Image.Image):
        _check_size(source, max_pixels, name)
        if channels not in MODES:
            raise DataError(f"a {channels}-channel model takes HxWx{channels} arrays, not image files")
        image = _to_eight_bits(ImageOps.exif_transpose(source) if exif else source, name)
        array = np.array(image.convert(MODES[channels]))  # a copy: writable, owned
    else:
        array = _array_to_uint8(np.asarray(source))
        if max_pixels is not None and array.ndim >= 2 and array.shape[0] * array.shape[1] > max_pixels:
            raise DataError(
                f"image array of {array.shape[1]}x{array.shape[0]} pixels is more than the cap of {max_pixels}"
            )
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] != channels:
        raise DataError(f"expected an HxWx{channels} image (HxW for one channel), got shape {array.shape}")
    return array


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB array of an image file."""
    return read_image(path, 3)


def read_label(path: str | Path) -> np.ndarray:
    """A label image as stored: HxW for index/grey/palette PNGs (palette indices, not colours), HxWx3 for colour."""
    image = open_image(path)
    if image.mode in ("P", "L", *SIXTEEN_BIT_MODES):
        return np.array(image)
    return np.array(image.convert("RGB"))
