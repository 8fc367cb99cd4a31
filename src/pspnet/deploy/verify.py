"""Checking an exported model against the PyTorch model it came from, at several input sizes.

The sizes are the export size plus `VERIFY_SIZES`: odd, non-square, and not multiples of 8 or 6, so
that the stride-8 features (13x17, 17x9, 26x20 for a ResNet) are mostly not divisible by the pyramid
bins, where pooling with fixed windows goes wrong. The first runs with a batch of 2, which checks the
dynamic batch dimension too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ExportError

VERIFY_SIZES = ((97, 131), (131, 67), (203, 157))
FP32_TOLERANCE = 1e-4
"""Largest relative L2 error of an fp32 export's logits."""

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Check:
    """One comparison: input shape (N, C, H, W), relative L2 error of the logits, argmax agreement."""

    shape: tuple[int, ...]
    relative_l2: float
    agreement: float

    def describe(self) -> str:
        return (
            f"{'x'.join(map(str, self.shape))}: relative L2 {self.relative_l2:.2e}, "
            f"argmax agreement {100 * self.agreement:.2f}%"
        )


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30))


def compare(reference: Runner, exported: Runner, batch: torch.Tensor) -> Check:
    """Run both on `batch` and compare their logits."""
    with torch.inference_mode():
        expected = reference(batch)
        try:
            actual = exported(batch)
        except Exception as exc:  # any runtime's error: the export does not serve this size
            message = str(exc).strip().splitlines()
            raise ExportError(
                f"the exported model fails at input {tuple(batch.shape)}, nothing was written: "
                f"{type(exc).__name__}: {message[-1] if message else ''}"
            ) from None
    if actual.shape != expected.shape:
        raise ExportError(
            f"at input {tuple(batch.shape)} the exported model returns shape {tuple(actual.shape)}, "
            f"PyTorch {tuple(expected.shape)}"
        )
    agreement = float((actual.argmax(1) == expected.argmax(1)).double().mean())
    return Check(tuple(batch.shape), relative_l2(actual, expected), agreement)


def random_batches(export_size: Sequence[int], channels: int, seed: int = 0) -> list[torch.Tensor]:
    """Normalised-image-like inputs N(0, 1) at the export size and each of `VERIFY_SIZES` (the first
    of those with a batch of 2)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(1, *export_size)] + [(2 if index == 0 else 1, *size) for index, size in enumerate(VERIFY_SIZES)]
    return [torch.randn(count, channels, height, width, generator=generator) for count, height, width in shapes]


def verify_fp32(
    reference: Runner, exported: Runner, export_size: Sequence[int], channels: int, name: str
) -> list[Check]:
    """Checks at every verification size; ExportError listing the sizes whose relative L2 exceeds `FP32_TOLERANCE`."""
    checks = [compare(reference, exported, batch) for batch in random_batches(export_size, channels)]
    failed = [check for check in checks if not np.isfinite(check.relative_l2) or check.relative_l2 > FP32_TOLERANCE]
    if failed:
        raise ExportError(
            f"the {name} export does not reproduce the model (relative L2 > {FP32_TOLERANCE:g}), nothing "
            f"was written; at " + "; ".join(check.describe() for check in failed)
        )
    return checks


MIN_INT8_AGREEMENT = 0.9
"""Least argmax agreement of an int8 export with the PyTorch model on held-out images (a broken
quantization lands far below; a good one at 99% or more)."""


def verify_int8(
    reference: Runner,
    exported: Runner,
    images: Sequence[torch.Tensor],
    export_size: Sequence[int],
    min_agreement: float = MIN_INT8_AGREEMENT,
) -> tuple[list[Check], float]:
    """Compare on real images (int8 logits differ from fp32, so random inputs say little): each image at its
    own size, and the first one resized to the export size and to every `VERIFY_SIZES`. Returns the checks
    and the pixel-weighted argmax agreement; ExportError when that is below `min_agreement`."""
    resized = [
        F.interpolate(images[0], size=tuple(size), mode="bilinear", align_corners=False)
        for size in (export_size, *VERIFY_SIZES)
    ]
    checks = [compare(reference, exported, batch) for batch in [*images, *resized]]
    pixels = [float(np.prod(check.shape)) / check.shape[1] for check in checks]
    agreement = sum(check.agreement * count for check, count in zip(checks, pixels)) / sum(pixels)
    if agreement < min_agreement:
        raise ExportError(
            f"the int8 export agrees with the model on only {100 * agreement:.1f}% of the pixels of "
            f"{len(checks)} held-out images (at least {100 * min_agreement:.0f}% required), nothing "
            "was written; calibrate on more, or more typical, images (--calibration, --calibration-images)"
        )
    return checks, agreement
