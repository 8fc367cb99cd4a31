"""Prediction outputs that explain themselves: legend.png and classes.json, confidence maps, full
probabilities and the overlay weight, under predict's guarantees (complete outputs, --skip-existing)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config_dict
from PIL import Image

from pspnet.checkpoint import load_model, save_checkpoint
from pspnet.cli import main
from pspnet.config import Config
from pspnet.data.palettes import load_classes_file
from pspnet.data.synthetic import ContextScenes
from pspnet.inference.predict import predict_probabilities
from pspnet.models import create_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = Config.from_dict(tiny_config_dict())
    source = ContextScenes("val", 1)
    return save_checkpoint(
        tmp_path_factory.mktemp("outputs") / "model.safetensors", create_model(config, source.classes).eval(), config
    )


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    source = ContextScenes("val", 2, (40, 56))
    for index in range(2):
        Image.fromarray(source.load(index).image).save(folder / f"scene{index}.png")
    return folder


def test_legend_and_classes_file_explain_the_labels(checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["--quiet", "predict", str(checkpoint), str(photos), "--out", str(out)]) == 0
    classes, ignore = load_classes_file(out / "classes.json")  # a valid data.classes_file
    assert classes == load_model(checkpoint).card.classes and ignore == 255
    legend = np.asarray(Image.open(out / "legend.png").convert("RGB")).reshape(-1, 3)
    for colour in classes.palette:
        assert np.all(legend == colour, axis=1).sum() >= 100  # every class's swatch is there


def test_confidence_maps_and_probabilities(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--quiet", "predict", str(checkpoint), str(photos), "--out", str(out)]) == 0
    assert not (out / "confidence").exists()
    # a re-run asking for probabilities redoes the images: their outputs are no longer complete
    assert (
        main(
            [
                "--quiet",
                "predict",
                str(checkpoint),
                str(photos),
                "--out",
                str(out),
                "--probabilities",
                "full",
                "--skip-existing",
            ]
        )
        == 0
    )
    assert "wrote 2 predictions" in capsys.readouterr().out
    model = load_model(checkpoint)
    for name in ("scene0", "scene1"):
        image = np.array(Image.open(photos / f"{name}.png"))
        expected = predict_probabilities(model, image)
        probabilities = np.load(out / "probabilities" / f"{name}.npy")
        assert probabilities.dtype == np.float16 and probabilities.shape == (11, 40, 56)
        np.testing.assert_allclose(probabilities, expected, atol=1e-3)
        confidence = Image.open(out / "confidence" / f"{name}.png")
        assert confidence.mode == "L"
        np.testing.assert_array_equal(np.asarray(confidence), np.rint(expected.max(0) * 255).astype(np.uint8))
        np.testing.assert_array_equal(np.array(Image.open(out / "labels" / f"{name}.png")), expected.argmax(0))
    assert (
        main(
            [
                "--quiet",
                "predict",
                str(checkpoint),
                str(photos),
                "--out",
                str(out),
                "--probabilities",
                "full",
                "--skip-existing",
            ]
        )
        == 0
    )
    assert "skipped 2 input(s)" in capsys.readouterr().out


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_overlay_alpha(checkpoint, photos, tmp_path, alpha):
    out = tmp_path / "out"
    assert (
        main(
            [
                "--quiet",
                "predict",
                str(checkpoint),
                str(photos / "scene0.png"),
                "--out",
                str(out),
                "--overlay-alpha",
                str(alpha),
            ]
        )
        == 0
    )
    blended = Image.open(out / "color" / "scene0.png") if alpha else Image.open(photos / "scene0.png")
    jpeg = io.BytesIO()
    blended.convert("RGB").save(jpeg, format="JPEG", quality=90)  # as predict writes overlays
    np.testing.assert_array_equal(np.asarray(Image.open(out / "overlay" / "scene0.jpg")), np.asarray(Image.open(jpeg)))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--overlay-alpha", "1.5"], "the overlay alpha must be in [0, 1], got 1.5"),
        (["--video-crf", "60"], "the video crf must be in 0..51, got 60"),
        (["--format", "cityscapes", "--probabilities", "confidence"], "cityscapes output format"),
    ],
)
def test_bad_output_options_are_one_line_errors(checkpoint, photos, tmp_path, capsys, flags, message):
    assert main(["predict", str(checkpoint), str(photos), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and not (tmp_path / "out").exists()
