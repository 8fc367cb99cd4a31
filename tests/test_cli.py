"""The `pspnet` command end to end on tiny data, and its error reporting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config_dict
from PIL import Image

from pspnet.cli import main
from pspnet.data.synthetic import ContextScenes


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run trained through the CLI (shared by the tests below)."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(max_iters=3, eval_interval=3, checkpoint_interval=3)))
    assert main(["--quiet", "train", str(config), "--out", str(root / "run"), "--set", "train.seed=1"]) == 0
    return root, config


def test_train_writes_run_directory(trained_run):
    root, _ = trained_run
    run = root / "run"
    for name in (
        "config.yaml",
        "train_log.csv",
        "val_log.csv",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
        "checkpoints/last.resume.pt",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").iterdir())
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1


def test_evaluate_prints_table_and_writes_json(trained_run, capsys):
    root, _ = trained_run
    out = root / "eval.json"
    assert main(["--quiet", "evaluate", str(root / "run/checkpoints/last.safetensors"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("sky", "boat", "pillow", "mIoU"):
        assert name in printed
    result = json.loads(out.read_text())
    assert set(result["per_class"]) == set(ContextScenes("val", 1).classes.names)
    assert 0 <= result["miou"] <= 1 and "whole image" in result["protocol"]


def test_predict_writes_outputs_and_reports_failures(trained_run, tmp_path, capsys):
    root, _ = trained_run
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    source = ContextScenes("val", 2, (40, 56))
    Image.fromarray(source.load(0).image).save(inputs / "a.png")
    Image.fromarray(source.load(1).image).save(inputs / "sub" / "b.jpg")
    (inputs / "broken.png").write_bytes(b"not an image")
    code = main(
        [
            "--quiet",
            "predict",
            str(root / "run/checkpoints/last.safetensors"),
            str(inputs),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "broken.png" in capsys.readouterr().err
    label = Image.open(tmp_path / "out/labels/a.png")
    assert label.mode == "P" and label.size == (56, 40)
    assert np.asarray(label).max() < 11
    assert (tmp_path / "out/labels/sub/b.png").is_file()
    assert Image.open(tmp_path / "out/color/a.png").mode == "RGB"
    assert Image.open(tmp_path / "out/overlay/sub/b.jpg").size == (56, 40)
    assert not (tmp_path / "out/labels/broken.png").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["evaluate", "missing.safetensors"], "checkpoint not found: missing.safetensors"),
        (["train", "missing.yaml"], "config file not found: missing.yaml"),
        (["config", "--set", "model.dropuot=0.1"], "did you mean model.dropout"),
        (["config", "--set", "train.max_iters=many"], "train.max_iters: expected int, got 'many'"),
        (["predict", "missing.safetensors", "x.png", "--out", "o"], "checkpoint not found"),
    ],
)
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_truncated_checkpoint_is_reported(trained_run, tmp_path, capsys):
    root, _ = trained_run
    data = (root / "run/checkpoints/last.safetensors").read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) // 3])
    assert main(["evaluate", str(truncated)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_predict_missing_input_is_reported(trained_run, tmp_path, capsys):
    root, _ = trained_run
    assert (
        main(
            [
                "predict",
                str(root / "run/checkpoints/last.safetensors"),
                str(tmp_path / "nope.png"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "image not found" in capsys.readouterr().err


def test_data_preview(trained_run, tmp_path):
    _, config = trained_run
    out = tmp_path / "grid.png"
    assert main(["data", "preview", str(config), "--out", str(out), "--count", "4"]) == 0
    assert Image.open(out).width > 4 * 40


@pytest.mark.parametrize("channels,mode", [(1, "L"), (4, "RGBA")])
def test_predict_serves_models_of_any_input_channel_count(tmp_path, channels, mode):
    """`pspnet predict` and `model.predict` take one route: a grey (or RGBA) file gives the same labels."""
    from pspnet.checkpoint import save_checkpoint
    from pspnet.config import Config
    from pspnet.models import create_model

    data = tiny_config_dict()
    data["model"]["in_channels"] = channels
    data["data"].update(mean=[0.5] * channels, std=[0.25] * channels)
    config = Config.from_dict({**data, "model": {**data["model"], "num_classes": 3}})
    torch.manual_seed(0)
    model = create_model(config).eval()
    checkpoint = save_checkpoint(tmp_path / "model.safetensors", model, config)
    pixels = np.random.default_rng(0).integers(0, 255, (33, 41, channels), dtype=np.uint8)
    image_path = tmp_path / "in" / "photo.png"
    image_path.parent.mkdir()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(image_path)
    assert main(["--quiet", "predict", str(checkpoint), str(image_path), "--out", str(tmp_path / "out")]) == 0
    written = np.array(Image.open(tmp_path / "out" / "labels" / "photo.png"))
    np.testing.assert_array_equal(written, model.predict(image_path))
    np.testing.assert_array_equal(written, model.predict(pixels))
    assert Image.open(tmp_path / "out" / "overlay" / "photo.jpg").size == (41, 33)
