"""Encoder registry: names -> feature extractors returning a list of feature maps.

Every encoder module has `out_channels` and `reductions` (one entry per returned feature map) and
`forward(x) -> list[Tensor]`, shallowest first.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from ...config import ModelConfig
from ...errors import CheckpointError, ConfigError
from .lite import LiteEncoder
from .resnet import RESNET_DEPTHS, STEMS, build_resnet


@dataclass(frozen=True)
class EncoderSpec:
    """A named encoder: how to build it and what it is."""

    name: str
    family: str
    description: str
    build: Callable[[ModelConfig, bool], nn.Module]
    dilatable: bool = True


def _resnet_spec(depth: int, stem: str) -> EncoderSpec:
    stem_text = {"": "7x7 stem (torchvision)", "_deepstem": "deep stem 64-64-128 (PSPNet, semseg)", "_v1c": "deep stem 32-32-64 (mmseg ResNetV1c)"}[stem]
    name = f"resnet{depth}{stem}"

    def build(cfg: ModelConfig, pretrained: bool) -> nn.Module:
        return build_resnet(depth, stem, output_stride=cfg.output_stride, in_channels=cfg.in_channels,
                            pretrained=pretrained, dilation_style=cfg.dilation_style, extra=cfg.encoder_kwargs)

    return EncoderSpec(name, "resnet", f"ResNet-{depth}, {stem_text}", build)


def _build_lite(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    if pretrained:
        raise ConfigError("model.encoder_weights: the lite encoder has no pretrained weights; it trains from scratch")
    return LiteEncoder(cfg.in_channels, cfg.output_stride)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec for spec in [_resnet_spec(depth, stem) for depth in RESNET_DEPTHS for stem in STEMS]
}
ENCODERS["lite"] = EncoderSpec("lite", "lite", "seed 000's three dilated residual blocks (from scratch)", _build_lite, dilatable=False)


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """Build the encoder named by `cfg.encoder` and load `cfg.encoder_weights` if given."""
    spec = ENCODERS.get(cfg.encoder)
    if spec is None:
        close = difflib.get_close_matches(cfg.encoder, list(ENCODERS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"model.encoder: unknown encoder '{cfg.encoder}'{hint} (see `pspnet models`)")
    weights = cfg.encoder_weights
    encoder = spec.build(cfg, weights == "imagenet")
    if not hasattr(encoder, "out_channels"):  # timm feature extractors describe themselves in feature_info
        encoder.out_channels = encoder.feature_info.channels()
        encoder.reductions = encoder.feature_info.reduction()
    if weights not in (None, "imagenet"):
        load_encoder_weights(encoder, weights)
    return encoder


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local timm/torchvision state dict into the encoder; classifier keys are expected extras.

    Raises CheckpointError listing missing keys or shape mismatches; keys of the ImageNet classifier
    (`fc.*`) are ignored since a segmentation encoder has no classifier.
    """
    from ...checkpoint import read_state_dict

    state = read_state_dict(path)
    own = encoder.state_dict()
    unexpected = sorted(k for k in state if k not in own and not k.startswith(("fc.", "classifier.", "head.")))
    missing = sorted(k for k in own if k not in state)
    mismatched = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"encoder weights {path} do not match encoder:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointError("\n".join(lines))
    encoder.load_state_dict({k: state[k] for k in own})
