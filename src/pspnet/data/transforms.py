"""Training and evaluation transforms built on torchvision.transforms.v2.

The training pipeline is the paper's: random scale 0.5-2.0, rotation within +-10 degrees, a random
crop padded with the mean colour (image) and 255 (mask), Gaussian blur, horizontal flip, then
ImageNet normalisation. Masks are `tv_tensors.Mask`, so every geometric step moves them with the
image using nearest-neighbour interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..classes import IGNORE_INDEX
from ..config import AugmentConfig


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from [low, high] (both sides scaled alike)."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        factor = self.low + (self.high - self.low) * torch.rand(()).item()
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


def _fill(mean: Sequence[float]) -> dict:
    """Pad/rotation fill: the mean colour for images (in 0-255), the ignore label for masks."""
    return {tv_tensors.Image: [round(255 * m) for m in mean], tv_tensors.Mask: IGNORE_INDEX}


class PairTransform:
    """Applies a v2 pipeline to an (image, mask) pair given as numpy arrays."""

    def __init__(self, steps: list[v2.Transform], mean: Sequence[float], std: Sequence[float]):
        self.pipeline = v2.Compose(
            [
                *steps,
                v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
                v2.Normalize(mean=list(mean), std=list(std)),
            ]
        )

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        img, msk = self.pipeline(img, msk)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)


def build_train_transform(augment: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> PairTransform:
    """The paper's training augmentation, each step switched by `augment`."""
    steps: list[v2.Transform] = []
    if augment.scale is not None:
        steps.append(RandomScale(*augment.scale))
    if augment.rotate > 0:
        steps.append(v2.RandomRotation(augment.rotate, interpolation=v2.InterpolationMode.BILINEAR, fill=_fill(mean)))
    # Blur and flip come after the crop: the same distribution of results, on a crop-sized image
    # instead of an image scaled up to 2x (about 4x less work at the paper's settings).
    steps.append(v2.RandomCrop(augment.crop_size, pad_if_needed=True, fill=_fill(mean)))
    if augment.blur > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=augment.blur))
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    return PairTransform(steps, mean, std)


def build_eval_transform(mean: Sequence[float], std: Sequence[float]) -> PairTransform:
    """Evaluation keeps the full image: only conversion and normalisation."""
    return PairTransform([], mean, std)
