"""Turning a model into class probabilities for whole images.

`Inferencer` implements the test-time protocol configured by `EvalConfig`: the image at each
scale, optionally flipped, with softmax probabilities averaged at the original resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import EvalConfig
from ..utils.io import read_rgb


def load_image_array(image: Any) -> np.ndarray:
    """HxWx3 uint8 RGB array from a path, a PIL image or an array."""
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {array.shape} and dtype {array.dtype}")
    return array


class Inferencer:
    """Class probabilities (N, K, H, W) of normalised image batches under an evaluation protocol."""

    def __init__(self, model: torch.nn.Module, settings: EvalConfig | None = None):
        self.model = model
        self.settings = settings or EvalConfig()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.model(x).float().softmax(1)
        if self.settings.flip:
            probs = probs + self.model(x.flip(-1)).float().softmax(1).flip(-1)
            probs = probs / 2
        return probs

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        total = None
        for scale in self.settings.scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            probs = self._forward(scaled)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
        return total / len(self.settings.scales)
