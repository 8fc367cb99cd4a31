"""Colour-coded masks: decoding colours to class ids, and reading class files (names, palette, ignore)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from ..classes import IGNORE_INDEX, ClassInfo
from ..errors import DataError

CLASSES_FILE_KEYS = ("names", "palette", "ignore")


def nearest_colors(rgb_mask: np.ndarray, palette: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The nearest palette entry of every pixel of an HxWx3 colour mask, and the Euclidean RGB distance to it.

    Distances are computed once per distinct colour of the mask.
    """
    if rgb_mask.ndim != 3 or rgb_mask.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 colour mask, got shape {rgb_mask.shape}")
    colours_of_classes = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
    rgb = rgb_mask.astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    unique, inverse = np.unique(codes.ravel(), return_inverse=True)
    colours = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float32)
    # Squared distances, exact in float32: every term is an integer below 2**24.
    squared = (
        (colours**2).sum(1, keepdims=True)
        - 2 * colours @ colours_of_classes.T
        + (colours_of_classes**2).sum(1)[None, :]
    )
    nearest = squared.argmin(1)
    distance = np.sqrt(np.maximum(squared[np.arange(len(unique)), nearest], 0))
    return nearest[inverse].reshape(rgb_mask.shape[:2]), distance[inverse].reshape(rgb_mask.shape[:2])


def decode_colors(
    rgb_mask: np.ndarray, palette: Sequence[Sequence[int]], tolerance: float, min_region: int = 0
) -> tuple[np.ndarray, int]:
    """Class ids of an HxWx3 colour mask: the nearest palette colour within `tolerance`, else 255.

    With `min_region` > 0 the mask is also cleaned of lossy-compression artefacts (JPEG masks):
    connected fragments of a class smaller than `min_region` pixels, and thin strips (no pixel with
    all 8 neighbours in the strip) whose colour is a mix of the two classes around them, are
    undecided; undecided pixels, and small or narrow patches beyond `tolerance`, take the majority
    class of the decided pixels in their 5x5 neighbourhood (repeatedly, from the edges inwards).
    Large, wide patches of a colour that is no class's stay 255. Returns the HxW uint8 ids and the number
    of pixels that stay unmatched (255).
    """
    labels, distance = nearest_colors(rgb_mask, palette)
    decided = distance <= tolerance
    if min_region > 0 and not (distance == 0).all():  # exact colours (PNG masks) need no cleaning
        decided &= ~_compression_artefacts(rgb_mask, labels, decided, np.asarray(palette, np.float32), min_region)
        unknown = _large_patches(distance > tolerance, min_region)
        filled = _fill_from_neighbours(np.where(decided, labels, IGNORE_INDEX), len(palette), ~unknown)
        # artefacts with no decided class around them keep their nearest colour's class
        labels = np.where((filled == IGNORE_INDEX) & (distance <= tolerance), labels, filled)
    else:
        labels = np.where(decided, labels, IGNORE_INDEX)
    ids = labels.astype(np.uint8)
    return ids, int((ids == IGNORE_INDEX).sum())


BLEND_DISTANCE = 35.0
"""A thin strip whose mean colour lies this close (RGB) to the line between its two neighbouring classes'
colours is taken for a JPEG blend of them."""
FILL_RADIUS, FILL_ROUNDS = 2, 4


def _compression_artefacts(
    rgb: np.ndarray, labels: np.ndarray, decided: np.ndarray, palette: np.ndarray, min_region: int
) -> np.ndarray:
    """Pixels of small fragments and of thin blend strips (see `decode_colors`)."""
    structure = np.ones((3, 3), bool)
    artefacts = np.zeros(labels.shape, bool)
    for label in np.unique(labels[decided]):
        region = decided & (labels == label)
        components, count = ndimage.label(region, structure)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        cores = np.bincount(components[ndimage.binary_erosion(region, structure)].ravel(), minlength=count + 1)
        bad = sizes < min_region
        boxes = ndimage.find_objects(components)
        thin = np.flatnonzero((cores == 0) & ~bad)
        for index in thin[thin > 0]:
            window = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[index - 1])
            strip = components[window] == index
            ring = ndimage.binary_dilation(strip, structure) & ~strip & decided[window] & (labels[window] != label)
            around = np.bincount(labels[window][ring].ravel(), minlength=len(palette))
            if np.count_nonzero(around) >= 2:
                first, second = np.argsort(around)[-2:]
                mean = rgb[window][strip].astype(np.float32).mean(0)
                bad[index] = _segment_distance(mean, palette[first], palette[second]) < BLEND_DISTANCE
        bad[0] = False
        artefacts |= bad[components]
    return artefacts


def _large_patches(region: np.ndarray, min_region: int) -> np.ndarray:
    """Pixels of the connected patches of `region` that have at least `min_region` pixels and a core: a pixel
    whose whole 7x7 window lies in the patch (JPEG blends at class boundaries are bands a few pixels wide)."""
    structure = np.ones((3, 3), bool)
    components, count = ndimage.label(region, structure)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    cores = np.bincount(
        components[ndimage.binary_erosion(region, structure, iterations=3)].ravel(), minlength=count + 1
    )
    large = (sizes >= min_region) & (cores > 0)
    large[0] = False
    return large[components]


def _segment_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """Distance from `point` to the segment start-end."""
    direction = end - start
    t = np.clip(float((point - start) @ direction) / max(float(direction @ direction), 1e-6), 0.0, 1.0)
    return float(np.linalg.norm(point - (start + t * direction)))


def _fill_from_neighbours(labels: np.ndarray, num_classes: int, fillable: np.ndarray) -> np.ndarray:
    """Give `fillable` pixels labelled 255 the majority class of the labelled pixels in their 5x5 window, repeatedly."""
    height, width = labels.shape
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    size = 2 * FILL_RADIUS + 1
    for _ in range(FILL_ROUNDS):
        undecided = (labels == IGNORE_INDEX) & fillable
        if not undecided.any():
            break
        votes = np.zeros((num_classes, height, width), np.int32)
        known = labels != IGNORE_INDEX
        votes[labels[known], np.broadcast_to(rows, labels.shape)[known], np.broadcast_to(cols, labels.shape)[known]] = 1
        sums = (
            np.pad(votes, ((0, 0), (FILL_RADIUS + 1, FILL_RADIUS), (FILL_RADIUS + 1, FILL_RADIUS))).cumsum(1).cumsum(2)
        )
        window = sums[:, size:, size:] - sums[:, :-size, size:] - sums[:, size:, :-size] + sums[:, :-size, :-size]
        labels = np.where(undecided & (window.max(0) > 0), window.argmax(0), labels)
    return labels


def mask_option(options: dict, key: str, default: float, format_name: str) -> float:
    """`options[key]` (or `default`), checked to be a non-negative number."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise DataError(f"{format_name}: data.options.{key} must be a non-negative number, got {value!r}")
    return float(value)


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
        and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette
        )
    ):
        raise DataError(f"classes file {path}: `palette` must be a list of [r, g, b] colours with values 0..255")
    if ignore is not None and not (isinstance(ignore, int) and len(names) <= ignore <= 255):
        raise DataError(
            f"classes file {path}: `ignore` must be a mask value in {len(names)}..255 (not a class id), got {ignore!r}"
        )
    try:
        classes = ClassInfo.from_dict({"names": names, "palette": palette})
    except ValueError as exc:
        raise DataError(f"classes file {path}: {exc}") from None
    return classes, ignore
