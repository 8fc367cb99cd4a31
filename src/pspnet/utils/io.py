"""File helpers: atomic writes and image reading with errors that name the file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed over `path`.

    A crash or kill while writing leaves the previous file untouched (and no partial file behind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(path: str | Path, image: Image.Image, **save_kwargs) -> None:
    """Write a PIL image atomically; the format follows the suffix of `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), **save_kwargs)


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB array of an image file; DataError naming the file if it is missing or corrupt."""
    return np.array(_open(Path(path)).convert("RGB"))


def read_label(path: str | Path) -> np.ndarray:
    """A label image as stored: HxW for index/grey/palette PNGs (palette indices, not colours), HxWx3 for colour."""
    image = _open(Path(path))
    if image.mode in ("P", "L", "I", "I;16"):
        return np.array(image)
    return np.array(image.convert("RGB"))


def list_images(root: str | Path) -> list[Path]:
    """Image files under `root` (recursively), sorted."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
