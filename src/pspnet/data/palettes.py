"""Colour-coded masks: decoding colours to class ids, and reading class files (names, palette, ignore)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from ..classes import IGNORE_INDEX, ClassInfo
from ..errors import DataError

CLASSES_FILE_KEYS = ("names", "palette", "ignore")


def decode_colors(rgb_mask: np.ndarray, palette: Sequence[Sequence[int]], tolerance: float) -> tuple[np.ndarray, int]:
    """Class ids of an HxWx3 colour mask: the nearest palette colour within `tolerance`, else 255.

    Distances are Euclidean in RGB and computed once per distinct colour of the mask. Returns the
    HxW uint8 ids and the number of pixels that matched no palette colour.
    """
    if rgb_mask.ndim != 3 or rgb_mask.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 colour mask, got shape {rgb_mask.shape}")
    colours_of_classes = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
    rgb = rgb_mask.astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    unique, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    colours = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float32)
    # Squared distances, exact in float32: every term is an integer below 2**24.
    squared = (
        (colours**2).sum(1, keepdims=True)
        - 2 * colours @ colours_of_classes.T
        + (colours_of_classes**2).sum(1)[None, :]
    )
    nearest = squared.argmin(1)
    matched = squared[np.arange(len(unique)), nearest] <= tolerance**2
    lookup = np.where(matched, nearest, IGNORE_INDEX).astype(np.uint8)
    ids = lookup[inverse].reshape(rgb_mask.shape[:2])
    return ids, int(counts[~matched].sum())


def color_tolerance(options: dict, default: float, format_name: str) -> float:
    """`options["color_tolerance"]` (or `default`), checked to be a non-negative number."""
    tolerance = options.get("color_tolerance", default)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise DataError(f"{format_name}: data.options.color_tolerance must be a non-negative number, got {tolerance!r}")
    return float(tolerance)


def load_classes_file(path: str | Path) -> tuple[ClassInfo, int | None]:
    """Read a YAML or JSON class file: `names`, optional `palette` ([r, g, b] per class) and `ignore`.

    `ignore` is the mask value that stands for "no label" in index masks; it is mapped to 255.
    Returns the classes and the ignore value (None when absent).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"classes file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is valid YAML
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"classes file {path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"classes file {path}: expected a mapping with a `names` list (optional `palette`, `ignore`)")
    unknown = sorted(set(data) - set(CLASSES_FILE_KEYS))
    if unknown:
        raise DataError(f"classes file {path}: unknown keys {unknown}; allowed: {', '.join(CLASSES_FILE_KEYS)}")
    names, palette, ignore = data["names"], data.get("palette"), data.get("ignore")
    if not isinstance(names, list) or not names:
        raise DataError(f"classes file {path}: `names` must be a non-empty list")
    if palette is not None and not (
        isinstance(palette, list)
        and all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette)
    ):
        raise DataError(f"classes file {path}: `palette` must be a list of [r, g, b] colours with values 0..255")
    if ignore is not None and not (isinstance(ignore, int) and len(names) <= ignore <= 255):
        raise DataError(f"classes file {path}: `ignore` must be a mask value in {len(names)}..255 (not a class id), got {ignore!r}")
    try:
        classes = ClassInfo.from_dict({"names": names, "palette": palette})
    except ValueError as exc:
        raise DataError(f"classes file {path}: {exc}") from None
    return classes, ignore
