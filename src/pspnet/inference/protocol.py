"""Class probabilities of whole images under a test-time protocol (whole, slide, multi-scale, flip).

`Inferencer` implements the protocol configured by `EvalConfig` (see docs/evaluation.md):

1. For each scale, the image is resized (bilinear) to the size `scaled_size` gives.
2. At that size the model sees either the whole image (`whole`) or overlapping crops (`slide`):
   windows of `crop_size` every `stride` pixels, the last one aligned to the bottom/right border
   (`window_starts`). An image smaller than the crop is padded with the mean colour (0 after
   normalisation), split evenly between top/bottom and left/right as semseg does, and the
   probabilities are cropped back. Window probabilities are summed with a count map and divided
   by it, so overlaps are averaged. Windows go through the model `window_batch` at a time.
3. With `flip`, each input is also run mirrored and the two softmax maps averaged.
4. Each scale's probabilities are resized back to the original size and added to one running
   sum, so memory holds a few probability maps whatever the number of scales.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..config import EvalConfig


def scaled_size(
    height: int, width: int, scale: float, base_size: int | None = None, resize: str = "long"
) -> tuple[int, int]:
    """Image size (h, w) at `scale`.

    Without `base_size` both sides are multiplied by `scale`. With it, the `long` (or `short`) side
    becomes round(scale * base_size) and the other side keeps the aspect ratio, rounded
    (Python's round, as semseg computes it).
    """
    if base_size is None:
        return max(1, round(height * scale)), max(1, round(width * scale))
    target = round(scale * base_size)
    height_is_set = height > width if resize == "long" else height < width
    if height_is_set:
        return target, max(1, round(target / height * width))
    return max(1, round(target / width * height)), target


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of `length` (>= crop) pixels.

    Windows start every `stride` pixels; the last one is moved back to end at the border, so
    ceil((length - crop) / stride) + 1 windows cover every pixel.
    """
    count = -(-(length - crop) // stride) + 1
    return [min(index * stride, length - crop) for index in range(count)]


def window_grid(height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the windows over an image padded to at least the crop size."""
    rows = window_starts(max(height, crop[0]), crop[0], stride[0])
    columns = window_starts(max(width, crop[1]), crop[1], stride[1])
    return [(y, x) for y in rows for x in columns]


def upsampling_factor(settings: EvalConfig, height: int, width: int) -> float:
    """The largest factor by which the protocol enlarges an image of `height` x `width`."""
    sizes = [scaled_size(height, width, scale, settings.base_size, settings.resize) for scale in settings.scales]
    return max(max(h / height, w / width) for h, w in sizes)


def forward_passes(settings: EvalConfig, height: int, width: int) -> list[tuple[tuple[int, int], int]]:
    """What the protocol runs through the model for one image: (input size, count) per scale; the input
    is the crop in `slide` mode, and flip doubles each count."""
    passes = []
    for scale in settings.scales:
        scaled = scaled_size(height, width, scale, settings.base_size, settings.resize)
        if settings.mode == "slide":
            crop = (settings.crop_size[0], settings.crop_size[1])
            passes.append((crop, len(window_grid(*scaled, crop, settings.window_stride))))
        else:
            passes.append((scaled, 1))
    return [(size, count * (2 if settings.flip else 1)) for size, count in passes]


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


class Inferencer:
    """Class probabilities (N, K, H, W) of normalised image batches under an evaluation protocol."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], settings: EvalConfig | None = None):
        self.model = model
        self.settings = settings or EvalConfig()

    def _softmax(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax of the model's logits, averaged with those of the mirrored batch when flipping."""
        if not self.settings.flip:
            return self.model(batch).float().softmax(1)
        probs = self.model(torch.cat([batch, batch.flip(-1)])).float().softmax(1)
        count = len(batch)
        return probs[:count].add_(probs[count:].flip(-1)).div_(2)

    def _slide_bands(self, images: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Window probabilities averaged where windows overlap, over the padded image, from the top down:
        `(first_row, band)` for each band of rows that no later window reaches. Only the band still being
        summed is held, so memory grows with the image width, not its area."""
        crop_h, crop_w = self.settings.crop_size
        count, _, height, width = images.shape
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        top, left = pad_h // 2, pad_w // 2
        if pad_h or pad_w:
            images = F.pad(images, (left, pad_w - left, top, pad_h - top))  # 0 = the mean colour once normalised
        windows = window_grid(height, width, (crop_h, crop_w), self.settings.window_stride)
        band_top, total, coverage = 0, None, None  # total/coverage hold rows band_top.. of the padded image
        for first in range(0, len(windows), self.settings.window_batch):
            chunk = windows[first : first + self.settings.window_batch]
            probs = self._softmax(torch.cat([images[..., y : y + crop_h, x : x + crop_w] for y, x in chunk]))
            rows = max(y for y, _ in chunk) + crop_h - band_top
            if total is None or rows > total.shape[2]:
                extra = rows - (0 if total is None else total.shape[2])
                new_total = probs.new_zeros((count, probs.shape[1], extra, images.shape[-1]))
                new_coverage = probs.new_zeros((1, 1, extra, images.shape[-1]))
                total = new_total if total is None else torch.cat([total, new_total], 2)
                coverage = new_coverage if coverage is None else torch.cat([coverage, new_coverage], 2)
            for index, (y, x) in enumerate(chunk):
                total[..., y - band_top : y - band_top + crop_h, x : x + crop_w] += probs[
                    index * count : (index + 1) * count
                ]
                coverage[..., y - band_top : y - band_top + crop_h, x : x + crop_w] += 1
            next_top = windows[first + len(chunk)][0] if first + len(chunk) < len(windows) else images.shape[-2]
            if next_top > band_top:
                done = next_top - band_top
                yield band_top, total[:, :, :done] / coverage[:, :, :done]
                total, coverage, band_top = total[:, :, done:], coverage[:, :, done:], next_top

    def _image_bands(self, images: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """`_slide_bands` cropped back to the image (without its padding): `(first_row, band)`."""
        height, width = images.shape[-2:]
        crop_h, crop_w = self.settings.crop_size
        top, left = max(crop_h - height, 0) // 2, max(crop_w - width, 0) // 2
        for band_top, band in self._slide_bands(images):
            first, last = max(band_top, top), min(band_top + band.shape[2], top + height)
            if last > first:
                yield first - top, band[:, :, first - band_top : last - band_top, left : left + width]

    def _slide(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities from overlapping windows, averaged where they overlap, at the image's size."""
        total = None
        for start, band in self._image_bands(images):
            if total is None:
                total = band.new_empty((len(images), band.shape[1], *images.shape[-2:]))
            total[:, :, start : start + band.shape[2]] = band
        return total

    def _streams(self, height: int, width: int) -> bool:
        """Whether `labels` can stream: sliding windows at the image's own size, one scale."""
        settings = self.settings
        return (
            settings.mode == "slide"
            and len(settings.scales) == 1
            and scaled_size(height, width, settings.scales[0], settings.base_size, settings.resize) == (height, width)
        )

    @torch.inference_mode()
    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """Class ids (N, H, W) uint8: the argmax of `probabilities`. With sliding windows at one scale, bands of
        rows are decided as soon as no later window reaches them, so memory stays bounded for large images."""
        height, width = images.shape[-2:]
        if not self._streams(height, width):
            return self.probabilities(images).argmax(1).to(torch.uint8)
        labels = torch.empty((len(images), height, width), dtype=torch.uint8, device=images.device)
        for start, band in self._image_bands(images):
            labels[:, start : start + band.shape[2]] = band.argmax(1)
        return labels

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Average softmax probabilities over the protocol's scales (and flips) at the input's size."""
        settings = self.settings
        height, width = images.shape[-2:]
        total = None
        for scale in settings.scales:
            scaled = _resize(images, scaled_size(height, width, scale, settings.base_size, settings.resize))
            probs = self._slide(scaled) if settings.mode == "slide" else self._softmax(scaled)
            probs = _resize(probs, (height, width))
            total = probs if total is None else total.add_(probs)
            del scaled, probs  # free this scale's maps before the next one is computed
        return total.div_(len(settings.scales))
