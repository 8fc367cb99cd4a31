"""Decoder heads: the PSP head (PPM + fusion + classifier) and the auxiliary FCN head."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .ppm import PyramidPoolingModule, conv_bn_relu


class PSPHead(nn.Module):
    """PPM -> 3x3 fusion conv-BN-ReLU -> Dropout2d -> classifier, at the encoder's resolution.

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
    ):
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels, bins, ppm_channels, align_corners) if use_ppm else None
        channels = self.ppm.out_channels if self.ppm is not None else in_channels
        self.fusion = conv_bn_relu(channels, fusion_channels, 3) if fusion_channels else None
        channels = fusion_channels or channels
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, classifier_kernel, padding=classifier_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ppm is not None:
            x = self.ppm(x)
        if self.fusion is not None:
            x = self.fusion(x)
        return self.classifier(self.dropout(x))


class FCNHead(nn.Module):
    """3x3 conv-BN-ReLU -> Dropout2d -> 1x1 classifier: the auxiliary head on stage-3 features."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
