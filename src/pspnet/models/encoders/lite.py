"""The small from-scratch encoder of seed 000: three dilated residual blocks.

Each block is 1x1 -> 3x3 (dilation 2) -> 1x1 with BatchNorm and LeakyReLU(0.2), plus a 3x3-conv
skip; the blocks output 64, 128 and 256 channels. The seed keeps full resolution throughout, about
1.4 MFLOP per pixel, too slow to train on a CPU; `output_stride` puts a stride of 2 into the first
blocks (4 by default; 1 reproduces the seed's full-resolution network).
"""

from __future__ import annotations

import torch
from torch import nn

LITE_WIDTHS = ((32, 32, 64), (64, 64, 128), (128, 128, 256))


class LiteBlock(nn.Module):
    """Residual block: 1x1 -> dilated 3x3 -> 1x1 main path, 3x3 conv skip, ReLU after the sum."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int], stride: int = 1):
        super().__init__()
        reduce, middle, out = widths
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, reduce, 1),
            nn.BatchNorm2d(reduce),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(reduce, middle, 3, stride=stride, padding=2, dilation=2),
            nn.BatchNorm2d(middle),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(middle, out, 1),
            nn.BatchNorm2d(out),
        )
        self.skip = nn.Sequential(nn.Conv2d(in_channels, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.main(x) + self.skip(x))


class LiteEncoder(nn.Module):
    """Three LiteBlocks; returns the three block outputs (64, 128, 256 channels)."""

    def __init__(self, in_channels: int = 3, output_stride: int = 4):
        super().__init__()
        if output_stride not in (1, 2, 4):
            raise ValueError(f"the lite encoder supports output_stride 1, 2 or 4, got {output_stride}")
        strides = {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1)}[output_stride]
        blocks, channels, reductions, reduction = [], [], [], 1
        for widths, stride in zip(LITE_WIDTHS, strides):
            blocks.append(LiteBlock(in_channels, widths, stride))
            in_channels = widths[-1]
            reduction *= stride
            channels.append(in_channels)
            reductions.append(reduction)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels, self.reductions = channels, reductions

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features
