"""PSPNet: an encoder, the pyramid pooling head and auxiliary heads for training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..classes import ClassInfo
from ..config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from ..errors import ConfigError
from .encoders import build_encoder
from .heads import ClassPresenceHead, FCNHead, PSPHead

GREY_MEAN, GREY_STD = 0.449, 0.226
"""Per-channel normalisation of models whose input is not RGB: the mean of ImageNet's RGB values."""


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network (Zhao et al., CVPR 2017).

    `PSPNet(num_classes=19)` builds the paper's model (dilated ResNet-50 with the deep stem, output
    stride 8, bins 1-2-3-6); any `ModelConfig` field can be passed as a keyword.

    `forward(x)` returns logits (N, K, H, W) at the input's size, for any H and W. In training mode
    it returns a dict: `out` (main logits), `aux` (auxiliary logits, aux `seg`/`both`) and `cls`
    (class-presence logits (N, K), aux `cls`/`both`).
    """

    def __init__(self, num_classes: int | None = None, config: ModelConfig | None = None, **options: Any):
        super().__init__()
        config = dataclasses.replace(config or ModelConfig(), **options)
        if num_classes is not None:
            config = dataclasses.replace(config, num_classes=num_classes)
        if config.num_classes is None:
            raise ConfigError("model.num_classes: required (pass num_classes= or set it in the config)")
        self.config = config
        self.classes = ClassInfo.generic(config.num_classes)
        if config.in_channels == 3:
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        else:
            self.mean, self.std = (GREY_MEAN,) * config.in_channels, (GREY_STD,) * config.in_channels

        self.encoder = build_encoder(config)
        channels = self.encoder.out_channels
        self.ppm_index = _feature_index(config.ppm_feature, len(channels), "model.ppm_feature")
        progressive = config.decoder == "progressive"
        self.decode_head = PSPHead(
            channels[self.ppm_index],
            config.num_classes,
            bins=config.bins,
            ppm_channels=config.ppm_channels,
            fusion_channels=config.decoder_channels,
            dropout=config.dropout,
            classifier_kernel=config.classifier_kernel,
            use_ppm=config.use_ppm,
            align_corners=config.align_corners,
            stage_channels=config.progressive_channels if progressive else (),
            upsample=config.upsample,
            logits_upsample=self.output_stride if config.upsample == "transposed" and not progressive else 1,
        )
        self.aux_index = None
        self.aux_head = None
        self.cls_head = None
        if config.aux != "none":
            self.aux_index = _feature_index(config.aux_feature, len(channels), "model.aux_feature")
            aux_channels = channels[self.aux_index]
            if config.aux in ("seg", "both"):
                self.aux_head = FCNHead(aux_channels, config.num_classes, config.aux_channels, config.dropout)
            if config.aux in ("cls", "both"):
                self.cls_head = ClassPresenceHead(aux_channels, config.num_classes, config.aux_channels)

    @property
    def output_stride(self) -> int:
        """Reduction of the feature map that feeds the PPM."""
        return self.encoder.reductions[self.ppm_index]

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything that is not the encoder: trained at `head_lr_mult` x the base learning rate."""
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]

    def _resize(self, logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if logits.shape[-2:] == size:
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.config.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.encoder(x)
        logits = self._resize(self.decode_head(features[self.ppm_index]), size)
        if not self.training:
            return logits
        outputs = {"out": logits}
        if self.aux_head is not None:
            outputs["aux"] = self._resize(self.aux_head(features[self.aux_index]), size)
        if self.cls_head is not None:
            outputs["cls"] = self.cls_head(features[self.aux_index])
        return outputs

    @torch.inference_mode()
    def predict(self, image: Any, settings: Any = None) -> np.ndarray:
        """Label map (H, W) uint8 of one image: a path, a PIL image or an HxWxC uint8 array.

        C is `in_channels` (an HxW array for one channel); paths and PIL images are converted to
        RGB, L (1 channel) or RGBA (4 channels). `settings` is an `EvalConfig` (sliding window,
        scales, flip); default: the whole image.
        """
        from ..data.transforms import normalize_image
        from ..engine.inference import Inferencer

        array = _image_array(image, self.config.in_channels)
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            tensor = normalize_image(array, self.mean, self.std).unsqueeze(0).to(device)
            probs = Inferencer(self, settings).probabilities(tensor)
        finally:
            self.train(was_training)
        return probs.argmax(1)[0].to(torch.uint8).cpu().numpy()


def _feature_index(index: int, count: int, key: str) -> int:
    if not -count <= index < count:
        raise ConfigError(f"{key}: the encoder returns {count} feature maps, index {index} is out of range")
    return index % count


def _image_array(image: Any, channels: int) -> np.ndarray:
    """HxWxC uint8 array of a path, PIL image or array, C = `channels`."""
    if channels == 3:
        from ..engine.inference import load_image_array

        return load_image_array(image)
    if isinstance(image, (str, Path, Image.Image)):
        mode = {1: "L", 4: "RGBA"}.get(channels)
        if mode is None:
            raise ValueError(f"a {channels}-channel model takes HxWx{channels} uint8 arrays, not image files")
        if isinstance(image, Image.Image):
            image = image.convert(mode)
        else:
            with Image.open(image) as opened:
                image = opened.convert(mode)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] != channels or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx{channels} uint8 array, got shape {array.shape} and dtype {array.dtype}")
    return array


def complexity(config: ModelConfig, size: tuple[int, int]) -> dict[str, Any]:
    """Parameter counts and inference FLOPs (2 per multiply-add) of the model at input `size`.

    Built and run on the meta device: nothing is allocated or computed, and no weights are loaded.
    """
    config = dataclasses.replace(config, encoder_weights=None, num_classes=config.num_classes or 19)
    with torch.device("meta"):
        model = PSPNet(config=config).eval()
        image = torch.empty(1, config.in_channels, *size)
    with FlopCounterMode(display=False) as counter:
        model(image)

    def count(module: nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    return {
        "channels": list(model.encoder.out_channels),
        "reductions": list(model.encoder.reductions),
        "output_stride": model.output_stride,
        "encoder": count(model.encoder),
        "decoder": count(model.decode_head),
        "aux": count(model.aux_head) + count(model.cls_head),
        "total": count(model),
        "flops": counter.get_total_flops(),
    }
