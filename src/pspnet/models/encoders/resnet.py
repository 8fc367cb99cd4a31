"""Dilated ResNet encoders built with timm (`features_only`), with PSPNet's and mmseg's deep stems.

Names: `resnet{D}` has the torchvision 7x7 stem, `resnet{D}_deepstem` the 64-64-128 stem of the
PSPNet paper and semseg, `resnet{D}_v1c` the 32-32-64 stem of mmsegmentation's ResNetV1c.
"""

from __future__ import annotations

import timm
from timm.models.resnet import BasicBlock
from torch import nn

RESNET_DEPTHS = (18, 34, 50, 101, 152)
STEMS = {"": {}, "_deepstem": {"stem_type": "deep", "stem_width": 64}, "_v1c": {"stem_type": "deep", "stem_width": 32}}


def stage_dilations(output_stride: int, num_stages: int = 4) -> list[int]:
    """Dilation of each residual stage when strides beyond `output_stride` become dilations."""
    dilations, stride, dilation = [], 4, 1
    for index in range(num_stages):
        step = 1 if index == 0 else 2
        if stride >= output_stride:
            dilation *= step
        else:
            stride *= step
        dilations.append(dilation)
    return dilations


def make_uniform_dilation(model: nn.Module, output_stride: int) -> None:
    """Give every block of a dilated stage its stage's full dilation, the first block included (semseg).

    timm (like mmseg's `contract_dilation`) gives the first block of a dilated stage the previous
    stage's dilation; semseg dilates all blocks alike.
    """
    for index, dilation in enumerate(stage_dilations(output_stride)):
        if dilation == 1:
            continue
        for block in getattr(model, f"layer{index + 1}"):
            for conv in (block.conv1, block.conv2):  # the 3x3 convs of basic and bottleneck blocks
                if conv.kernel_size == (3, 3):
                    _set_dilation(conv, dilation)


def undilate_basic_conv2(model: nn.Module) -> None:
    """Give the second 3x3 conv of every basic block dilation 1, as mmseg's BasicBlock does.

    timm dilates both 3x3 convs of a basic block; mmseg dilates only the first. Bottleneck blocks,
    whose single 3x3 conv is `conv2`, are left alone.
    """
    for index in range(1, 5):
        for block in getattr(model, f"layer{index}"):
            if isinstance(block, BasicBlock):
                _set_dilation(block.conv2, 1)


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    """Dilate a 3x3 conv, keeping its output size (padding = dilation)."""
    conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


def build_resnet(
    depth: int, stem: str, *, output_stride: int, in_channels: int, pretrained: bool, dilation_style: str, extra: dict
) -> nn.Module:
    """A timm ResNet returning the four stage outputs (layer1..layer4)."""
    model = timm.create_model(
        f"resnet{depth}",
        pretrained=pretrained,
        features_only=True,
        out_indices=(1, 2, 3, 4),
        output_stride=output_stride,
        in_chans=in_channels,
        **{**STEMS[stem], **extra},
    )
    if dilation_style == "uniform":
        make_uniform_dilation(model, output_stride)
    elif dilation_style == "mmseg":
        undilate_basic_conv2(model)
    return model
