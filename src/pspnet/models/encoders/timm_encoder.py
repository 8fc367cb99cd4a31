"""timm `features_only` models as encoders: EfficientNet, Swin and any other timm model by name.

`TimmEncoder` turns a timm feature extractor into our encoder contract: NCHW maps (Swin and other
transformers return NHWC), any input size (inputs are zero-padded to a multiple of the deepest
reduction when the model needs it, and every map is cropped back to ceil(size / reduction)), and
`out_channels`/`reductions` attributes.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ...config import ModelConfig


class TimmEncoder(nn.Module):
    """A timm feature extractor returning NCHW maps for inputs of any size."""

    def __init__(self, body: nn.Module, pad_to_stride: bool = False):
        super().__init__()
        self.body = body
        self.out_channels = body.feature_info.channels()
        self.reductions = body.feature_info.reduction()
        self.pad_multiple = max(self.reductions) if pad_to_stride else 1
        self.channels_last = getattr(body, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.pad_multiple, -width % self.pad_multiple
        # traced: sizes stay symbolic
        padded = self.pad_multiple > 1 and (torch.compiler.is_compiling() or pad_h or pad_w)
        if padded:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.body(x)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        if padded:
            features = [f[..., : -(-height // r), : -(-width // r)] for f, r in zip(features, self.reductions)]
        return features


def create_features(arch: str, cfg: ModelConfig, **kwargs) -> nn.Module:
    """`timm.create_model(arch, features_only=True)` with random weights, `in_chans` and `encoder_kwargs`."""
    return timm.create_model(
        arch, pretrained=False, features_only=True, in_chans=cfg.in_channels, **{**kwargs, **cfg.encoder_kwargs}
    )


def build_efficientnet(arch: str, cfg: ModelConfig) -> TimmEncoder:
    """EfficientNet stages 1-5 (reductions 2..32); strides past `output_stride` become dilations."""
    return TimmEncoder(create_features(arch, cfg, output_stride=cfg.output_stride))


def build_swin(arch: str, cfg: ModelConfig) -> TimmEncoder:
    """Swin stages 1-4 (reductions 4, 8, 16, 32), for any input size.

    `strict_img_size=False` builds the shifted-window masks for the actual size and pads each stage
    to whole windows inside the blocks; `always_partition=True` keeps 7x7 windows with shift 3 at
    every stage whatever the input size, like mmsegmentation's Swin. The input is zero-padded to a
    multiple of 32 so that patch embedding and patch merging see even sizes.
    """
    body = create_features(arch, cfg, strict_img_size=False, always_partition=True)
    return TimmEncoder(body, pad_to_stride=True)


def build_timm(arch: str, cfg: ModelConfig) -> TimmEncoder:
    """Any timm model with `features_only` support; dilated to `output_stride` where the model allows it.

    Models without an `output_stride` argument (or that reject the value) run at their native stride;
    `build_encoder` then reports the stride it got.
    """
    try:
        body = create_features(arch, cfg, output_stride=cfg.output_stride)
    except TypeError as exc:  # the model has no output_stride argument
        if "output_stride" not in str(exc):
            raise
        body = create_features(arch, cfg)
    except AssertionError:  # timm asserts on strides a model does not support
        body = create_features(arch, cfg)
    return TimmEncoder(body, pad_to_stride=True)
