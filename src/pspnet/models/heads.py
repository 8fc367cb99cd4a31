"""Decoder heads: the PSP head (PPM + fusion + classifier, optionally progressive), the auxiliary
FCN head and the image-level class-presence head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ppm import PyramidPoolingModule, conv_bn_relu


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The 2f x 2f kernel with which a stride-f transposed conv is bilinear upsampling (align_corners=False)."""
    line = 1 - (torch.arange(2 * factor, dtype=torch.float32) - (factor - 0.5)).abs() / factor
    return line[:, None] * line[None, :]


class LearnedUpsample(nn.ConvTranspose2d):
    """x`factor` upsampling by a depthwise transposed conv (kernel 2f, stride f, no bias), initialised so
    that it equals bilinear upsampling away from the borders (FCN's learned upsampling).

    `factor` must be even; the output is exactly `factor` times the input size.
    """

    def __init__(self, channels: int, factor: int):
        if factor < 2 or factor % 2:
            raise ValueError(f"LearnedUpsample needs an even factor >= 2, got {factor}")
        super().__init__(
            channels, channels, 2 * factor, stride=factor, padding=factor // 2, groups=channels, bias=False
        )
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(factor).expand_as(self.weight))


class UpStage(nn.Module):
    """x2 upsampling (bilinear or learned) -> 3x3 conv-BN-PReLU: one stage of seed 001's progressive decoder."""

    def __init__(self, in_channels: int, out_channels: int, upsample: str = "bilinear", align_corners: bool = False):
        super().__init__()
        self.upsample = LearnedUpsample(in_channels, 2) if upsample == "transposed" else None
        self.align_corners = align_corners
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        else:
            x = F.interpolate(
                x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=self.align_corners
            )
        return self.conv(x)


class PSPHead(nn.Module):
    """PPM -> 3x3 fusion conv-BN-ReLU -> [x2 stages] -> Dropout2d -> classifier [-> learned upsampling].

    With no `stage_channels` (the paper's head) the logits are at the encoder's resolution; each entry
    of `stage_channels` adds an `UpStage` of that width (the progressive decoder: x2 per stage).
    `logits_upsample` > 1 adds a `LearnedUpsample` of the logits by that factor.
    `use_ppm=False` keeps everything but the PPM: the dilated-FCN baseline of the paper's ablation.
    `fusion_channels=0` drops the fusion conv (the seed's lite model classifies the PPM output directly).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        ppm_channels: int | None = None,
        fusion_channels: int = 512,
        dropout: float = 0.1,
        classifier_kernel: int = 1,
        use_ppm: bool = True,
        align_corners: bool = False,
        stage_channels: Sequence[int] = (),
        upsample: str = "bilinear",
        logits_upsample: int = 1,
    ):
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels, bins, ppm_channels, align_corners) if use_ppm else None
        channels = self.ppm.out_channels if self.ppm is not None else in_channels
        self.fusion = conv_bn_relu(channels, fusion_channels, 3) if fusion_channels else None
        channels = fusion_channels or channels
        stages = []
        for width in stage_channels:
            stages.append(UpStage(channels, width, upsample, align_corners))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, classifier_kernel, padding=classifier_kernel // 2)
        self.logits_upsample = LearnedUpsample(num_classes, logits_upsample) if logits_upsample > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ppm is not None:
            x = self.ppm(x)
        if self.fusion is not None:
            x = self.fusion(x)
        logits = self.classifier(self.dropout(self.stages(x)))
        return self.logits_upsample(logits) if self.logits_upsample is not None else logits


class FCNHead(nn.Module):
    """3x3 conv-BN-ReLU -> Dropout2d -> 1x1 classifier: the auxiliary head on stage-3 features."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class ClassPresenceHead(nn.Module):
    """Global max pooling -> Linear -> ReLU -> Linear: logits (N, K) of which classes the image contains.

    Seed 001's image-level auxiliary classifier, trained with a BCE loss against `class_presence`.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(x).flatten(1))
