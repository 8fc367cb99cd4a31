"""Segmenting a video with PyAV (the `video` extra): frames are decoded, segmented, blended and encoded
one at a time, so memory holds a few frames whatever the length. The audio is dropped, the frame rate
and size are kept; the output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..config import EvalConfig
from ..errors import ConfigError, DataError
from ..inference.predict import predict_array
from ..io.files import atomic_path
from ..io.images import describe_size
from ..system.progress import progress_bar
from ..visualize import displayable, overlay, save_label_png

DEFAULT_CRF = 18
"""x264's constant rate factor for overlay videos: 18 is visually lossless, 0 lossless."""
FRAME_FORMATS = {1: "gray", 3: "rgb24"}
"""PyAV pixel format of the frames given to a model, by its input channel count."""


def import_av() -> ModuleType:
    """The PyAV module; ConfigError with the install command when it is missing."""
    try:
        import av  # optional (the `video` extra) and heavy: only when a video is segmented
    except ImportError:
        raise ConfigError("segmenting videos needs PyAV: pip install 'pspnet[video]'") from None
    return av


@dataclass(frozen=True)
class VideoOptions:
    """How overlay videos are encoded (`crf`: x264's constant rate factor, 0 lossless with full colour
    resolution .. 51) and whether each frame's label map is also written."""

    crf: int = DEFAULT_CRF
    labels: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"the video crf must be in 0..51, got {self.crf}")


class VideoReader:
    """The first video stream of a file: frame rate, size, frame count, and its frames as arrays."""

    def __init__(self, path: Path, max_pixels: int | None = None):
        av = import_av()
        self.path, self.error = path, av.FFmpegError
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError) as exc:
            raise DataError(f"cannot read video {path}: {exc}") from None
        try:
            if not self.container.streams.video:
                raise DataError(f"cannot read video {path}: it has no video stream")
            self.stream = self.container.streams.video[0]
            self.rate = self.stream.average_rate or self.stream.guessed_rate
            self.width, self.height = self.stream.codec_context.width, self.stream.codec_context.height
            if not self.rate or not self.width or not self.height:
                raise DataError(f"cannot read video {path}: no frame rate or frame size in its header")
            if max_pixels is not None and self.width * self.height > max_pixels:
                raise DataError(
                    f"video {path}: frames of {describe_size(self.width, self.height)} are more than the "
                    f"cap of {max_pixels / 1e6:.1f} M pixels (eval.max_pixels / --max-pixels)"
                )
        except DataError:
            self.container.close()
            raise
        self.frame_count = self.stream.frames or self._estimated_frames()

    def _estimated_frames(self) -> int:
        """Frames from the duration, for containers whose header does not count them (0 when unknown)."""
        if self.stream.duration and self.stream.time_base:
            return round(self.stream.duration * self.stream.time_base * self.rate)
        return round(Fraction(self.container.duration or 0, 1_000_000) * self.rate)

    def frames(self, pixel_format: str) -> Iterator[np.ndarray]:
        """HxWxC (gray: HxW) uint8 arrays of the frames in order; DataError when the stream is corrupt or
        ends before the frame count in its header."""
        decoded = 0
        try:
            for frame in self.container.decode(self.stream):
                decoded += 1
                yield frame.to_ndarray(format=pixel_format)
        except self.error as exc:
            raise DataError(f"cannot read video {self.path}: frame {decoded + 1}: {exc}") from None
        if self.stream.frames and decoded < self.stream.frames:
            raise DataError(
                f"cannot read video {self.path}: it ends after {decoded} of its {self.stream.frames} frames "
                "(truncated?)"
            )

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def overlay_video(
    model: Any,
    reader: VideoReader,
    out_path: Path,
    settings: EvalConfig,
    alpha: float = 0.5,
    crf: int = DEFAULT_CRF,
    labels_dir: Path | None = None,
    progress: bool = True,
) -> int:
    """Write `out_path` (H.264 in MP4 at constant rate factor `crf`): each frame of `reader` with its
    predicted classes blended in with weight `alpha`, at the input's frame rate and size, without audio;
    with `labels_dir`, each frame's label map as `labels_dir/NNNNNN.png`. Returns the number of frames."""
    av = import_av()
    channels = model.card.in_channels
    if channels not in FRAME_FORMATS:
        raise ConfigError(f"videos can be segmented by 1- or 3-channel models; this one takes {channels} channels")
    full_colour = crf == 0 or reader.width % 2 or reader.height % 2  # 4:2:0 needs even sizes
    count = 0
    with (
        progress_bar(reader.frame_count, reader.path.name, progress, unit="frame") as bar,
        atomic_path(out_path) as tmp,
        av.open(str(tmp), "w", format="mp4") as output,
    ):
        stream = output.add_stream("libx264", rate=reader.rate)
        stream.width, stream.height = reader.width, reader.height
        stream.pix_fmt = "yuv444p" if full_colour else "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in reader.frames(FRAME_FORMATS[channels]):
            image = frame if frame.ndim == 3 else frame[..., None]
            label = predict_array(model, image, settings)
            if labels_dir is not None:
                save_label_png(labels_dir / f"{count:06d}.png", label, model.card.classes)
            blended = overlay(displayable(image), label, model.card.classes, alpha)
            output.mux(stream.encode(av.VideoFrame.from_ndarray(blended, format="rgb24")))
            count += 1
            bar.update()
        output.mux(stream.encode(None))
    return count
