"""`pspnet predict` on videos: frame count, rate and size kept, each frame the single-image overlay of the
decoded input frame, the audio dropped; a corrupt video is a per-file failure that leaves nothing behind."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config_dict, unavailable
from PIL import Image

from pspnet.checkpoint import load_model, save_checkpoint
from pspnet.cli import main
from pspnet.config import Config
from pspnet.models import create_model
from pspnet.visualize import overlay

FRAMES, HEIGHT, WIDTH, RATE = 12, 64, 96, Fraction(15)


@pytest.fixture(scope="module")
def av():
    try:
        import av
    except ImportError:
        unavailable("PyAV is not installed (pip install -e '.[video]')")
    return av


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny 3-class model (random weights: any deterministic prediction will do)."""
    data = tiny_config_dict()
    config = Config.from_dict({**data, "model": {**data["model"], "num_classes": 3}})
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("video") / "model.safetensors", create_model(config).eval(), config)


def write_clip(av, path: Path, faststart: bool = False) -> Path:
    """12 frames of 96x64 (a square moving over a gradient, with noise) at 15 fps, plus a sine audio track."""
    rng = np.random.default_rng(0)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as output:
        video = output.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = output.add_stream("aac", rate=16000)
        for index in range(FRAMES):
            frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            frame[..., 0] = np.linspace(0, 255, WIDTH)[None]
            frame[..., 2] = 255 - 20 * index
            frame[20:44, 5 * index : 5 * index + 24] = (250, 240, 30)
            frame = np.clip(frame + rng.normal(0, 8, frame.shape), 0, 255).astype(np.uint8)
            output.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(video.encode(None))
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)[None]
        sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        sound.sample_rate = 16000
        output.mux(audio.encode(sound))
        output.mux(audio.encode(None))
    return path


def decode(av, path: Path) -> tuple[list[np.ndarray], dict]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, {
            "streams": [s.type for s in container.streams],
            "rate": stream.average_rate,
            "size": (stream.codec_context.width, stream.codec_context.height),
        }


def test_video_round_trips_frame_by_frame(av, checkpoint, tmp_path, capsys):
    clip = write_clip(av, tmp_path / "clip.mp4")
    out = tmp_path / "out"
    args = [
        "--quiet",
        "predict",
        str(checkpoint),
        str(clip),
        "--out",
        str(out),
        "--overlay-alpha",
        "0.6",
        "--video-crf",
        "0",
        "--video-labels",
    ]
    assert main(args) == 0
    assert "(NAME.overlay.mp4, NAME.labels/, legend.png, classes.json)" in capsys.readouterr().out
    inputs, source = decode(av, clip)
    outputs, result = decode(av, out / "clip.overlay.mp4")
    assert source["streams"] == ["video", "audio"] and result["streams"] == ["video"]  # the audio is dropped
    assert len(outputs) == len(inputs) == FRAMES
    assert result["rate"] == source["rate"] == RATE and result["size"] == source["size"] == (WIDTH, HEIGHT)
    model = load_model(checkpoint)
    for index, (frame, written) in enumerate(zip(inputs, outputs)):
        label = model.predict(frame)
        np.testing.assert_array_equal(np.array(Image.open(out / "clip.labels" / f"{index:06d}.png")), label)
        expected = overlay(frame, label, model.card.classes, alpha=0.6)
        assert np.abs(written.astype(int) - expected).max() <= 2, index  # lossless H.264, RGB <-> YUV rounding
    assert len(np.unique(np.stack([model.predict(frame) for frame in inputs]))) > 1  # the overlay shows classes
    assert (out / "legend.png").is_file() and (out / "classes.json").is_file()

    assert main(args + ["--skip-existing"]) == 0
    assert "skipped 1 input(s)" in capsys.readouterr().out


def test_corrupt_videos_fail_alone_and_leave_no_partial_file(av, checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    whole = write_clip(av, tmp_path / "whole.mp4", faststart=True).read_bytes()
    (inputs / "cut.mp4").write_bytes(whole[: len(whole) * 6 // 10])  # decoding stops midway, once writing began
    Image.fromarray(np.full((32, 48, 3), 120, np.uint8)).save(inputs / "photo.png")
    out = tmp_path / "out"
    assert main(["--quiet", "predict", str(checkpoint), str(inputs), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failures) == 2 and "Traceback" not in err
    assert any(f"cannot read video {inputs / 'garbage.mp4'}" in line for line in failures)
    assert any(
        f"cannot read video {inputs / 'cut.mp4'}: it ends after" in line and "of its 12 frames" in line
        for line in failures
    )
    assert "2 of 3 inputs failed" in err
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()) == [
        "classes.json",
        "color/photo.png",
        "labels/photo.png",
        "legend.png",
        "overlay/photo.jpg",
    ]
