"""The Pyramid Pooling Module (PSPNet, section 3.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def bin_average_matrix(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, length) matrix whose row i averages positions floor(i*L/b) .. ceil((i+1)*L/b) - 1.

    These are adaptive average pooling's windows. Position p lies in bin i exactly when
    i*L < (p+1)*b and (i+1)*L > p*b (integer arithmetic, valid for L < b too). `length` may be a
    symbolic size, so exporters keep it dynamic; the result has `like`'s dtype and device.
    """
    positions = torch.arange(length, device=like.device)
    index = torch.arange(bins, device=like.device)[:, None]
    inside = ((index * length < (positions + 1) * bins) & ((index + 1) * length > positions * bins)).to(like.dtype)
    return inside / inside.sum(1, keepdim=True)


class AdaptiveAvgPool(nn.Module):
    """`F.adaptive_avg_pool2d(x, output_size)` as two matrix products, `P_h @ x @ P_w^T` (see `bin_average_matrix`).

    Exact for every input size, and built from the input's (possibly symbolic) size, so an exported
    graph pools correctly at any H x W. No parameters: checkpoints are unchanged.
    """

    def __init__(self, output_size: int):
        super().__init__()
        self.output_size = output_size  # the attribute name of nn.AdaptiveAvgPool2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        rows = bin_average_matrix(height, self.output_size, x)
        columns = bin_average_matrix(width, self.output_size, x)
        return torch.matmul(rows, x @ columns.transpose(0, 1))  # the W contraction first: one large GEMM

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, the building block of every PSPNet head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PyramidPoolingModule(nn.Module):
    """Pool the feature map into bins x bins grids, reduce each with a 1x1 conv, upsample, concatenate.

    The pooling is `AdaptiveAvgPool` (exact at any size, and exportable with dynamic H x W).

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
            nn.Sequential(AdaptiveAvgPool(size), *conv_bn_relu(in_channels, branch_channels, 1)) for size in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=self.align_corners)
            for branch in self.branches
        ]
        return torch.cat([x, *pooled], dim=1)
