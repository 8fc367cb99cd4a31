"""One route from an image to a label map, used by `model.predict`, `pspnet predict` and every backend.

A model here is anything callable on a normalised (N, C, H, W) float batch that returns logits at
the input size, with a `card` (`pspnet.card.ModelCard`: classes, mean/std, input channels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..config import EvalConfig
from ..io.images import read_image
from .protocol import Inferencer


def image_to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """HxWxC uint8 array -> normalised float tensor CxHxW (what the model expects)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return tensor.sub_(mean_t).div_(std_t)


def tensor_to_image(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The inverse of `image_to_tensor`: a normalised CxHxW tensor -> HxWxC uint8 array."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    pixels = (tensor.detach().float().cpu() * std_t + mean_t).mul_(255).round_().clamp_(0, 255)
    return pixels.to(torch.uint8).permute(1, 2, 0).numpy()


def model_device(model: Any) -> torch.device:
    """Where `model`'s parameters live (CPU for models without parameters, e.g. other backends)."""
    parameters = getattr(model, "parameters", None)
    first = next(parameters(), None) if parameters is not None else None
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def evaluation_mode(model: Any) -> Iterator[None]:
    """Put a model in eval mode for the block, then back into training mode if it was in it
    (backends other than torch modules have no training mode)."""
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@torch.inference_mode()
def _infer(model: Any, image: np.ndarray, settings: EvalConfig | None, method: str) -> np.ndarray:
    """`Inferencer(model, settings).<method>` of an HxWxC uint8 array (or an NxHxWxC batch), in eval mode."""
    card = model.card
    batch = image if image.ndim == 4 else image[None]
    tensor = torch.stack([image_to_tensor(item, card.mean, card.std) for item in batch]).to(model_device(model))
    with evaluation_mode(model):
        result = getattr(Inferencer(model, settings), method)(tensor).cpu().numpy()
    return result if image.ndim == 4 else result[0]


def predict_array(model: Any, image: np.ndarray, settings: EvalConfig | None = None) -> np.ndarray:
    """Label map (H, W) uint8 of an HxWxC uint8 array whose C is the model's input channel count;
    (N, H, W) for a batch (N, H, W, C)."""
    return _infer(model, image, settings, "labels")


def predict_probabilities(model: Any, image: np.ndarray, settings: EvalConfig | None = None) -> np.ndarray:
    """Class probabilities (K, H, W) float32 of an HxWxC uint8 array, (N, K, H, W) for a batch; their
    argmax over K is `predict_array`'s label map."""
    return _infer(model, image, settings, "probabilities")


def predict_image(model: Any, image: Any, settings: EvalConfig | None = None) -> np.ndarray:
    """Label map (H, W) uint8 of one image, or (N, H, W) for a batch.

    `image`: a path, a PIL image, an HxWxC (HxW for one channel) array, or an NxHxWxC batch. Arrays
    may be uint8, uint16 (scaled to 8 bits) or float in [0, 1]; C is the model's input channels.
    Files and PIL images are turned by their EXIF orientation; images beyond the settings' pixel cap
    (`EvalConfig.pixel_cap`) are refused.
    """
    channels, cap = model.card.in_channels, (settings or EvalConfig()).pixel_cap()
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return predict_array(model, np.stack([read_image(item, channels, cap) for item in image]), settings)
    return predict_array(model, read_image(image, channels, cap, exif=True), settings)
