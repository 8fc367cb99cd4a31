"""Hostile and unusual files through every entry point that reads files, and runs that always resume.

The catalogue is generated at test time: decompression bombs, huge-but-small-on-disk images,
truncated, empty and text-as-PNG files, 16-bit and CMYK images, checkpoints with corrupt metadata
and a pickle that would run code. Each entry point must give its specific error (exit 2, or 1
with a per-file list for predict), never a traceback, never a partial output, and go on with the
other inputs where it can.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config_dict
from PIL import Image
from safetensors.torch import save_file

from pspnet import load_model
from pspnet.checkpoint import save_checkpoint
from pspnet.cli import main
from pspnet.config import Config
from pspnet.data.synthetic import ContextScenes
from pspnet.errors import CheckpointError, DataError
from pspnet.io.images import read_image
from pspnet.models import create_model
from pspnet.training import trainer as trainer_module

ROOT = Path(__file__).resolve().parents[1]


def png(width: int, height: int, bit_depth: int, colour_type: int, row: bytes) -> bytes:
    """A PNG of identical rows, compressed row by row (a 30000x30000 image costs no memory to make)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, parts = zlib.compressobj(9), []
    for _ in range(height):
        parts.append(compressor.compress(b"\0" + row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def sixteen_bit(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grey HxW or RGB HxWx3) of `values`, rows written big-endian as PNG wants."""
    colour_type = 0 if values.ndim == 2 else 2
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    height, width = values.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class RunsCode:
    """Unpickling this would create a marker file: the malicious-pickle case."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


GOOD = np.asarray(Image.fromarray(ContextScenes("val", 1, (40, 56)).load(0).image))
GREY16 = (np.arange(40 * 56).reshape(40, 56) * 29).astype(np.uint16)
RGB16 = np.random.default_rng(0).integers(0, 65535, (40, 56, 3)).astype(np.uint16)
BAD_IMAGES = {  # name -> what the error must say
    "bomb.png": "refused before decoding",
    "huge.png": "10000x10000 (100.0 M pixels), more than the cap",
    "truncated.png": "cannot read image",
    "empty.png": "cannot read image",
    "text.png": "not an image format",
}
CONVERTED_IMAGES = ("grey16.png", "rgb16.png", "cmyk.jpg")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "bomb.png").write_bytes(png(30000, 30000, 1, 0, bytes(3750)))  # 900 M pixels in ~100 KB
    (root / "huge.png").write_bytes(png(10000, 10000, 1, 0, bytes(1250)))  # 100 M pixels in ~12 KB
    buffer = io.BytesIO()
    Image.fromarray(GOOD).save(buffer, format="PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not a picture\n")
    (root / "grey16.png").write_bytes(sixteen_bit(GREY16))
    (root / "rgb16.png").write_bytes(sixteen_bit(RGB16))
    Image.fromarray(GOOD).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    Image.fromarray(GOOD).save(root / "good.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Config]:
    config = Config.from_dict(tiny_config_dict())
    torch.manual_seed(0)
    model = create_model(config, ContextScenes.classes)
    config = config.with_num_classes(model.config.num_classes)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", model, config), config


def test_sixteen_bit_and_cmyk_images_are_converted_not_clipped(catalogue):
    grey = read_image(catalogue / "grey16.png", 3)
    np.testing.assert_array_equal(grey[..., 0], (GREY16 >> 8).astype(np.uint8))
    assert (grey[..., 0] == 255).mean() < 0.01  # clipping would make almost every pixel 255
    np.testing.assert_array_equal(read_image(catalogue / "rgb16.png", 3), (RGB16 >> 8).astype(np.uint8))
    cmyk = read_image(catalogue / "cmyk.jpg", 3)
    assert cmyk.shape == GOOD.shape and np.abs(cmyk.astype(int) - GOOD).mean() < 8


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_bad_images_are_refused_with_a_specific_error(catalogue, name):
    with pytest.raises(DataError, match=re.escape(BAD_IMAGES[name])) as error:
        read_image(catalogue / name, 3, max_pixels=8_000_000)
    assert name in str(error.value)


def test_predict_writes_the_good_images_and_lists_the_bad_ones(catalogue, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--quiet", "predict", str(checkpoint[0]), str(catalogue), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error and "5 of 9 inputs failed" in error
    for name, message in BAD_IMAGES.items():
        line = next(line for line in error.splitlines() if name in line)
        assert message in line
        stem = Path(name).stem
        assert not list(out.rglob(f"{stem}.*")), f"partial output for {name}"
    for name in ("good.png", *CONVERTED_IMAGES):
        for folder, suffix in (("labels", ".png"), ("color", ".png"), ("overlay", ".jpg")):
            assert (out / folder / (Path(name).stem + suffix)).is_file()
    assert not list(out.rglob(".*.tmp"))


@pytest.fixture
def hostile_dataset(catalogue, tmp_path) -> Path:
    """A `folders` dataset whose train and val splits hold a bomb and a text file among good images."""
    (tmp_path / "classes.yaml").write_text("names: [a, b, c]\n")
    for split in ("train", "val"):
        for folder in ("images", "masks"):
            (tmp_path / split / folder).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(ContextScenes("val", 3, (40, 40)).load(index).image).save(
                tmp_path / split / "images" / f"good{index}.png"
            )
            Image.fromarray(np.full((40, 40), index, np.uint8)).save(tmp_path / split / "masks" / f"good{index}.png")
        for name in ("bomb.png", "text.png"):
            (tmp_path / split / "images" / name).write_bytes((catalogue / name).read_bytes())
            Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / split / "masks" / name)
    data = tiny_config_dict(max_iters=2, eval_interval=2, checkpoint_interval=2)
    data["data"].update(format="folders", root=str(tmp_path), classes_file=str(tmp_path / "classes.yaml"))
    data["model"]["num_classes"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def test_train_stops_naming_a_bomb_and_skip_bad_skips_it(hostile_dataset, capsys):
    config, run = hostile_dataset / "config.yaml", hostile_dataset / "run"
    assert main(["--quiet", "train", str(config), "--out", str(run), "--set", "data.num_workers=0"]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and ("bomb.png refused before decoding" in error or "text.png" in error)
    assert main(["--quiet", "train", str(config), "--out", str(run) + "2", "--set", "data.skip_bad=true"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_evaluate_stops_naming_a_bad_file_and_skip_bad_skips_it(hostile_dataset, capsys):
    config = Config.from_dict(yaml.safe_load((hostile_dataset / "config.yaml").read_text()))
    checkpoint = save_checkpoint(hostile_dataset / "model3.safetensors", create_model(config), config)
    args = [
        "--quiet",
        "evaluate",
        str(checkpoint),
        "--config",
        str(hostile_dataset / "config.yaml"),
        "--out",
        str(hostile_dataset / "e.json"),
    ]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and "bomb.png refused before decoding" in error
    assert main([*args, "--set", "data.skip_bad=true"]) == 0
    assert json.loads((hostile_dataset / "e.json").read_text())["inputs"]["images"] == 5


def test_data_check_reports_every_hostile_file(hostile_dataset, capsys):
    assert main(["data", "check", str(hostile_dataset / "config.yaml"), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert (
        "unreadable: image" in out
        and "bomb.png refused before decoding" in out
        and "text.png: not an image format" in out
    )
    assert "pairs checked: 3" in out


def test_a_pair_with_both_files_unreadable_names_both(tmp_path):
    from conftest import open_source

    for folder in ("images", "masks"):
        (tmp_path / "val" / folder).mkdir(parents=True)
    (tmp_path / "val/images/x.png").write_text("broken image")
    (tmp_path / "val/masks/x.png").write_text("broken mask")
    (tmp_path / "classes.yaml").write_text("names: [a, b]\n")
    with pytest.raises(DataError) as error:
        open_source("folders", tmp_path, "val", classes_file=tmp_path / "classes.yaml").load(0)
    assert "images/x.png" in str(error.value) and "masks/x.png" in str(error.value)


def corrupt_metadata(path: Path, good: Path, change) -> Path:
    """A valid safetensors file with the weights of `good` and pspnet metadata changed by `change`."""
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        header = handle.metadata()
    save_file(tensors, str(path), metadata={"format": "pspnet", "pspnet": change(header["pspnet"])})
    return path


METADATA_CASES = {
    "not_json": (lambda text: text[:-20], "not valid JSON"),
    "no_classes": (
        lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "classes"}),
        "field 'classes'",
    ),
    "mean_text": (lambda text: json.dumps({**json.loads(text), "mean": ["a", "b", "c"]}), "field 'mean'"),
}


@pytest.mark.parametrize("case", METADATA_CASES)
def test_corrupt_metadata_is_named_by_every_loader(case, checkpoint, tmp_path, capsys):
    change, message = METADATA_CASES[case]
    bad = corrupt_metadata(tmp_path / f"{case}.safetensors", checkpoint[0], change)
    with pytest.raises(CheckpointError, match=message) as error:
        load_model(bad)
    assert str(bad) in str(error.value)
    (tmp_path / "in").mkdir()
    Image.fromarray(GOOD).save(tmp_path / "in/x.png")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(init_from=str(bad))))
    for argv in (
        ["predict", str(bad), str(tmp_path / "in"), "--out", str(tmp_path / "out")],
        ["evaluate", str(bad)],
        ["train", str(config), "--out", str(tmp_path / "run")],
    ):
        assert main(["--quiet", *argv]) == 2, argv
        error_text = capsys.readouterr().err
        assert message in error_text and "Traceback" not in error_text
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_pickle_that_runs_code_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    malicious = tmp_path / "malicious.pth"
    torch.save({"state_dict": {"conv.weight": RunsCode(str(marker))}}, malicious)
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        load_model(malicious)
    from pspnet.config import ModelConfig
    from pspnet.models.encoders import build_encoder

    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        build_encoder(ModelConfig(encoder="resnet18", encoder_weights=str(malicious)))
    assert main(["convert", str(malicious), str(tmp_path / "out.safetensors")]) == 2
    assert "cannot be read as a checkpoint" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


# ---------------------------------------------------------------- runs that can always resume


def tiny(**train) -> Config:
    return Config.from_dict(tiny_config_dict(**train))


class Killed(Exception):
    """Stands for a kill -9 at the moment it is raised."""


def test_a_kill_before_the_first_save_completes_leaves_a_directory_that_restarts(tmp_path, monkeypatch, caplog):
    config, run = tiny(max_iters=4, checkpoint_interval=2, eval_interval=10), tmp_path / "run"

    def killed(self, state):
        (self.checkpoints / ".last.resume.pt.abcd1234.tmp").write_bytes(b"partial")  # what the kill leaves
        (self.checkpoints / ".tmpAbC123").write_bytes(b"partial safetensors")
        raise Killed

    monkeypatch.setattr(trainer_module.RunDirectory, "save_resume_state", killed)
    with pytest.raises(Killed):
        trainer_module.Trainer(config, run, progress=False).train()
    monkeypatch.undo()
    assert not (run / "checkpoints/last.safetensors").exists()  # the resume state is written first
    with caplog.at_level("WARNING"):
        result = trainer_module.Trainer(config, run, resume=True, progress=False).train()
    assert "starting it over from iteration 0" in caplog.text and result.iteration == 4
    assert not list((run / "checkpoints").glob(".*"))  # stale temporary files removed at the start
    reference = trainer_module.Trainer(config, tmp_path / "reference", progress=False).train()
    for key, value in load_model(reference.last_checkpoint).state_dict().items():
        torch.testing.assert_close(load_model(result.last_checkpoint).state_dict()[key], value, rtol=0, atol=0)


def test_a_kill_between_resume_state_and_weights_resumes_from_the_state(tmp_path, monkeypatch):
    config, run = tiny(max_iters=4, checkpoint_interval=2, eval_interval=10), tmp_path / "run"
    saves = []

    def second_save_killed(path, *args, **kwargs):
        if Path(path).name == "last.safetensors" and saves:
            raise Killed
        saves.append(path)
        return save_checkpoint(path, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", second_save_killed)
    with pytest.raises(Killed):
        trainer_module.Trainer(config, run, progress=False).train()
    monkeypatch.undo()
    assert torch.load(run / "checkpoints/last.resume.pt", weights_only=True)["iteration"] == 4
    result = trainer_module.Trainer(config, run, resume=True, progress=False).train()
    reference = trainer_module.Trainer(config, tmp_path / "reference", progress=False).train()
    assert result.iteration == 4
    for key, value in load_model(reference.last_checkpoint).state_dict().items():
        torch.testing.assert_close(load_model(result.last_checkpoint).state_dict()[key], value, rtol=0, atol=0)


def test_a_second_ctrl_c_during_a_save_aborts_after_it_without_a_traceback(tmp_path, monkeypatch, capsys):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config_dict(max_iters=6, checkpoint_interval=2, eval_interval=10)))
    original = trainer_module.RunDirectory.save_resume_state

    def save_interrupted_twice(self, state):
        os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: stop after this iteration
        os.kill(os.getpid(), signal.SIGINT)  # second, while saving: abort once the save is complete
        time.sleep(0.05)
        original(self, state)

    monkeypatch.setattr(trainer_module.RunDirectory, "save_resume_state", save_interrupted_twice)
    monkeypatch.setattr(trainer_module, "SIGNAL_REPEAT_S", 0.0)  # a human's second Ctrl-C, not the launcher's copy
    assert main(["--quiet", "train", str(config_path), "--out", str(tmp_path / "run")]) == 130
    error = capsys.readouterr().err
    assert "error: interrupted" in error and "Traceback" not in error
    state = torch.load(tmp_path / "run/checkpoints/last.resume.pt", weights_only=True)
    assert state["iteration"] == 2 and load_model(tmp_path / "run/checkpoints/last.safetensors") is not None
    monkeypatch.undo()
    assert main(["--quiet", "train", "--resume", str(tmp_path / "run")]) == 0


def test_ctrl_c_to_the_process_group_warns_once_with_loader_workers(tmp_path):
    config = tmp_path / "c.yaml"
    data = tiny_config_dict(max_iters=100000, checkpoint_interval=100000, eval_interval=100000)
    data["data"]["num_workers"] = 2
    config.write_text(yaml.safe_dump(data))
    process = subprocess.Popen(
        [sys.executable, "-m", "pspnet", "--quiet", "train", str(config), "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    log_file = tmp_path / "run/train_log.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log_file.exists() or len(log_file.read_text().splitlines()) < 3):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.count("stop requested") == 1 and "Traceback" not in err
    assert "continue with: pspnet train --resume" in out


def test_predict_redoes_interrupted_images_and_skips_complete_ones(catalogue, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        (inputs / name).write_bytes((catalogue / "good.png").read_bytes())
    assert main(["--quiet", "predict", str(checkpoint[0]), str(inputs), "--out", str(out)]) == 0
    (out / "overlay/b.jpg").unlink()  # b was interrupted before its overlay
    (out / "labels/.a.png.abcd1234.tmp").write_bytes(b"partial")
    before = (out / "labels/a.png").stat().st_mtime_ns
    assert main(["--quiet", "predict", str(checkpoint[0]), str(inputs), "--out", str(out), "--skip-existing"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 prediction" in printed and "skipped 1 input(s)" in printed
    assert (out / "overlay/b.jpg").is_file() and (out / "labels/a.png").stat().st_mtime_ns == before
    assert not (out / "labels/.a.png.abcd1234.tmp").exists()
