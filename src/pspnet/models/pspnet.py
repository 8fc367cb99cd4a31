"""PSPNet: an encoder, the pyramid pooling head and auxiliary heads for training."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..card import ModelCard
from ..classes import ClassInfo
from ..config import Config, EvalConfig, ModelConfig
from ..errors import ConfigError
from ..inference.predict import predict_image
from .encoders import build_encoder
from .heads import ClassPresenceHead, FCNHead, PSPHead


def resolve_num_classes(configured: int | None, classes: ClassInfo | None) -> int:
    """The class count: `model.num_classes` if set, else the classes'; they must agree when both are given."""
    if configured is not None and classes is not None and configured != classes.num_classes:
        raise ConfigError(f"model.num_classes is {configured} but the dataset has {classes.num_classes} classes")
    if configured is None and classes is None:
        raise ConfigError("model.num_classes: required (pass num_classes= or set it in the config)")
    return configured if configured is not None else classes.num_classes


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network (Zhao et al., CVPR 2017).

    `PSPNet(num_classes=19)` builds the paper's model (dilated ResNet-50 with the deep stem, output
    stride 8, bins 1-2-3-6); any `ModelConfig` field can be passed as a keyword. `classes`, `mean`
    and `std` fill the model card (`model.card`): class names and colours (default generic) and the
    input normalisation (default ImageNet's for RGB input).

    `forward(x)` returns logits (N, K, H, W) at the input's size, for any H and W. In training mode
    it returns a dict: `out` (main logits), `aux` (auxiliary logits, aux `seg`/`both`) and `cls`
    (class-presence logits (N, K), aux `cls`/`both`).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        config: ModelConfig | None = None,
        *,
        classes: ClassInfo | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **options: Any,
    ):
        super().__init__()
        config = dataclasses.replace(config or ModelConfig(), **options)
        if num_classes is not None:
            config = dataclasses.replace(config, num_classes=num_classes)
        config = dataclasses.replace(config, num_classes=resolve_num_classes(config.num_classes, classes))
        self.config = config
        self.card = ModelCard.create(classes or ClassInfo.generic(config.num_classes), config.in_channels, mean, std)
        if self.card.in_channels != config.in_channels:
            raise ConfigError(
                f"data.mean/std: {self.card.in_channels} values but model.in_channels is {config.in_channels}"
            )

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
        # A traced graph (torch.export, torch.compile) keeps the resize, an exact identity at equal sizes:
        # skipping it would bake the example input's size comparison into the graph.
        if not torch.compiler.is_compiling() and logits.shape[-2:] == size:
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

    @property
    def classes(self) -> ClassInfo:
        return self.card.classes

    @property
    def mean(self) -> tuple[float, ...]:
        return self.card.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.card.std

    def reset_classifiers(self, classes: ClassInfo) -> list[str]:
        """Replace the final convs (main and auxiliary) by freshly initialised ones for `classes` (fine-tuning
        on another label set). Returns the names of the new tensors; every other tensor is untouched."""
        names = []
        for head_name in ("decode_head", "aux_head"):
            head = getattr(self, head_name)
            if head is None:
                continue
            old = head.classifier
            head.classifier = nn.Conv2d(old.in_channels, classes.num_classes, old.kernel_size, padding=old.padding)
            names += [f"{head_name}.classifier.{param}" for param, _ in head.classifier.named_parameters()]
        self.config = dataclasses.replace(self.config, num_classes=classes.num_classes)
        self.card = dataclasses.replace(self.card, classes=classes)
        return names

    def predict(self, image: Any, settings: EvalConfig | None = None) -> np.ndarray:
        """Label map (H, W) uint8 of one image: a path, a PIL image or an HxWxC uint8 array.

        C is `in_channels` (an HxW array for one channel); paths and PIL images are converted to
        RGB, L (1 channel) or RGBA (4 channels). `settings` is an `EvalConfig` (sliding window,
        scales, flip); default: the whole image. See `pspnet.inference.predict`.
        """
        return predict_image(self, image, settings)


def _feature_index(index: int, count: int, key: str) -> int:
    if not -count <= index < count:
        raise ConfigError(f"{key}: the encoder returns {count} feature maps, index {index} is out of range")
    return index % count


def create_model(config: Config | ModelConfig, classes: ClassInfo | None = None) -> PSPNet:
    """A PSPNet as `config` describes it; `classes` names the classes (and sets num_classes if unset).

    With a whole `Config`, the card's normalisation is `data.mean`/`data.std`.
    """
    if isinstance(config, Config):
        return PSPNet(config=config.model, classes=classes, mean=config.data.mean, std=config.data.std)
    return PSPNet(config=config, classes=classes)


def complexity(config: ModelConfig, size: tuple[int, int]) -> dict[str, Any]:
    """Parameter counts and inference FLOPs (2 per multiply-add) of the model at input `size`.

    Built and run on the meta device: nothing is allocated or computed, and no weights are loaded.
    """
    config = dataclasses.replace(config, encoder_weights=None)
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
