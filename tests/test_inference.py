"""Test-time protocols: sliding windows, resize rules, scales, flip, presets and their CLI flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_dict
from torch import nn

from pspnet.checkpoint import save_checkpoint
from pspnet.cli import main
from pspnet.config import Config, EvalConfig
from pspnet.data.synthetic import ContextScenes
from pspnet.errors import ConfigError
from pspnet.inference.protocol import Inferencer, scaled_size, window_grid, window_starts
from pspnet.jobs.predict_files import PredictionReport
from pspnet.models import create_model

SEMSEG_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


class Pointwise(nn.Module):
    """Logits of each pixel from its own colour only: translation- and flip-equivariant."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, num_classes, 1))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return 4 * self.net(x)


class Ramp(nn.Module):
    """Ignores the image: class 0's logit grows from left to right (not flip-symmetric)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 2, *x.shape[-2:])
        logits[:, 0] = torch.linspace(-2, 2, x.shape[-1])
        return logits


def probabilities(model: nn.Module, images: torch.Tensor, **settings) -> torch.Tensor:
    return Inferencer(model, EvalConfig(**settings)).probabilities(images)


@pytest.mark.parametrize("size", [(20, 27), (32, 32), (33, 33), (50, 77), (71, 45)])
@pytest.mark.parametrize("crop, stride", [([32, 32], [20, 20]), ([24, 40], None)])
def test_slide_equals_whole_for_a_pointwise_model(size, crop, stride):
    images = torch.randn(2, 3, *size)
    model = Pointwise()
    whole = probabilities(model, images)
    slide = probabilities(model, images, mode="slide", crop_size=crop, stride=stride, window_batch=3)
    assert slide.shape == whole.shape == (2, 5, *size)
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


class WindowDependent(nn.Module):
    """A 5x5 conv with zero padding: a pixel's logits depend on where its window's border is."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 6, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * self.conv(x)


@pytest.mark.parametrize("size, window_batch", [((70, 90), 1), ((70, 90), 3), ((20, 95), 2), ((131, 64), 4)])
def test_sliding_window_labels_are_decided_band_by_band(size, window_batch, monkeypatch):
    """Labels stream out in bands of at most one crop height, equal to the argmax of the full probabilities."""
    settings = EvalConfig(mode="slide", crop_size=[32, 40], window_batch=window_batch, flip=True)
    inferencer = Inferencer(WindowDependent(), settings)
    images = torch.randn(2, 3, *size)
    expected = inferencer.probabilities(images).argmax(1).to(torch.uint8)
    heights = []
    original = Inferencer._slide_bands

    def recording(self, batch):
        for top, band in original(self, batch):
            heights.append(band.shape[2])
            yield top, band

    monkeypatch.setattr(Inferencer, "_slide_bands", recording)
    labels = inferencer.labels(images)
    torch.testing.assert_close(labels, expected, rtol=0, atol=0)
    stride = settings.window_stride[0]
    rows = len(window_starts(max(size[0], 32), 32, stride))
    columns = len(window_starts(max(size[1], 40), 40, settings.window_stride[1]))
    rows_per_batch = -(-window_batch // columns)
    assert sum(heights) == max(size[0], 32) and len(heights) >= rows // rows_per_batch
    assert max(heights) <= 32 + stride * (rows_per_batch - 1)  # bounded by the windows, not the image height


@pytest.mark.parametrize(
    "length, crop, stride",
    [
        (32, 32, 22),
        (33, 32, 22),
        (75, 32, 22),
        (76, 32, 22),
        (100, 32, 21),
        (714, 713, 476),
        (1024, 713, 476),
        (2048, 713, 476),
        (513, 473, 316),
    ],
)
def test_windows_cover_every_pixel_and_end_at_the_border(length, crop, stride):
    starts = window_starts(length, crop, stride)
    assert starts[0] == 0 and starts[-1] == length - crop
    assert starts == sorted(set(starts))
    assert all(later - earlier <= stride for earlier, later in zip(starts, starts[1:]))
    covered = np.zeros(length, dtype=int)
    for start in starts:
        covered[start : start + crop] += 1
    assert covered.min() >= 1


def test_window_positions_match_semseg_on_cityscapes_images():
    assert window_starts(1024, 713, 476) == [0, 311]
    assert window_starts(2048, 713, 476) == [0, 476, 952, 1335]
    assert window_starts(713, 713, 476) == [0]
    assert len(window_grid(1024, 2048, (713, 713), (476, 476))) == 8
    assert window_grid(20, 27, (32, 32), (22, 22)) == [(0, 0)]  # padded to one window


def test_small_images_are_padded_evenly_with_the_mean_and_cropped_back():
    images = torch.randn(1, 3, 20, 27)
    model = Pointwise()
    probs = probabilities(model, images, mode="slide", crop_size=[32, 32])
    (seen,) = model.inputs
    assert seen.shape == (1, 3, 32, 32)
    top, left = (32 - 20) // 2, (32 - 27) // 2  # 6 and 2; the odd extra pixel goes to the right
    torch.testing.assert_close(seen[..., top : top + 20, left : left + 27], images)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[top : top + 20, left : left + 27] = False
    assert not seen[..., border].any()  # zero = the mean colour of normalised images
    torch.testing.assert_close(probs, probabilities(model, images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("flip, sizes", [(False, [3, 3, 2]), (True, [6, 6, 4])])
def test_windows_are_batched(flip, sizes):
    model = Pointwise()
    probabilities(
        model, torch.randn(1, 3, 50, 77), mode="slide", crop_size=[32, 32], stride=[20, 20], window_batch=3, flip=flip
    )
    assert [len(x) for x in model.inputs] == sizes  # 2 x 4 windows, 3 per pass; flip runs mirrored copies alongside


def test_flip_averaging_of_a_flip_symmetric_model_is_the_model_output():
    images = torch.randn(2, 3, 21, 34)
    model = Pointwise()
    expected = model(images).softmax(1)
    torch.testing.assert_close(probabilities(model, images, flip=True), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        probabilities(model, images, flip=True, mode="slide", crop_size=[16, 16]), expected, rtol=0, atol=1e-6
    )


def test_flip_averages_with_the_mirrored_prediction_mirrored_back():
    images = torch.randn(1, 3, 4, 9)
    plain = Ramp()(images).softmax(1)
    flipped = probabilities(Ramp(), images, flip=True)
    torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2)
    torch.testing.assert_close(flipped, flipped.flip(-1))


def test_single_scale_list_equals_single_scale():
    images = torch.randn(1, 3, 30, 44)
    model = Pointwise()
    expected = model(images).softmax(1)
    torch.testing.assert_close(probabilities(model, images, scales=[1.0]), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(probabilities(model, images, scales=[1.0, 1.0]), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(probabilities(model, images, scales=[1.0], base_size=44), expected, rtol=0, atol=1e-6)


def test_multi_scale_averages_probabilities_resized_to_the_original_size():
    images = torch.randn(1, 3, 30, 44)
    model = Pointwise()
    half = model(F.interpolate(images, size=(15, 22), mode="bilinear", align_corners=False)).softmax(1)
    half = F.interpolate(half, size=(30, 44), mode="bilinear", align_corners=False)
    expected = (half + model(images).softmax(1)) / 2
    torch.testing.assert_close(probabilities(model, images, scales=[0.5, 1.0]), expected)
    torch.testing.assert_close(probabilities(model, images, scales=[0.5, 1.0], base_size=44), expected)


@pytest.mark.parametrize(
    "size, scale, base, resize, expected",
    [
        ((1024, 2048), 1.0, 2048, "long", (1024, 2048)),
        ((1024, 2048), 0.75, 2048, "long", (768, 1536)),
        ((1024, 2048), 1.75, 2048, "long", (1792, 3584)),
        ((375, 500), 1.0, 512, "long", (384, 512)),
        ((500, 375), 0.5, 512, "long", (256, 192)),
        ((375, 500), 1.0, 512, "short", (512, 683)),
        ((512, 512), 1.25, 512, "short", (640, 640)),
        ((375, 500), 0.5, None, "long", (188, 250)),
    ],
)
def test_resize_rules(size, scale, base, resize, expected):
    assert scaled_size(*size, scale, base, resize) == expected


def test_presets_resolve_to_the_documented_numbers():
    cityscapes = EvalConfig(protocol="semseg-cityscapes")
    assert (
        cityscapes.mode,
        cityscapes.crop_size,
        cityscapes.window_stride,
        cityscapes.base_size,
        cityscapes.resize,
        cityscapes.scales,
        cityscapes.flip,
    ) == ("slide", [713, 713], (476, 476), 2048, "long", [1.0], True)
    assert EvalConfig(protocol="semseg-cityscapes-ms").scales == SEMSEG_SCALES
    for name in ("semseg-ade20k", "semseg-voc"):
        ade = EvalConfig(protocol=name)
        assert (ade.mode, ade.crop_size, ade.window_stride, ade.base_size, ade.resize, ade.scales, ade.flip) == (
            "slide",
            [473, 473],
            (316, 316),
            512,
            "long",
            [1.0],
            True,
        )
        assert EvalConfig(protocol=f"{name}-ms").scales == SEMSEG_SCALES
    whole = EvalConfig(protocol="mmseg-whole")
    assert (whole.mode, whole.base_size, whole.scales, whole.flip) == ("whole", None, [1.0], False)
    whole_ms = EvalConfig(protocol="mmseg-whole-ms")
    assert (whole_ms.mode, whole_ms.scales, whole_ms.flip) == ("whole", SEMSEG_SCALES, True)
    ade = EvalConfig(protocol="mmseg-ade20k")
    assert (ade.mode, ade.base_size, ade.resize, ade.scales, ade.flip) == ("whole", 512, "short", [1.0], False)
    # the stride semseg uses is the default: 2/3 of the crop, rounded up
    assert EvalConfig(mode="slide", crop_size=[713, 713]).window_stride == (476, 476)
    assert EvalConfig(mode="slide", crop_size=[473, 473]).window_stride == (316, 316)


def test_explicit_settings_win_over_the_preset():
    settings = Config.from_dict({"eval": {"protocol": "semseg-cityscapes", "flip": False, "scales": [0.5, 1.0]}}).eval
    assert (settings.mode, settings.crop_size, settings.flip, settings.scales) == (
        "slide",
        [713, 713],
        False,
        [0.5, 1.0],
    )
    assert settings.changed_from_protocol() == ["scales", "flip"]
    with pytest.raises(ConfigError, match="unknown protocol 'semseg'.*semseg-cityscapes"):
        EvalConfig(protocol="semseg")
    with pytest.raises(ConfigError, match="eval.crop_size"):
        EvalConfig(mode="slide")
    # semseg's stride is a rule, 2/3 of the crop, so it follows a changed crop; a stride beyond the crop would leave gaps
    assert EvalConfig(protocol="semseg-cityscapes", crop_size=[40, 60]).window_stride == (27, 40)
    with pytest.raises(ConfigError, match="eval.stride: expected at most the crop size"):
        EvalConfig(mode="slide", crop_size=[40, 40], stride=[41, 20])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny model for the synthetic data (48x48 images)."""
    config = Config.from_dict(tiny_config_dict())
    model = create_model(config, ContextScenes("val", 1).classes)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model, config)


def test_evaluate_flags_reach_the_settings_and_reports(checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    args = [
        "--quiet",
        "evaluate",
        str(checkpoint),
        "--out",
        str(out),
        "--confusion",
        str(tmp_path / "confusion.png"),
        "--mode",
        "slide",
        "--crop-size",
        "32",
        "--stride",
        "20",
        "24",
        "--flip",
        "--scales",
        "0.75",
        "1",
        "--absent",
        "zero",
    ]
    assert main(args) == 0
    settings = json.loads(out.read_text())["eval_config"]
    assert (
        settings["mode"],
        settings["crop_size"],
        settings["stride"],
        settings["flip"],
        settings["scales"],
        settings["absent"],
    ) == ("slide", [32, 32], [20, 24], True, [0.75, 1.0], "zero")
    protocol = "sliding window 32x32 stride 20x24, scales [0.75, 1], flip"
    assert json.loads(out.read_text())["protocol"] == protocol
    printed = capsys.readouterr().out
    assert protocol in printed and "absent classes: zero" in printed
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "class,iou,acc" and len(csv_lines) == 1 + ContextScenes("val", 1).classes.num_classes
    assert (tmp_path / "confusion.png").stat().st_size > 0


def test_protocol_flag_replaces_the_stored_settings_and_flags_change_it(checkpoint, tmp_path):
    out = tmp_path / "results.json"
    args = [
        "--quiet",
        "evaluate",
        str(checkpoint),
        "--out",
        str(out),
        "--protocol",
        "semseg-cityscapes",
        "--base-size",
        "64",
        "--crop-size",
        "40",
        "--stride",
        "30",
        "--no-flip",
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["eval_config"]["mode"] == "slide" and result["eval_config"]["resize"] == "long"
    assert result["protocol"] == (
        "semseg-cityscapes (changed: crop_size, stride, base_size, flip): "
        "sliding window 40x40 stride 30x30, long side 64 x scales [1], no flip"
    )


def test_predict_flags_and_set_protocol_reach_the_settings(checkpoint, tmp_path, monkeypatch):
    seen = {}

    def fake_predict_files(loaded, inputs, out, progress, output_format, skip_existing, options, distributed):
        seen.update(settings=loaded.config.eval, output_format=output_format)
        return PredictionReport()

    monkeypatch.setattr("pspnet.jobs.predict_files.predict_files", fake_predict_files)
    args = [
        "--quiet",
        "predict",
        str(checkpoint),
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
        "--set",
        "eval.protocol=semseg-ade20k",
        "eval.base_size=96",
        "--window-batch",
        "5",
    ]
    assert main(args) == 0
    settings = seen["settings"]
    assert (
        settings.protocol,
        settings.mode,
        settings.crop_size,
        settings.base_size,
        settings.flip,
        settings.window_batch,
    ) == ("semseg-ade20k", "slide", [473, 473], 96, True, 5)
    assert seen["output_format"] == "pspnet"
