"""Experiment tracking against a real MLflow (a SQLite store in tmp_path), and `pspnet runs`."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import save_tiny_checkpoint, tiny_config_dict

from pspnet.cli import main
from pspnet.config import Config
from pspnet.errors import ConfigError
from pspnet.training.run_dir import RunDirectory
from pspnet.training.run_index import CHECKPOINTS, CONFIG, RUN_INFO, TRAIN_LOG, VAL_LOG, flatten_config
from pspnet.training.tracking import RECORD, log_evaluation, param_values, tracked_metrics
from pspnet.training.trainer import Trainer

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
FAILED = "MLflow tracking at"


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store as MLFLOW_TRACKING_URI (no MLFLOW_EXPERIMENT_NAME)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri


def environment() -> dict[str, str]:
    """This process's environment (with the test's MLflow settings) for a `pspnet` subprocess."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def write_config(path: Path, **train) -> Path:
    data = tiny_config_dict(**{"loggers": ["csv", "mlflow"], **train})
    path.write_text(yaml.safe_dump(data))
    return path


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_id(run: Path) -> str:
    return json.loads((run / RECORD).read_text())["run_id"]


def assert_history_matches_csv(client: MlflowClient, mlflow_run: str, run: Path) -> None:
    """Every CSV column's MLflow history: one value per logged iteration, no step twice, the CSV's values."""
    for kind, log in (("train", run / "train_log.csv"), ("val", run / "val_log.csv")):
        rows = csv_rows(log)
        for column in rows[0]:
            if column == "iteration":
                continue
            (key,) = tracked_metrics(kind, {column: 0.0})
            history = sorted(client.get_metric_history(mlflow_run, key), key=lambda m: m.step)
            steps = [m.step for m in history]
            assert steps == [int(row["iteration"]) for row in rows], key
            for metric, row in zip(history, rows):
                assert metric.value == pytest.approx(float(row[column]), rel=1e-6, nan_ok=True), (key, metric.step)


def test_loggers_are_checked():
    assert Config().train.loggers == ["csv", "tensorboard"]
    with pytest.raises(ConfigError, match="train.loggers: expected names among csv, tensorboard, mlflow"):
        Config.from_dict({"train": {"loggers": ["csv", "wandb"]}})
    with pytest.raises(ConfigError, match="csv \\(always on"):
        Config.from_dict({"train": {"loggers": ["mlflow"]}})


def test_metric_and_param_names():
    assert tracked_metrics("train", {"iteration": 3, "loss": 1.5, "lr": 0.01}) == {"train/loss": 1.5, "train/lr": 0.01}
    val = tracked_metrics("val", {"miou": 0.5, "macc": 0.6, "aacc": 0.7, "IoU/traffic light": 0.1, "IoU/a/b (c)": 0})
    assert list(val) == ["val/mIoU", "val/mAcc", "val/aAcc", "val/IoU/traffic light", "val/IoU/a_b _c_"]
    config = Config.from_dict(tiny_config_dict(init_from="x" * 7000))
    params = param_values(config)
    assert set(params) == set(flatten_config(config.to_dict()))
    assert params["model.encoder"] == "resnet18_deepstem" and params["train.base_lr"] == "0.01"
    assert params["model.encoder_kwargs.channels"] == "[8, 16, 32, 64]" and params["model.num_classes"] == "null"
    assert params["train.loggers"] == '["csv", "tensorboard"]' and len(params["train.init_from"]) == 6000


def test_a_training_is_logged_to_mlflow(store, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", mlflow_log_checkpoint=True)
    run = tmp_path / "runs" / "first"
    assert main(["--quiet", "train", str(config), "--out", str(run)]) == 0
    assert not (run / "tensorboard").exists()  # not among the loggers
    client = MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert experiment.name == "tiny"  # the config file's name
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_id == run_id(run) and logged.info.run_name == "first"
    assert logged.info.status == "FINISHED"
    resolved = Config.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert logged.data.params == param_values(resolved)
    tags = logged.data.tags
    assert tags["pspnet.version"] and tags["pspnet.command"].startswith("pspnet --quiet train")
    assert tags["pspnet.hardware.device"] == "cpu" and "pspnet.hardware.cpu" in tags
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.getcwd())
    if commit.returncode == 0:
        assert tags["mlflow.source.git.commit"] == commit.stdout.strip()
    assert_history_matches_csv(client, logged.info.run_id, run)
    val = csv_rows(run / "val_log.csv")
    history = client.get_metric_history(logged.info.run_id, "val/mIoU")
    assert len(history) == len(val) == 2 and history[-1].value == pytest.approx(float(val[-1]["miou"]))
    assert any(key.startswith("val/IoU/") for key in logged.data.metrics)
    files = {item.path for item in client.list_artifacts(logged.info.run_id)}
    assert {"config.yaml", "curves.png", "report.html", "checkpoints"} <= files
    assert [item.path for item in client.list_artifacts(logged.info.run_id, "checkpoints")] == [
        "checkpoints/best.safetensors"
    ]
    # `pspnet evaluate --mlflow` logs to the checkpoint's own MLflow run, at the checkpoint's iteration
    results = tmp_path / "eval.json"
    checkpoint = run / "checkpoints" / "last.safetensors"
    assert main(["--quiet", "evaluate", str(checkpoint), "--mlflow", "--out", str(results)]) == 0
    evaluated = json.loads(results.read_text())
    (miou,) = client.get_metric_history(logged.info.run_id, "eval/val/mIoU")
    assert miou.value == pytest.approx(evaluated["miou"]) and miou.step == 4
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_evaluations_are_logged_to_the_checkpoint_s_run_or_a_run_of_their_own(store, tmp_path):
    run = tmp_path / "run"
    Trainer(Config.from_dict(tiny_config_dict(max_iters=2, loggers=["csv", "mlflow"])), run, progress=False).train()
    metrics = {
        "miou": 0.5,
        "macc": 0.6,
        "aacc": 0.7,
        "protocol": "whole image",
        "per_class": {"sky": {"iou": 0.25, "acc": None}, "road": {"iou": 0.75, "acc": 0.8}},
    }
    client = MlflowClient(store)
    assert log_evaluation(run / "checkpoints/last.safetensors", metrics, ["sky", "road"], iteration=2) == run_id(run)
    logged = client.get_run(run_id(run))
    assert logged.data.metrics["eval/val/mIoU"] == 0.5 and logged.data.metrics["eval/val/IoU/road"] == 0.75
    assert "eval/val/Acc/sky" not in logged.data.metrics and logged.data.tags["eval/val/protocol"] == "whole image"
    assert client.get_metric_history(run_id(run), "eval/val/aAcc")[0].step == 2
    loose = save_tiny_checkpoint(tmp_path / "loose.safetensors")
    first = log_evaluation(loose, metrics, ["sky", "road"], split="test")
    assert first not in (None, run_id(run))
    assert log_evaluation(loose, metrics, ["sky", "road"], split="test") == first  # found by its SHA-256
    tags = client.get_run(first).data.tags
    assert tags["pspnet.checkpoint"] == str(loose.resolve()) and len(tags["pspnet.checkpoint_sha256"]) == 64


def test_a_killed_run_resumes_into_the_same_mlflow_run(store, tmp_path):
    config = write_config(tmp_path / "long.yaml", max_iters=40, eval_interval=10, checkpoint_interval=10)
    run = tmp_path / "runs" / "long"
    client = MlflowClient(store)
    client.search_experiments()  # creates the store's tables, so that the training connects at once
    command = [sys.executable, "-m", "pspnet", "--quiet", "train", str(config), "--out", str(run)]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
    deadline = time.monotonic() + TIMEOUT
    # kill -9 once MLflow has values and the CSV logs have rows past the last checkpoint
    while time.monotonic() < deadline and job.poll() is None:
        rows = csv_rows(run / "train_log.csv") if (run / "train_log.csv").is_file() else []
        last = int(rows[-1]["iteration"]) if rows else 0
        tracked = run_id(run) if (run / RECORD).is_file() else None
        history = client.get_metric_history(tracked, "train/loss") if tracked else []
        if history and last % 10:
            job.kill()
            break
        time.sleep(0.05)
    assert job.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    first, last = run_id(run), int(csv_rows(run / "train_log.csv")[-1]["iteration"])
    sent = [m.step for m in client.get_metric_history(first, "train/loss")]
    assert len(sent) == len(set(sent)) and max(sent) % 10 == 0 and max(sent) <= last  # checkpointed values only
    assert client.get_run(first).info.status == "RUNNING"  # a kill -9 could not say otherwise
    assert main(["--quiet", "train", "--resume", str(run)]) == 0
    assert run_id(run) == first
    (experiment,) = [e for e in client.search_experiments() if e.name == "long"]
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [first]
    assert client.get_run(first).info.status == "FINISHED"
    assert_history_matches_csv(client, first, run)
    assert int(csv_rows(run / "train_log.csv")[-1]["iteration"]) == 40


def test_an_unreachable_server_warns_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    config = Config.from_dict(tiny_config_dict(loggers=["csv", "mlflow"], max_iters=6, checkpoint_interval=2))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        result = Trainer(config, tmp_path / "run", progress=False).train()
    assert time.monotonic() - start < 60
    assert result.iteration == 6 and not result.stopped_early
    assert sum(FAILED in r.message for r in caplog.records) == 1
    assert any("did not get" in r.message for r in caplog.records)
    assert [int(row["iteration"]) for row in csv_rows(tmp_path / "run/train_log.csv")] == [1, 2, 3, 4, 5, 6]
    assert len(csv_rows(tmp_path / "run/val_log.csv")) == 3
    record = json.loads((tmp_path / "run" / RECORD).read_text())  # where a --resume makes the MLflow run
    assert record == {"tracking_uri": "http://127.0.0.1:1", "experiment": "pspnet", "run_id": None}


def test_values_held_while_the_store_fails_are_sent_when_it_recovers(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    trainer = Trainer(Config.from_dict(tiny_config_dict(loggers=["csv", "mlflow"])), tmp_path / "run", progress=False)
    trainer.callbacks.append(lambda t, iteration: iteration == 3 and blocker.unlink())
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert sum(FAILED in r.message for r in caplog.records) == 1
    assert not any("did not get" in r.message for r in caplog.records)
    assert_history_matches_csv(MlflowClient(uri), run_id(tmp_path / "run"), tmp_path / "run")


def test_two_processes_make_one_mlflow_run(store, tmp_path):
    config = write_config(tmp_path / "two.yaml", batch_size=4, max_iters=4, eval_interval=2)
    run = tmp_path / "runs" / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "pspnet", "--quiet", "train", str(config), "--out", str(run)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=environment())
    assert result.returncode == 0, result.stderr
    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (logged,) = client.search_runs(experiments)
    assert logged.info.run_id == run_id(run) and logged.info.status == "FINISHED"
    assert_history_matches_csv(client, logged.info.run_id, run)


def test_runs_lists_and_compares_run_directories(tmp_path, capsys):
    root = tmp_path / "runs"
    settings = {"loggers": ["csv"], "max_iters": 2, "eval_interval": 2, "checkpoint_interval": 2}
    Trainer(Config.from_dict(tiny_config_dict(**settings)), root / "base", progress=False).train()
    faster = Config.from_dict(tiny_config_dict(**{**settings, "base_lr": 0.05}))
    Trainer(faster, root / "lr" / "high", progress=False).train()
    stopped = Trainer(Config.from_dict(tiny_config_dict(**{**settings, "max_iters": 4})), root / "stop", progress=False)
    stopped.callbacks.append(lambda trainer, iteration: trainer.request_stop())
    stopped.train()
    (root / "notes").mkdir()  # not a run

    assert main(["runs", str(root), "--sort", "mIoU"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "encoder", "iterations", "best", "mIoU", "wall", "time", "ended"]
    table = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(table) == {"base", "lr/high", "stop"}
    assert table["base"][1:3] == ["resnet18_deepstem", "2/2"] and table["base"][-1] == "finished"
    assert table["stop"][2] == "1/4" and table["stop"][-1] == "interrupted"
    best = [float(line.split()[3]) for line in lines[1:] if line.split()[3] != "-"]
    assert best == sorted(best, reverse=True)

    assert main(["runs", str(root), "--diff", "base", "lr/high", str(root / "stop")]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = [line.split()[0] for line in lines[1 : lines.index("")]]
    assert keys == ["train.base_lr", "train.max_iters"]
    assert lines[1].split() == ["train.base_lr", "0.01", "0.05", "0.01"]
    metrics = ["iterations", "best mIoU", "last mIoU", "last mAcc", "last aAcc", "wall time", "ended"]
    assert [line[: len(name)] for line, name in zip(lines[lines.index("") + 1 :], metrics)] == metrics

    assert main(["runs", str(root), "--diff", "base"]) == 2
    assert "two or more" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "missing")]) == 2


def test_runs_reads_the_files_a_run_directory_writes(tmp_path):
    run = RunDirectory(tmp_path)
    assert [run.config_path, run.run_info, run.train_log, run.val_log, run.checkpoints] == [
        tmp_path / name for name in (CONFIG, RUN_INFO, TRAIN_LOG, VAL_LOG, CHECKPOINTS)
    ]


def test_runs_starts_without_torch(tmp_path):
    code = "import sys; from pspnet.cli import main; main(['runs', sys.argv[1]]); assert 'torch' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=environment()
    )
    assert result.returncode == 0, result.stderr
    assert "no run directories" in result.stdout
