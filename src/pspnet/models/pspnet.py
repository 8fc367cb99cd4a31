"""PSPNet: a dilated encoder, the pyramid pooling head and an auxiliary head for training."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..classes import ClassInfo
from ..config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from ..errors import ConfigError
from .encoders import build_encoder
from .heads import FCNHead, PSPHead


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network (Zhao et al., CVPR 2017).

    `PSPNet(num_classes=19)` builds the paper's model (dilated ResNet-50 with the deep stem, output
    stride 8, bins 1-2-3-6); any `ModelConfig` field can be passed as a keyword.

    `forward(x)` returns logits (N, K, H, W) at the input's size, for any H and W. In training mode
    it returns a dict: `out` (main logits) and `aux` (auxiliary logits, when the aux head is on).
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
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

        self.encoder = build_encoder(config)
        channels = self.encoder.out_channels
        self.ppm_index = _feature_index(config.ppm_feature, len(channels), "model.ppm_feature")
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
        )
        self.aux_index = None
        self.aux_head = None
        if config.aux == "seg":
            self.aux_index = _feature_index(config.aux_feature, len(channels), "model.aux_feature")
            self.aux_head = FCNHead(channels[self.aux_index], config.num_classes, config.aux_channels, config.dropout)

    @property
    def output_stride(self) -> int:
        return self.encoder.reductions[self.ppm_index]

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything that is not the encoder: trained at `head_lr_mult` x the base learning rate."""
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]

    def _upsample(self, logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.config.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.encoder(x)
        logits = self._upsample(self.decode_head(features[self.ppm_index]), size)
        if not self.training:
            return logits
        outputs = {"out": logits}
        if self.aux_head is not None:
            outputs["aux"] = self._upsample(self.aux_head(features[self.aux_index]), size)
        return outputs

    @torch.inference_mode()
    def predict(self, image: Any, settings: Any = None) -> np.ndarray:
        """Label map (H, W) uint8 of one image: a path, a PIL image or an HxWx3 uint8 array.

        `settings` is an `EvalConfig` (sliding window, scales, flip); default: the whole image.
        """
        from ..engine.inference import Inferencer, load_image_array
        from ..data.transforms import normalize_image

        array = load_image_array(image)
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
