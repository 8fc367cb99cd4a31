"""Atomic file writes and image-file listing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")


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


ATOMIC_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
"""Names of `atomic_path`'s temporary files (`.NAME.XXXXXXXX.tmp`)."""
SAFETENSORS_TEMP_NAME = re.compile(r"\.tmp[A-Za-z0-9]{6}")
"""Names of the temporary files the safetensors writer makes beside the file it writes."""


def remove_stale_temp_files(folder: str | Path, safetensors: bool = False) -> list[Path]:
    """Delete temporary files that interrupted atomic writes left under `folder` (and, with `safetensors`,
    those of interrupted safetensors writes); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [ATOMIC_TEMP_NAME, SAFETENSORS_TEMP_NAME] if safetensors else [ATOMIC_TEMP_NAME]
    stale = [
        path
        for path in folder.rglob(".*")
        if path.is_file() and any(pattern.fullmatch(path.name) for pattern in patterns)
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(path: str | Path, image: Image.Image, **save_kwargs) -> None:
    """Write a PIL image atomically; the format follows the suffix of `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), **save_kwargs)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically; NaN is refused (store None for undefined values)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def list_files(root: str | Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under `root` (recursively) whose suffix is one of `extensions` (any case), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in extensions and p.is_file())


def list_images(root: str | Path) -> list[Path]:
    """Image files under `root` (recursively), sorted."""
    return list_files(root, IMAGE_EXTENSIONS)
