"""What a new user meets first: outputs that never collide, errors instead of tracebacks, resumable runs."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import yaml
from conftest import save_tiny_checkpoint, tiny_config_dict
from PIL import Image

from pspnet.cli import main
from pspnet.cli.main import build_parser
from pspnet.data.synthetic import ContextScenes
from pspnet.system.progress import progress_bar
from pspnet.training import trainer as trainer_module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.safetensors")


def scene(index: int = 0, size=(40, 56)) -> Image.Image:
    return Image.fromarray(ContextScenes("val", index + 1, size).load(index).image)


def write_config(path, **train):
    path.write_text(yaml.safe_dump(tiny_config_dict(**train)))
    return path


def test_predict_outputs_never_collide(checkpoint, tmp_path, capsys):
    for folder, name in (("a", "x.png"), ("b", "x.png"), ("c", "x.png"), ("c", "x.jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        scene(len(list(tmp_path.rglob("*.*")))).save(tmp_path / folder / name)
    inputs = [str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), str(tmp_path / "c")]
    assert main(["--quiet", "predict", str(checkpoint), *inputs, "--out", str(tmp_path / "out")]) == 0
    labels = sorted(p.relative_to(tmp_path / "out/labels").as_posix() for p in (tmp_path / "out/labels").rglob("*.png"))
    assert labels == ["a/x.png", "b/x.png", "c/x.jpg.png", "c/x.png.png"]
    assert "wrote 4 predictions" in capsys.readouterr().out


def test_predict_messages_count_and_name_files_once(checkpoint, tmp_path, capsys):
    scene().save(tmp_path / "one.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["--quiet", "predict", str(checkpoint), str(tmp_path / "one.png"), "--out", str(tmp_path / "o")]) == 0
    assert "wrote 1 prediction to" in capsys.readouterr().out
    assert (
        main(["--quiet", "predict", str(checkpoint), str(tmp_path / "notes.txt"), "--out", str(tmp_path / "none")]) == 1
    )
    captured = capsys.readouterr()
    assert "no predictions written" in captured.out and not (tmp_path / "none").exists()
    failure = [line for line in captured.err.splitlines() if line.startswith("failed:")][0]
    assert failure.count("notes.txt") == 1 and "not an image format" in failure


def test_unknown_split_names_the_splits(checkpoint, capsys):
    assert main(["--quiet", "evaluate", str(checkpoint), "--split", "banana"]) == 2
    assert "unknown split 'banana', expected one of train, val" in capsys.readouterr().err


def test_interrupted_run_exits_143_and_its_hint_resumes_it(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path / "tiny.yaml", max_iters=4, eval_interval=10, checkpoint_interval=10)
    original = trainer_module.Trainer._step

    def step_then_sigterm(self, batch):
        losses = original(self, batch)
        if self.iteration == 1:  # the signal arrives during iteration 2
            os.kill(os.getpid(), signal.SIGTERM)
        return losses

    monkeypatch.setattr(trainer_module.Trainer, "_step", step_then_sigterm)
    run = tmp_path / "run"
    assert main(["--quiet", "train", str(config), "--out", str(run), "--set", "train.seed=3"]) == 143
    hint = capsys.readouterr().out.split("continue with: ")[1].split()
    assert hint == ["pspnet", "train", "--resume", str(run)]
    monkeypatch.setattr(trainer_module.Trainer, "_step", original)
    assert main(["--quiet", *hint[1:]]) == 0  # the hint works: the run's own config, --set included
    rows = list(csv.DictReader(open(run / "train_log.csv")))
    assert [int(row["iteration"]) for row in rows] == [1, 2, 3, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 3


def test_a_finished_run_can_be_extended(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", max_iters=4, eval_interval=10, checkpoint_interval=2)
    run = tmp_path / "run"
    assert main(["--quiet", "train", str(config), "--out", str(run)]) == 0
    assert main(["--quiet", "train", "--resume", str(run), "--set", "train.max_iters=6"]) == 0
    rows = {int(row["iteration"]): float(row["lr"]) for row in csv.DictReader(open(run / "train_log.csv"))}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    # the poly schedule with the new max_iters, from iteration 4 on: lr(4) = 0.01 * (1 - 4/6)^0.9
    assert rows[5] == pytest.approx(0.01 * (1 - 4 / 6) ** 0.9, rel=1e-6)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_iters"] == 6
    assert main(["--quiet", "train", "--resume", str(run), "--set", "train.max_iters=3"]) == 2
    assert "below iteration 6" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "--set", "train.device=tpu"],
        ["train", "CONFIG", "--set", "train.device=tpu"],
        ["evaluate", "CHECKPOINT", "--device", "tpu"],
        ["predict", "CHECKPOINT", "x.png", "--out", "o", "--device", "tpu"],
    ],
)
def test_unknown_devices_are_refused_up_front(argv, checkpoint, tmp_path, capsys):
    argv = [
        str(write_config(tmp_path / "c.yaml")) if a == "CONFIG" else str(checkpoint) if a == "CHECKPOINT" else a
        for a in argv
    ]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage error
        code = exc.code
    assert code == 2
    error = capsys.readouterr().err
    assert "'tpu'" in error and "auto, cpu, cuda or cuda:N" in error and "Traceback" not in error


def test_preview_of_an_empty_split_is_an_error(tmp_path, capsys):
    (tmp_path / "val/images").mkdir(parents=True)
    (tmp_path / "val/masks").mkdir()
    (tmp_path / "classes.yaml").write_text("names: [a, b]\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data": {"format": "folders", "root": str(tmp_path), "classes_file": str(tmp_path / "classes.yaml")}}
        )
    )
    assert main(["data", "preview", str(config), "--split", "val", "--out", str(tmp_path / "p.png")]) == 2
    assert "has no samples to preview" in capsys.readouterr().err


def test_a_protocol_that_blows_up_tiny_images_warns_with_its_cost(checkpoint, monkeypatch, caplog):
    from pspnet.jobs import evaluation as evaluator

    class Stop(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(evaluator, "evaluate", refuse)  # the warning is what is tested, not 10 minutes of windows
    with caplog.at_level("WARNING"), pytest.raises(Stop):
        main(["--quiet", "evaluate", str(checkpoint), "--protocol", "semseg-cityscapes"])
    message = caplog.text
    assert "enlarges these 48x48 images 42.7x, to 2048x2048" in message
    assert "32 forward passes per image" in message and "min for 4 images" in message  # 4x4 windows, flipped


def test_version_and_fast_help():
    result = subprocess.run([sys.executable, "-m", "pspnet", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().startswith("pspnet ")
    probe = (
        "import sys, pspnet.cli.main; print(sorted(m for m in ('torch', 'timm', 'tensorboard') if m in sys.modules))"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()
    assert imported == "[]"  # the parser (and so --help and argument errors) needs none of the heavy libraries


def test_a_run_that_cannot_start_leaves_no_directory(tmp_path, capsys):
    (tmp_path / "train/images").mkdir(parents=True)
    (tmp_path / "train/masks").mkdir()
    (tmp_path / "train/images/a.png").write_bytes(b"broken")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "train/masks/a.png")
    (tmp_path / "classes.yaml").write_text("names: [a, b]\n")
    data = tiny_config_dict()
    data["data"].update(
        format="folders", root=str(tmp_path), classes_file=str(tmp_path / "classes.yaml"), val_split="train"
    )
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["--quiet", "train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "a.png" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_synthetic_data_check_from_the_cli(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml")
    assert main(["data", "check", str(config)]) == 0
    assert "OK: no problems found" in capsys.readouterr().out


def test_messages_suggest_our_names_and_evaluate_takes_a_run_directory(tmp_path, capsys):
    assert main(["config", "--set", "model.encoder=resnet51"]) == 0  # not built by `config`
    assert main(["models", "--info", "resnet51"]) == 2
    error = capsys.readouterr().err
    assert "did you mean resnet50" in error and "resnet51q" not in error
    config = write_config(tmp_path / "c.yaml", max_iters=2, eval_interval=2, checkpoint_interval=2)
    assert main(["--quiet", "train", str(config), "--out", str(tmp_path / "run")]) == 0
    assert main(["--quiet", "evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["inputs"] == {
        "checkpoint": str(tmp_path / "run/checkpoints/best.safetensors"),
        "format": "pspnet",
        "backend": "torch",
        "dataset": "synthetic",
        "root": None,
        "split": "val",
        "images": 4,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert result["eval_config"]["mode"] == "whole"


def test_folders_missing_split_names_the_split_folder(tmp_path):
    from conftest import open_source

    from pspnet.errors import DataError

    (tmp_path / "classes.yaml").write_text("names: [a, b]\n")
    with pytest.raises(DataError, match=f"split 'val' not found: neither {tmp_path / 'val'} nor a flat"):
        open_source("folders", tmp_path, "val", classes_file=tmp_path / "classes.yaml")


def test_every_option_has_help_and_config_keys_explain_themselves(capsys):
    def walk(parser: argparse.ArgumentParser, name: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif not isinstance(action, argparse._HelpAction):
                yield name, action

    undocumented = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, action in walk(build_parser(), "pspnet")
        if not action.help
    ]
    assert undocumented == []
    assert main(["config", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(line for line in lines if line.startswith("model.dropout "))
    assert line.split()[1:3] == ["float", "0.1"] and "Dropout2d" in line
    assert all(len(line.split()) >= 4 for line in lines)  # key, type, default and a description on every line


def test_progress_is_a_line_every_tenth_without_a_terminal(capsys):
    with progress_bar(95, "work", True, unit="img") as bar:
        for _ in range(95):
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("work: 100% 95/95 img")


def test_model_predict_takes_pil_images_batches_and_floats(checkpoint):
    from pspnet import load_model

    model = load_model(checkpoint)
    image = scene()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        label = model.predict(image)
    array = np.asarray(image)
    batch = np.stack([array, array[::-1].copy()])
    labels = model.predict(batch)
    assert labels.shape == (2, 40, 56)
    np.testing.assert_array_equal(labels[0], label)
    np.testing.assert_array_equal(labels[1], model.predict(array[::-1].copy()))
    np.testing.assert_array_equal(model.predict(array.astype(np.float32) / 255), label)
    with pytest.raises(ValueError, match=r"float image arrays must hold values in \[0, 1\]"):
        model.predict(array.astype(np.float32))
