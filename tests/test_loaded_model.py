"""One loaded-model record for every command, and preprocessing from the model card only.

The checkpoint here was trained with a normalisation other than ImageNet's, so any path that normalised
with a dataset config's values (or the defaults) instead of the card's would give other label maps.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config_dict
from fastapi.testclient import TestClient
from PIL import Image

from pspnet.checkpoint import LoadedModel, open_model
from pspnet.cli import main
from pspnet.config import Config, load_config, with_inference_settings
from pspnet.data.sources import build_source
from pspnet.data.synthetic import ContextScenes
from pspnet.errors import CheckpointError, ConfigError
from pspnet.inference.predict import image_to_tensor
from pspnet.inference.protocol import Inferencer
from pspnet.io.images import read_image
from pspnet.jobs.evaluation import split_dataset

MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.4, 0.3]
"""The checkpoint's own normalisation: not ImageNet's."""


def config_dict(**data) -> dict:
    config = tiny_config_dict()
    config["data"].update(data)
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained briefly on images normalised with MEAN/STD (so that normalisation matters)."""
    folder = tmp_path_factory.mktemp("model")
    config = config_dict(mean=MEAN, std=STD)
    config["train"].update(max_iters=100, eval_interval=100, checkpoint_interval=100, base_lr=0.05)
    config["data"]["augment"].update(scale=None, rotate=0, blur=0)
    (folder / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["--quiet", "train", str(folder / "train.yaml"), "--out", str(folder / "run")]) == 0
    return folder / "run" / "checkpoints" / "best.safetensors"


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> Path:
    """The first val scene of the checkpoint's dataset, as a PNG file."""
    source = build_source(Config.from_dict(config_dict()).data, "val")
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(read_image(source.load(0).image, 3)).save(path)
    return path


def evaluate(checkpoint: Path, out: Path, *extra: str) -> dict:
    assert main(["--quiet", "evaluate", str(checkpoint), "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_open_model_is_one_record_of_the_file(checkpoint):
    loaded = open_model(checkpoint)
    assert isinstance(loaded, LoadedModel)
    assert (loaded.format, loaded.backend, loaded.path) == ("pspnet", "torch", checkpoint)
    assert loaded.card is loaded.model.card and list(loaded.card.mean) == MEAN and list(loaded.card.std) == STD
    assert loaded.config.data.mean == MEAN and loaded.iteration == 100 and loaded.device == torch.device("cpu")
    bf16 = open_model(checkpoint, backend="torch-bf16")
    assert bf16.backend == "torch-bf16" and bf16.card == loaded.card


def test_a_pt2_program_is_recognised_and_refused(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from pspnet.deploy.export import export_model

    out = export_model(checkpoint, tmp_path / "m.pt2", "pt2", size=(32, 32)).path
    with pytest.raises(CheckpointError, match=r"m\.pt2 is a torch.export program \(.pt2\).*unpickles"):
        open_model(out)


def test_evaluate_normalises_with_the_card_whatever_the_dataset_config(checkpoint, tmp_path):
    own = evaluate(checkpoint, tmp_path / "own.json")
    other_config = config_dict()  # the same data, no mean/std: the defaults must not be used
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other_config))
    other = evaluate(checkpoint, tmp_path / "other.json", "--config", str(tmp_path / "other.yaml"))
    assert other["inputs"]["mean"] == MEAN and other["inputs"]["std"] == STD
    assert other["miou"] == own["miou"] and other["per_class"] == own["per_class"]


def test_a_config_with_another_normalisation_is_an_error_naming_both(checkpoint, tmp_path, capsys):
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(config_dict(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])))
    out = tmp_path / "e.json"
    argv = ["evaluate", str(checkpoint), "--config", str(tmp_path / "other.yaml"), "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "data.mean [0.5, 0.5, 0.5] and data.std [0.25, 0.25, 0.25]" in error
    assert f"mean {MEAN} and std {STD}" in error and "--normalization config" in error
    assert not out.exists()
    # deliberately: the config's values replace the card's, and the result says which were used
    result = evaluate(checkpoint, out, "--config", str(tmp_path / "other.yaml"), "--normalization", "config")
    assert result["inputs"]["mean"] == [0.5, 0.5, 0.5] and result["inputs"]["std"] == [0.25, 0.25, 0.25]
    # and this is what the check prevents: the same model, wrongly normalised, scores far lower
    assert result["miou"] < evaluate(checkpoint, tmp_path / "own.json")["miou"] - 0.05
    # `--set` goes through the same check: predict and serve cannot run on other values by accident
    argv = ["predict", str(checkpoint), str(tmp_path), "--out", str(tmp_path / "p"), "--set", "data.mean=[0.1,0.1,0.1]"]
    assert main(argv) == 2 and "data.mean [0.1, 0.1, 0.1]" in capsys.readouterr().err


def test_a_dataset_with_other_class_names_is_an_error(checkpoint, tmp_path):
    classes = tmp_path / "classes.yaml"
    names = list(ContextScenes.classes.names)
    classes.write_text(yaml.safe_dump({"names": [names[1], names[0], *names[2:]]}))
    loaded = open_model(checkpoint)
    data = dataclasses.replace(loaded.config.data, format="folders", root=str(tmp_path), classes_file=str(classes))
    for folder in ("images", "masks"):
        (tmp_path / "val" / folder).mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "val" / "images" / "a.png")
    Image.new("L", (40, 40)).save(tmp_path / "val" / "masks" / "a.png")
    with pytest.raises(ConfigError, match=f"class 0 is '{names[0]}' in the checkpoint but '{names[1]}' in the dataset"):
        split_dataset(loaded.with_config(dataclasses.replace(loaded.config, data=data)), "val")


def test_every_path_gives_the_same_label_map(checkpoint, scene_png, tmp_path):
    """evaluate's dataset route, predict, serve and an exported ONNX file agree on one image, whatever dataset
    config accompanies the call."""
    pytest.importorskip("onnxruntime")
    loaded = open_model(checkpoint)
    image = np.array(Image.open(scene_png).convert("RGB"))
    expected = loaded.predict(image)
    tensor = image_to_tensor(image, MEAN, STD)[None]
    # evaluate: the dataset of a config without mean/std normalises with the card
    other = Config.from_dict(config_dict())
    dataset = split_dataset(loaded.with_config(other), "val")
    torch.testing.assert_close(dataset[0]["image"][None], tensor)
    labels = Inferencer(loaded.model, loaded.config.eval).labels(dataset[0]["image"][None])[0].numpy()
    np.testing.assert_array_equal(labels, expected)
    # predict
    assert main(["--quiet", "predict", str(checkpoint), str(scene_png), "--out", str(tmp_path / "p")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p" / "labels" / "scene.png")), expected)
    # serve
    from pspnet.serve.app import create_app

    with TestClient(create_app(loaded)) as client:
        answer = client.post("/v1/segment", content=scene_png.read_bytes(), headers={"content-type": "image/png"})
    label_png = Image.open(io.BytesIO(base64.b64decode(answer.json()["label_png"])))
    np.testing.assert_array_equal(np.asarray(label_png), expected)
    # export: the ONNX file carries the card, so it normalises the same way
    assert main(["export", str(checkpoint), str(tmp_path / "m.onnx"), "--size", "48", "48"]) == 0
    exported = open_model(tmp_path / "m.onnx")
    assert exported.card == loaded.card and (exported.format, exported.backend) == ("onnx", "onnxruntime")
    assert (exported.predict(image) == expected).mean() >= 0.999  # fp32 graph: relative L2 about 1e-7


def test_inference_settings_apply_preset_then_settings_then_overrides():
    base = load_config()
    config = with_inference_settings(
        base,
        {"protocol": "semseg-ade20k", "crop_size": 64, "flip": None},
        ["eval.window_batch=3", "eval.stride=[32, 32]"],
    )
    assert (config.eval.protocol, config.eval.mode, config.eval.crop_size, config.eval.flip) == (
        "semseg-ade20k",
        "slide",
        [64, 64],
        True,
    )
    assert config.eval.stride == [32, 32] and config.eval.window_batch == 3
    assert config.eval.base_size == 512  # from the preset
    # a preset named in the overrides applies at its place, replacing what came before
    later = with_inference_settings(base, {"crop_size": [64, 64], "mode": "slide"}, ["eval.protocol=mmseg-whole"])
    assert (later.eval.mode, later.eval.crop_size) == ("whole", None)
    with pytest.raises(ConfigError, match="unknown inference settings \\['crop'\\]"):
        with_inference_settings(base, {"crop": 3})
