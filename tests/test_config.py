"""Typed config: YAML loading, --set overrides, specific errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pspnet.config import Config, load_config
from pspnet.errors import ConfigError
from pspnet.models.pspnet import complexity


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_paper():
    cfg = Config()
    assert cfg.model.encoder == "resnet50_deepstem" and cfg.model.output_stride == 8
    assert cfg.model.bins == [1, 2, 3, 6] and cfg.model.dropout == 0.1 and cfg.model.decoder_channels == 512
    assert (cfg.train.base_lr, cfg.train.lr_power, cfg.train.momentum, cfg.train.weight_decay) == (0.01, 0.9, 0.9, 1e-4)
    assert cfg.train.aux_weight == 0.4 and cfg.train.head_lr_mult == 10
    assert cfg.data.augment.scale == [0.5, 2.0] and cfg.data.augment.rotate == 10


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "model:\n  dropout: 0.2\ntrain:\n  max_iters: 10\n")
    cfg = load_config(
        path,
        [
            "model.bins=[1, 2, 4, 8]",
            "train.base_lr=0.02",
            "model.encoder_weights=null",
            "model.encoder_kwargs.drop_path_rate=0.1",
            "eval.flip=true",
        ],
    )
    assert cfg.model.dropout == 0.2 and cfg.train.max_iters == 10
    assert cfg.model.bins == [1, 2, 4, 8] and cfg.train.base_lr == 0.02 and cfg.eval.flip is True
    assert cfg.model.encoder_kwargs == {"drop_path_rate": 0.1}
    assert Config.from_dict(cfg.to_dict()) == cfg  # round trip


def test_int_is_accepted_for_float():
    assert load_config(None, ["model.dropout=0"]).model.dropout == 0.0


def test_unknown_key_lists_close_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model.dropuot'; did you mean model.dropout"):
        load_config(None, ["model.dropuot=0.2"])
    path = write(tmp_path, "train:\n  max_iter: 5\n")
    with pytest.raises(
        ConfigError, match=r"cfg.yaml: unknown config key 'train.max_iter'; did you mean train.max_iters"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown config key 'modle.dropout'; did you mean model.dropout"):
        load_config(None, ["modle.dropout=1"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_iters=abc", r"train.max_iters: expected int, got 'abc' \(str\)"),
        ("train.max_iters=2.5", r"train.max_iters: expected int, got 2.5"),
        ("model.use_ppm=maybe", r"model.use_ppm: expected bool"),
        ("model.bins=[1, x]", r"model.bins\[1\]: expected int"),
        ("model.aux=both2", r"model.aux: expected one of 'seg', 'none'"),
        ("model.dropout=1.5", r"model.dropout: expected a probability in \[0, 1\], got 1.5"),
        ("train.batch_size=1", r"train.batch_size: expected an int >= 2"),
        ("model.output_stride=12", r"model.output_stride: expected one of"),
    ],
)
def test_wrong_values_are_specific(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(None, ["model.dropout"])


def _leaves(data: dict, prefix: str = "") -> dict:
    """Dotted key -> value of every leaf of a nested dict (free-form dicts kept whole)."""
    leaves = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("encoder_kwargs", "options"):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


SHIPPED = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_keep_every_value_and_build_their_model(path):
    config = load_config(path)
    written = _leaves(yaml.safe_load(path.read_text()))
    loaded = _leaves(config.to_dict())
    assert {key: loaded[key] for key in written} == written  # no value dropped, renamed or defaulted
    model = dataclasses.replace(config.model, num_classes=5)
    info = complexity(model, tuple(config.data.augment.crop_size))  # on the meta device: no weights needed
    expected_stride = 4 if model.encoder == "lite" else 32 if model.encoder.startswith("swin") else 8
    assert info["output_stride"] == expected_stride and info["total"] > 0 and info["flops"] > 0


@pytest.mark.parametrize("name,crop", [("pspnet_r50_cityscapes", 713), ("pspnet_r101_ade20k", 473)])
def test_paper_configs_follow_the_paper(name, crop):
    config = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    model, train, augment = config.model, config.train, config.data.augment
    assert (model.output_stride, model.bins, model.dropout, model.decoder_channels, model.aux) == (
        8,
        [1, 2, 3, 6],
        0.1,
        512,
        "seg",
    )
    assert (train.base_lr, train.lr_power, train.momentum, train.weight_decay, train.aux_weight, train.batch_size) == (
        0.01,
        0.9,
        0.9,
        1e-4,
        0.4,
        16,
    )
    assert (augment.scale, augment.rotate, augment.flip, augment.crop_size) == ([0.5, 2.0], 10, True, [crop, crop])
