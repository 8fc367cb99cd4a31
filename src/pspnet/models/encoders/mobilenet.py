"""MobileNetV2 with any width multiplier in [0.25, 2.0], built by timm's MobileNetV2 generator.

Every layer's channels are `make_divisible(channels * multiplier, 8)` (timm's `round_channels`), so
`mobilenetv2_x0.5` has stage outputs 8, 16, 16, 48, 160 at reductions 2, 4, 8, 16, 32.
"""

from __future__ import annotations

import re

from timm.models.efficientnet import _gen_mobilenet_v2

from ...config import ModelConfig
from ...errors import ConfigError
from .timm_encoder import TimmEncoder

NAME_PATTERN = re.compile(r"mobilenetv2(?:_x(\d+(?:\.\d+)?))?")
"""`mobilenetv2` (multiplier from `model.width_multiplier`, default 1.0) or `mobilenetv2_x<multiplier>`."""
WIDTH_RANGE = (0.25, 2.0)
PRETRAINED = {0.5: "mobilenetv2_050", 1.0: "mobilenetv2_100", 1.4: "mobilenetv2_140"}
"""Multipliers with ImageNet weights in timm, and the timm names that hold them."""


def resolve_width(name: str, width_multiplier: float | None) -> float:
    """The multiplier named by `name` (`mobilenetv2_x0.5`) or by `model.width_multiplier`."""
    match = NAME_PATTERN.fullmatch(name)
    named = float(match[1]) if match and match[1] else None
    if named is not None and width_multiplier is not None and named != width_multiplier:
        raise ConfigError(f"model.width_multiplier: {width_multiplier} contradicts the encoder name '{name}'")
    width = named if named is not None else width_multiplier if width_multiplier is not None else 1.0
    low, high = WIDTH_RANGE
    if not low <= width <= high:
        raise ConfigError(f"model.encoder: the MobileNetV2 width multiplier must be in [{low}, {high}], got {width}")
    return width


def build_mobilenetv2(width: float, cfg: ModelConfig) -> TimmEncoder:
    """MobileNetV2 stages at reductions 2..32; strides past `output_stride` become dilations."""
    variant = PRETRAINED.get(width, "mobilenetv2_100")  # names timm's config entry; weights load elsewhere
    body = _gen_mobilenet_v2(
        variant,
        width,
        features_only=True,
        output_stride=cfg.output_stride,
        in_chans=cfg.in_channels,
        **cfg.encoder_kwargs,
    )
    return TimmEncoder(body)
