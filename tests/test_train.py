"""Training: poly LR, overfitting, checkpoints, exact resume."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config_dict

from pspnet import load_model
from pspnet.checkpoint import open_model, save_checkpoint
from pspnet.config import Config
from pspnet.data.loaders import TrainStream
from pspnet.errors import CheckpointError, ConfigError, DataError
from pspnet.io.weights import read_state_dict
from pspnet.models import create_model
from pspnet.training.trainer import Trainer, build_optimizer


def test_poly_lr_matches_formula_with_10x_head(tiny_config):
    model = create_model(tiny_config.replace(["model.num_classes=3", "train.max_iters=20"]))
    optimizer, scheduler = build_optimizer(model, tiny_config.replace(["train.max_iters=20"]))
    encoder_group, head_group = optimizer.param_groups
    for iteration in range(20):
        expected = 0.01 * (1 - iteration / 20) ** 0.9
        assert encoder_group["lr"] == pytest.approx(expected, rel=1e-12)
        assert head_group["lr"] == pytest.approx(10 * expected, rel=1e-12)
        optimizer.step()
        scheduler.step()
    assert encoder_group["lr"] == 0.0
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 1e-4


def test_train_stream_resumes_mid_epoch():
    full = TrainStream(10, 3, seed=7)
    batches = [b for b, _ in zip(full, range(9))]
    resumed = TrainStream(10, 3, seed=7, start_iter=4)
    assert [b for b, _ in zip(resumed, range(5))] == batches[4:]
    first_epoch = [index for batch in batches for index, _ in batch][:10]
    assert sorted(first_epoch) == list(range(10))  # each epoch is a permutation


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_overfits_a_tiny_batch(tmp_path):
    cfg = Config.from_dict(tiny_config_dict(max_iters=60, eval_interval=60, checkpoint_interval=60, log_interval=5))
    cfg = cfg.replace(
        [
            "data.synthetic.num_train=2",
            "data.synthetic.num_val=2",
            "data.augment.scale=null",
            "data.augment.rotate=0",
            "data.augment.blur=0",
            "data.augment.flip=false",
            "data.augment.crop_size=[48, 48]",
            "train.base_lr=0.02",
            "model.dropout=0",
        ]
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.val_set.source = trainer.train_set.source  # evaluate on the very images it trains on
    before = trainer.validate().miou
    trainer.train()
    losses = np.loadtxt(tmp_path / "run" / "train_log.csv", delimiter=",", skiprows=1, usecols=1)
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.best_miou > before + 0.2


def test_resume_after_crash_reproduces_uninterrupted_run(tmp_path):
    cfg = Config.from_dict(tiny_config_dict(max_iters=6, eval_interval=3, checkpoint_interval=2))
    straight = Trainer(cfg, tmp_path / "straight", progress=False)
    straight.train()

    crashing = Trainer(cfg, tmp_path / "crashed", progress=False)

    def crash(trainer, iteration):
        if iteration == 3:  # one iteration past the checkpoint at 2: its work is lost, as in a kill
            raise RuntimeError("simulated crash")

    crashing.callbacks.append(crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.train()
    assert open_model(tmp_path / "crashed" / "checkpoints" / "last.safetensors").iteration == 2

    resumed = Trainer(cfg, tmp_path / "crashed", resume=True, progress=False)
    assert resumed.iteration == 2
    resumed.train()
    expected, actual = _weights(straight.model), _weights(resumed.model)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    iterations = np.loadtxt(tmp_path / "crashed" / "train_log.csv", delimiter=",", skiprows=1, usecols=0)
    assert iterations.tolist() == [1, 2, 3, 4, 5, 6]  # the lost iteration 3 is logged once


def test_stop_request_saves_and_resumes(tmp_path):
    cfg = Config.from_dict(tiny_config_dict(max_iters=4, eval_interval=4, checkpoint_interval=4))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.callbacks.append(lambda t, it: t.request_stop() if it == 1 else None)
    result = trainer.train()
    assert result.stopped_early and result.iteration == 1
    resumed = Trainer(cfg, tmp_path / "run", resume=True, progress=False)
    assert resumed.iteration == 1
    assert resumed.train().iteration == 4


def test_resume_rejects_changed_config_and_existing_run(tmp_path):
    cfg = Config.from_dict(tiny_config_dict(max_iters=2))
    Trainer(cfg, tmp_path / "run", progress=False).train()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="differs from the run's .* in model.dropout"):
        Trainer(cfg.replace(["model.dropout=0.3"]), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="holds no run"):
        Trainer(cfg, tmp_path / "empty", resume=True, progress=False)


def test_checkpoint_write_is_atomic(tmp_path, tiny_model_options, monkeypatch):
    cfg = Config.from_dict(tiny_config_dict()).replace(["model.num_classes=3"])
    model = create_model(cfg)
    path = save_checkpoint(tmp_path / "model.safetensors", model, cfg)
    original = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("pspnet.checkpoint.native.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, cfg)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_save_load_predict_is_bit_identical(tmp_path):
    cfg = Config.from_dict(tiny_config_dict()).replace(["model.num_classes=4"])
    model = create_model(cfg).eval()
    for module in model.modules():  # non-default BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
    path = save_checkpoint(tmp_path / "m.safetensors", model, cfg, iteration=5)
    loaded = load_model(path)
    assert not loaded.training
    x = torch.randn(2, 3, 45, 51)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    image = np.random.default_rng(1).integers(0, 255, (45, 51, 3), dtype=np.uint8)
    np.testing.assert_array_equal(model.predict(image), loaded.predict(image))
    assert read_state_dict(path).keys() == model.state_dict().keys()


def test_bad_checkpoints_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "missing.safetensors")
    cfg = Config.from_dict(tiny_config_dict()).replace(["model.num_classes=3"])
    path = save_checkpoint(tmp_path / "m.safetensors", create_model(cfg), cfg)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: cannot be read as a checkpoint"):
        load_model(garbage)


def test_init_from_starts_with_the_given_weights(tmp_path):
    cfg = Config.from_dict(tiny_config_dict(max_iters=1, eval_interval=1, checkpoint_interval=1))
    source = create_model(cfg.replace(["model.num_classes=11"]))
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(2, 3)
    path = save_checkpoint(tmp_path / "pretrained.safetensors", source, cfg)
    trainer = Trainer(cfg.replace([f"train.init_from={path}"]), tmp_path / "run", progress=False)
    for key, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="wrong shape"):
        Trainer(
            cfg.replace([f"train.init_from={path}", "model.decoder_channels=24"]), tmp_path / "run2", progress=False
        )


class _BadAfter:
    """Wraps a source so that sample `bad_index` fails like an unreadable file."""

    def __init__(self, source, bad_index):
        self.source, self.bad_index, self.classes = source, bad_index, source.classes

    def __len__(self):
        return len(self.source)

    def load(self, index):
        if index == self.bad_index:
            raise DataError(f"cannot read image /data/images/{index:05d}.png: broken PNG")
        return self.source.load(index)


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_file_stops_run_naming_it_and_keeps_checkpoints(tmp_path, workers):
    cfg = Config.from_dict(tiny_config_dict(max_iters=40, eval_interval=40, checkpoint_interval=1))
    cfg = cfg.replace([f"data.num_workers={workers}", "data.synthetic.num_train=6"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    good_iterations = []
    trainer.callbacks.append(lambda t, it: good_iterations.append(it))
    first_batch = next(iter(TrainStream(6, 2, cfg.train.seed)))
    bad_index = next(i for i in range(6) if i not in {index for index, _ in first_batch})  # not in batch 1
    trainer.train_set.source = _BadAfter(trainer.train_set.source, bad_index)
    with pytest.raises(DataError) as error:
        trainer.train()
    assert str(error.value) == f"cannot read image /data/images/{bad_index:05d}.png: broken PNG"  # no worker traceback
    assert good_iterations and good_iterations[-1] < 40
    saved = open_model(tmp_path / "run" / "checkpoints" / "last.safetensors").metadata
    assert saved["iteration"] == good_iterations[-1]  # the last good checkpoint, intact


def test_skip_bad_logs_and_continues(tmp_path, caplog):
    cfg = Config.from_dict(tiny_config_dict(max_iters=4, eval_interval=4, checkpoint_interval=4))
    trainer = Trainer(
        cfg.replace(["data.skip_bad=true", "data.synthetic.num_train=4"]), tmp_path / "run", progress=False
    )
    trainer.train_set.source = _BadAfter(trainer.train_set.source, 3)
    with caplog.at_level("WARNING"):
        result = trainer.train()
    assert result.iteration == 4
    # 4 iterations of batch 2 over 4 samples: the bad one is met twice, reported once, then counted
    warnings = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert warnings == ["skipping bad sample (data.skip_bad): cannot read image /data/images/00003.png: broken PNG"]
    assert result.skipped.count == 2 and list(result.skipped.messages.values()) == [2]
    assert "skipped 2 bad sample(s) from 1 file(s)" in caplog.text


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    cfg = Config.from_dict(tiny_config_dict(max_iters=3, eval_interval=3, checkpoint_interval=3))
    first = Trainer(cfg, tmp_path / "a", progress=False)
    first.train()
    second = Trainer(cfg, tmp_path / "b", progress=False)
    second.train()
    other = Trainer(cfg.replace(["train.seed=1"]), tmp_path / "c", progress=False)
    other.train()
    a, b, c = (_weights(t.model) for t in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bf16_autocast_and_channels_last_train_on_the_cpu(tmp_path):
    cfg = Config.from_dict(tiny_config_dict(max_iters=2, eval_interval=2, checkpoint_interval=2))
    trainer = Trainer(cfg.replace(["train.amp=bf16", "train.channels_last=true"]), tmp_path / "run", progress=False)
    seen = []
    forward = trainer.model.forward

    def recording(x):
        seen.append(
            (
                x.is_contiguous(memory_format=torch.channels_last),
                torch.is_autocast_enabled("cpu"),
                torch.get_autocast_dtype("cpu"),
            )
        )
        return forward(x)

    trainer.model.forward = recording
    result = trainer.train()
    assert seen[0] == (True, True, torch.bfloat16)
    rows = list(csv.DictReader(open(tmp_path / "run/train_log.csv")))
    assert all(math.isfinite(float(row["loss"])) for row in rows)
    loaded = load_model(result.last_checkpoint)  # an fp32, contiguous model like any other
    assert next(loaded.parameters()).dtype == torch.float32


def test_amp_settings_are_checked_and_old_booleans_still_load(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Trainer(
            Config.from_dict(tiny_config_dict()).replace(["train.amp=fp16", "train.device=cpu"]),
            tmp_path / "r",
            progress=False,
        )
    assert Config.from_dict({"train": {"amp": True}}).train.amp == "bf16"
    assert Config.from_dict({"train": {"amp": False}}).train.amp == "none"
    with pytest.raises(ConfigError, match="'none' \\| 'bf16' \\| 'fp16' \\| 'auto' \\| bool"):
        Config.from_dict({"train": {"amp": "fp8"}})


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_bf16_only_where_the_cpu_computes_in_it(tmp_path, monkeypatch, native):
    """`auto` must not pick bf16 on a CPU that only emulates it (slower than fp32); the step then runs in it."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    trainer = Trainer(
        Config.from_dict(tiny_config_dict()).replace(["train.amp=auto", "train.device=cpu", "train.max_iters=1"]),
        tmp_path / "run",
        progress=False,
    )
    assert trainer.amp == ("bf16" if native else "none")
    seen = []
    trainer.model.decode_head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    trainer.train()
    assert seen[0] == (torch.bfloat16 if native else torch.float32)


def test_the_loop_reports_where_its_time_went(tmp_path):
    result = Trainer(Config.from_dict(tiny_config_dict(max_iters=2)), tmp_path / "run", progress=False).train()
    assert set(result.timings) == {"data", "step", "logging", "validation", "checkpoints"}
    assert all(seconds >= 0 for seconds in result.timings.values()) and result.timings["step"] > 0
    shares = result.time_shares()
    assert shares.startswith(max(result.timings, key=result.timings.get)) and shares.count("%") == 5


def test_loader_workers_follow_the_cores_and_the_device():
    from pspnet.data.loaders import default_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [default_workers(cpu, cores) for cores in (1, 2, 4, 8, 64)] == [0, 0, 1, 2, 4]
    assert [default_workers(cuda, cores) for cores in (1, 2, 4, 16)] == [1, 1, 3, 8]
