"""The encoder registry: names -> feature extractors returning a list of feature maps.

Every encoder module has `out_channels` and `reductions` (one entry per returned feature map) and
`forward(x) -> list[Tensor]` of NCHW maps, shallowest first, for inputs of any size.

Names: `resnet{18,34,50,101,152}[_deepstem|_v1c]`, `efficientnet_b0`..`efficientnet_b7`,
`mobilenetv2` (width from `model.width_multiplier`) or `mobilenetv2_x<width>`,
`swin_{tiny,small,base}_patch4_window7_224`, `lite`, and any other timm model as `timm:<name>`
(or by its bare timm name when that is not one of ours).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import timm
from torch import nn

from ...config import ModelConfig
from ...errors import ConfigError
from .lite import LiteEncoder
from .mobilenet import NAME_PATTERN as MOBILENET_NAME
from .mobilenet import PRETRAINED as MOBILENET_PRETRAINED
from .mobilenet import build_mobilenetv2, resolve_width
from .pretrained import imagenet_state_dict, load_encoder_state, load_encoder_weights
from .resnet import RESNET_DEPTHS, STEMS, build_resnet
from .timm_encoder import build_efficientnet, build_swin, build_timm

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_STRIDE = ModelConfig.output_stride
"""Left at this default, `output_stride` falls back to the native stride of encoders that cannot dilate."""
DILATABLE = (8, 16, 32)


@dataclass(frozen=True)
class EncoderSpec:
    """A named encoder: how to build it and what it is."""

    name: str
    family: str
    description: str
    build: Callable[[ModelConfig], nn.Module]
    strides: tuple[int, ...] | None = DILATABLE
    """Output strides it can run at; None: known once built (other timm models)."""
    weights: str | None = None
    """The timm model whose ImageNet weights fit (`encoder_weights: imagenet`); None: there are none."""


def _resnet_spec(depth: int, stem: str) -> EncoderSpec:
    stem_text = {
        "": "7x7 stem (torchvision)",
        "_deepstem": "deep stem 64-64-128 (PSPNet, semseg)",
        "_v1c": "deep stem 32-32-64 (mmseg ResNetV1c)",
    }[stem]
    weights = {"": f"resnet{depth}", "_deepstem": None, "_v1c": f"resnet{depth}c" if depth >= 50 else None}[stem]

    def build(cfg: ModelConfig) -> nn.Module:
        return build_resnet(
            depth,
            stem,
            output_stride=cfg.output_stride,
            in_channels=cfg.in_channels,
            pretrained=False,
            dilation_style=cfg.dilation_style,
            extra=cfg.encoder_kwargs,
        )

    return EncoderSpec(f"resnet{depth}{stem}", "resnet", f"ResNet-{depth}, {stem_text}", build, weights=weights)


def _efficientnet_spec(index: int) -> EncoderSpec:
    arch = f"efficientnet_b{index}"
    return EncoderSpec(
        arch,
        "efficientnet",
        f"EfficientNet-B{index} (timm)",
        partial(build_efficientnet, arch),
        weights=arch if index <= 5 else None,
    )


def _mobilenet_spec(name: str, width: float, description: str = "") -> EncoderSpec:
    return EncoderSpec(
        name,
        "mobilenetv2",
        description or f"MobileNetV2, width x{width:g}",
        partial(build_mobilenetv2, width),
        weights=MOBILENET_PRETRAINED.get(width),
    )


def _swin_spec(size: str) -> EncoderSpec:
    arch = f"swin_{size}_patch4_window7_224"
    return EncoderSpec(
        arch,
        "swin",
        f"Swin-{size[0].upper()} (no dilation: PPM at stride 32)",
        partial(build_swin, arch),
        strides=(32,),
        weights=arch,
    )


def _timm_spec(arch: str) -> EncoderSpec:
    return EncoderSpec(
        f"timm:{arch}", "timm", f"timm {arch} (features_only)", partial(build_timm, arch), strides=None, weights=arch
    )


def _build_lite(cfg: ModelConfig) -> nn.Module:
    return LiteEncoder(cfg.in_channels, cfg.output_stride)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in [
        *(_resnet_spec(depth, stem) for depth in RESNET_DEPTHS for stem in STEMS),
        *(_efficientnet_spec(index) for index in range(8)),
        _mobilenet_spec("mobilenetv2", 1.0, "MobileNetV2, width model.width_multiplier (default 1.0)"),
        *(_mobilenet_spec(f"mobilenetv2_x{width:.1f}", width) for width in MOBILENET_PRETRAINED),
        *(_swin_spec(size) for size in ("tiny", "small", "base")),
        EncoderSpec(
            "lite", "lite", "seed 000's three dilated residual blocks (from scratch)", _build_lite, strides=(1, 2, 4)
        ),
    ]
}


def resolve_encoder(cfg: ModelConfig) -> EncoderSpec:
    """The spec of `cfg.encoder`; ConfigError with close names when there is none."""
    name = cfg.encoder
    if MOBILENET_NAME.fullmatch(name):
        return _mobilenet_spec(name, resolve_width(name, cfg.width_multiplier))
    if cfg.width_multiplier is not None:
        raise ConfigError(f"model.width_multiplier: only MobileNetV2 encoders have one (encoder is '{name}')")
    if name in ENCODERS:
        return ENCODERS[name]
    arch = name.removeprefix("timm:")
    if timm.is_model(arch):
        return _timm_spec(arch)
    close = difflib.get_close_matches(name, list(ENCODERS), n=3, cutoff=0.6)  # our names first
    if not close:
        close = [f"timm:{arch}" for arch in difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.5)]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"model.encoder: unknown encoder '{name}'{hint} (see `pspnet models`; any timm model: timm:NAME)")


def _output_stride(name: str, requested: int, supported: tuple[int, ...]) -> int:
    """`requested` if supported; the deepest supported stride if `requested` is the default; else an error."""
    if requested in supported:
        return requested
    fallback = max(supported)
    if requested != DEFAULT_OUTPUT_STRIDE:
        hint = (
            "; it cannot dilate: run the PPM on a shallower stage with model.ppm_feature" if len(supported) == 1 else ""
        )
        raise ConfigError(
            f"model.output_stride: {name} runs at output stride {', '.join(map(str, supported))}, not {requested}{hint}"
        )
    log.info("%s cannot run at output stride %d; it runs at %d", name, requested, fallback)
    return fallback


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """Build the encoder named by `cfg.encoder` and load `cfg.encoder_weights` if given."""
    spec = resolve_encoder(cfg)
    if spec.strides is not None:
        cfg = dataclasses.replace(cfg, output_stride=_output_stride(spec.name, cfg.output_stride, spec.strides))
    imagenet = None
    if cfg.encoder_weights == "imagenet":
        if spec.weights is None:
            raise ConfigError(f"model.encoder_weights: timm has no ImageNet weights for {spec.name}; pass a local file")
        imagenet = imagenet_state_dict(spec.weights, cfg.in_channels)  # before building: fails fast offline
    try:
        encoder = spec.build(cfg)
    except (TypeError, AssertionError) as exc:
        raise ConfigError(
            f"model.encoder: timm cannot build {spec.name} with model.encoder_kwargs "
            f"{cfg.encoder_kwargs} and in_channels {cfg.in_channels}: {exc}"
        ) from exc
    if not hasattr(encoder, "out_channels"):  # timm feature extractors describe themselves in feature_info
        encoder.out_channels = encoder.feature_info.channels()
        encoder.reductions = encoder.feature_info.reduction()
    if spec.strides is None:
        _output_stride(spec.name, cfg.output_stride, (max(encoder.reductions),))
    if imagenet is not None:
        load_encoder_state(encoder, imagenet, f"timm {spec.weights} (ImageNet)")
    elif cfg.encoder_weights:
        load_encoder_weights(encoder, cfg.encoder_weights)
    return encoder


def encoder_table() -> list[tuple[str, str, str, str, str]]:
    """(name, family, output strides, ImageNet weights, description) of every registered encoder."""
    return [
        (spec.name, spec.family, "/".join(map(str, spec.strides)), spec.weights or "-", spec.description)
        for spec in ENCODERS.values()
    ]
