"""The model card: what a model needs besides its weights to turn an image into labels.

A `PSPNet` carries one from construction (`model.card`); checkpoints store it in their metadata
and `ModelCard.from_dict` validates it, naming the field that is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .classes import ClassInfo
from .config import IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckpointError

GREY_MEAN, GREY_STD = 0.449, 0.226
"""Per-channel normalisation of models whose input is not RGB: the mean of ImageNet's RGB values."""


def default_normalization(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's mean/std for RGB input, their channel average repeated for any other channel count."""
    if in_channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (GREY_MEAN,) * in_channels, (GREY_STD,) * in_channels


@dataclass(frozen=True)
class ModelCard:
    """Class names and colours, and the input normalisation (one mean/std per input channel)."""

    classes: ClassInfo
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per input channel, got {len(self.mean)} and {len(self.std)}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {list(self.std)}")

    @classmethod
    def create(
        cls,
        classes: ClassInfo,
        in_channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> ModelCard:
        """A card with `default_normalization(in_channels)` where `mean`/`std` are not given."""
        default_mean, default_std = default_normalization(in_channels)
        return cls(
            classes, tuple(float(m) for m in (mean or default_mean)), tuple(float(s) for s in (std or default_std))
        )

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes.to_dict(), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ModelCard:
        """Validate stored metadata; CheckpointError naming `source` and the bad field."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: metadata must be a JSON object, got {type(data).__name__}")
        classes = data.get("classes")
        if not isinstance(classes, dict):
            raise CheckpointError(
                f"{source}: metadata field 'classes' is missing or not an object with 'names' and 'palette'"
            )
        names, palette = classes.get("names"), classes.get("palette")
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            raise CheckpointError(f"{source}: metadata field 'classes.names' must be a non-empty list of strings")
        if palette is not None and not (
            isinstance(palette, list)
            and all(
                isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c) for c in palette
            )
        ):
            raise CheckpointError(
                f"{source}: metadata field 'classes.palette' must be a list of [r, g, b] values in 0..255"
            )
        vectors = {}
        for key in ("mean", "std"):
            value = data.get(key)
            if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
                raise CheckpointError(
                    f"{source}: metadata field '{key}' must be a non-empty list of numbers, got {value!r}"
                )
            vectors[key] = tuple(float(v) for v in value)
        try:
            return cls(ClassInfo.from_dict({"names": names, "palette": palette}), vectors["mean"], vectors["std"])
        except ValueError as exc:
            raise CheckpointError(f"{source}: invalid model card metadata: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
