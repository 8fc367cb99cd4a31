"""The presets: shipped in the package, one copy (the repository's configs/ is a link), addressable by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pspnet.cli import main
from pspnet.config import Config, load_config
from pspnet.errors import ConfigError
from pspnet.presets import list_presets, preset_path, presets_folder

ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_configs_are_the_packaged_presets():
    assert (ROOT / "configs").resolve() == presets_folder().resolve()
    names = [name for name, _ in list_presets()]
    assert {"synthetic", "pspnet_r50_cityscapes", "pspnet_r101_ade20k", "lite_synthetic"} <= set(names)
    assert all(description for _, description in list_presets())
    for name in names:  # every preset builds
        load_config(name)


def test_a_name_is_a_preset_and_a_path_is_a_file(tmp_path, monkeypatch):
    assert load_config("synthetic") == load_config(ROOT / "configs" / "synthetic.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic").write_text("train: {max_iters: 7}\n")  # a file of that name wins
    assert load_config("synthetic").train.max_iters == 7
    with pytest.raises(ConfigError, match=r"did you mean pspnet_r50_cityscapes\?.*pspnet config --presets"):
        load_config("pspnet_r50_cityscape")
    with pytest.raises(ConfigError, match=r"config file not found: configs/synthetic.yaml \(the preset of that name"):
        load_config("configs/synthetic.yaml")
    assert preset_path("synthetic").name == "synthetic.yaml"


def test_config_presets_and_a_preset_printed_to_edit(capsys, tmp_path):
    assert main(["config", "--presets"]) == 0
    listing = capsys.readouterr().out
    assert "synthetic" in listing and "The demo" in listing
    assert main(["config", "pspnet_r101_ade20k"]) == 0
    text = capsys.readouterr().out
    assert text == preset_path("pspnet_r101_ade20k").read_text()  # comments included: a file to edit
    (tmp_path / "mine.yaml").write_text(text)
    assert load_config(tmp_path / "mine.yaml") == load_config("pspnet_r101_ade20k")
    assert main(["config", "synthetic", "--set", "train.max_iters=5"]) == 0
    assert Config.from_dict(yaml.safe_load(capsys.readouterr().out)).train.max_iters == 5
    assert main(["data", "check", "nosuchpreset"]) == 2
