"""Class metadata: names, colour palette and the ignore label shared by every dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255
"""Label value of pixels that count neither for the loss nor for the metrics (PSPNet's ignore label)."""


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for `num_classes` classes (the bit-interleaving scheme of the Pascal VOC palette)."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((r, g, b))
    return palette


@dataclass(frozen=True)
class ClassInfo:
    """Names and RGB colours of a dataset's classes; class id = position in the lists."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"{len(self.names)} class names but {len(self.palette)} palette colours")
        if not 0 < len(self.names) < IGNORE_INDEX:
            raise ValueError(f"number of classes must be in 1..{IGNORE_INDEX - 1}, got {len(self.names)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def generic(cls, num_classes: int) -> ClassInfo:
        """Placeholder names `class_0 ...` with the default palette."""
        return cls(tuple(f"class_{i}" for i in range(num_classes)), tuple(default_palette(num_classes)))

    @classmethod
    def from_dict(cls, data: dict) -> ClassInfo:
        names = tuple(str(n) for n in data["names"])
        palette = data.get("palette") or default_palette(len(names))
        return cls(names, tuple(tuple(int(c) for c in colour) for colour in palette))

    def to_dict(self) -> dict:
        return {"names": list(self.names), "palette": [list(c) for c in self.palette]}

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 lookup table: class colours, black for unused ids and the ignore label."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return table
