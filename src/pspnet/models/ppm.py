"""The Pyramid Pooling Module (PSPNet, section 3.3)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, the building block of every PSPNet head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PyramidPoolingModule(nn.Module):
    """Pool the feature map into bins x bins grids, reduce each with a 1x1 conv, upsample, concatenate.

    Output: [input, branch(bin_1), ..., branch(bin_n)] along channels, i.e.
    `in_channels + len(bins) * branch_channels` channels at the input's resolution.
    """

    def __init__(
        self,
        in_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        branch_channels: int | None = None,
        align_corners: bool = False,
    ):
        super().__init__()
        branch_channels = branch_channels or max(1, in_channels // len(bins))
        self.bins = tuple(bins)
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size), *conv_bn_relu(in_channels, branch_channels, 1)) for size in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=self.align_corners) for branch in self.branches
        ]
        return torch.cat([x, *pooled], dim=1)
