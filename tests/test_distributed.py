"""Training, evaluation and prediction on several processes (torchrun, gloo on the CPU), and synchronized BatchNorm.

The runs are tiny (48x48 scenes, a ResNet-18-shaped model with 8-64 channels, dropout 0) so that
1 and 2 processes can be compared weight by weight.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import tiny_config_dict
from safetensors.torch import load_file
from torch import nn

from pspnet.cli import main
from pspnet.training.sync_bn import SyncBatchNorm

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(
    *args: str, nproc: int = 2, extra: list[str] | None = None, timeout: int = TIMEOUT
) -> subprocess.CompletedProcess:
    launcher = extra or ["--standalone", "--nproc-per-node", str(nproc)]
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "pspnet", "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def write_config(path: Path, **train) -> Path:
    data = tiny_config_dict(**{"max_iters": 4, "batch_size": 4, "eval_interval": 4, "checkpoint_interval": 2, **train})
    data["model"]["dropout"] = 0.0
    path.write_text(yaml.safe_dump(data))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints/last.safetensors"))


def largest_difference(a: dict, b: dict, running_stats: bool) -> float:
    keys = [k for k in a if ("running" in k) == running_stats and a[k].is_floating_point()]
    return max((a[k] - b[k]).abs().max().item() for k in keys)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same config trained on 1 process, on 2 with SyncBN (via `pspnet train --nproc-per-node 2`) and on 2 without."""
    root = tmp_path_factory.mktemp("runs")
    config = write_config(root / "tiny.yaml")
    assert main(["--quiet", "train", str(config), "--out", str(root / "one")]) == 0
    shortcut = [
        sys.executable,
        "-m",
        "pspnet",
        "--quiet",
        "train",
        str(config),
        "--out",
        str(root / "two"),
        "--nproc-per-node",
        "2",
    ]
    result = subprocess.run(shortcut, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert result.returncode == 0, result.stderr
    result = torchrun("train", str(config), "--out", str(root / "two-no-sync"), "--set", "train.sync_bn=false")
    assert result.returncode == 0, result.stderr
    return {"config": config, "one": root / "one", "two": root / "two", "two-no-sync": root / "two-no-sync"}


def test_two_processes_with_sync_bn_train_the_same_weights_as_one(runs):
    one, two = weights(runs["one"]), weights(runs["two"])
    assert largest_difference(one, two, running_stats=False) < 1e-5
    assert largest_difference(one, two, running_stats=True) < 1e-5
    # the global batch was split: each process saw 2 of the 4 images per step, and rank 0 alone wrote files
    log_one = (runs["one"] / "train_log.csv").read_text().splitlines()
    log_two = (runs["two"] / "train_log.csv").read_text().splitlines()
    assert len(log_one) == len(log_two) == 5
    for row_one, row_two in zip(log_one[1:], log_two[1:]):  # the logged loss is the whole batch's
        assert float(row_one.split(",")[1]) == pytest.approx(float(row_two.split(",")[1]), rel=1e-5)


def test_without_sync_bn_the_batch_statistics_are_each_process_s_own(runs):
    one, unsynced = weights(runs["one"]), weights(runs["two-no-sync"])
    # BatchNorm normalised each half batch with its own statistics: the running statistics differ, and the
    # weights with them (the forward pass differed)
    assert largest_difference(one, unsynced, running_stats=True) > 1e-3
    assert largest_difference(one, unsynced, running_stats=False) > 1e-5


def _sync_bn_worker(rank: int, world: int, init_file: str, sizes: list[int], results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(sum(sizes), 4, 5, 6) * 3 + 1
    grad = torch.randn_like(x)
    start = sum(sizes[:rank])
    local = slice(start, start + sizes[rank])
    synced = SyncBatchNorm(4)
    reference = nn.BatchNorm2d(4)
    with torch.no_grad():
        synced.weight.copy_(torch.rand(4) + 0.5)
        synced.bias.copy_(torch.randn(4))
        reference.load_state_dict(synced.state_dict())
    part = x[local].clone().requires_grad_(True)
    (synced(part) * grad[local]).sum().backward()
    whole = x.clone().requires_grad_(True)
    (reference(whole) * grad).sum().backward()
    weight_grad, bias_grad = synced.weight.grad.clone(), synced.bias.grad.clone()
    dist.all_reduce(weight_grad)  # each process holds its share of the parameter gradients
    dist.all_reduce(bias_grad)
    output = synced(part.detach()) if False else None  # noqa: F841  (one forward only: running stats compared below)
    with torch.no_grad():
        synced_out = SyncBatchNorm.forward(synced.eval(), part.detach())
        reference_out = reference.eval()(x[local])
    results.put(
        (
            rank,
            {
                "eval_output": (synced_out - reference_out).abs().max().item(),
                "input_grad": (part.grad - whole.grad[local]).abs().max().item(),
                "weight_grad": (weight_grad - reference.weight.grad).abs().max().item(),
                "bias_grad": (bias_grad - reference.bias.grad).abs().max().item(),
                "running_mean": (synced.running_mean - reference.running_mean).abs().max().item(),
                "running_var": (synced.running_var - reference.running_var).abs().max().item(),
            },
        )
    )
    dist.destroy_process_group()


def test_our_sync_bn_equals_batchnorm_on_the_whole_batch_with_uneven_shares():
    results = mp.get_context("spawn").SimpleQueue()
    init_file = tempfile.mktemp(prefix="pspnet-syncbn-")
    mp.spawn(_sync_bn_worker, args=(2, init_file, [3, 5], results), nprocs=2)
    reports = [results.get() for _ in range(2)]
    for rank, errors in reports:
        assert all(value < 1e-5 for value in errors.values()), (rank, errors)


def test_training_output_of_a_sync_bn_matches_batchnorm_in_train_mode():
    """The training-mode output (normalised with the whole batch's statistics), in one process: no communication."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    synced, reference = SyncBatchNorm(3), nn.BatchNorm2d(3)
    torch.testing.assert_close(synced(x), reference(x))
    torch.testing.assert_close(synced.running_var, reference.running_var)


def torchrun_command(run: Path, config: Path, *launcher: str) -> list[str]:
    """`pspnet --quiet train CONFIG --out RUN` under torchrun with the `launcher` arguments."""
    command = ["-m", "pspnet", "--quiet", "train", str(config), "--out", str(run)]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, *command]


def test_two_nodes_on_localhost_train_like_one_process(runs, tmp_path):
    port = free_port()
    out = tmp_path / "nodes"
    launches = []
    for node in range(2):
        launcher = [
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(node),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "pspnet-test",
        ]
        command = torchrun_command(out, runs["config"], *launcher)
        launches.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV))
    for launch in launches:
        _, err = launch.communicate(timeout=TIMEOUT)
        assert launch.returncode == 0, err
    one = weights(runs["one"])
    assert largest_difference(one, weights(out), running_stats=False) < 1e-5


def test_distributed_evaluation_and_prediction_equal_one_process(runs, tmp_path):
    checkpoint = runs["one"] / "checkpoints/last.safetensors"
    assert main(["--quiet", "evaluate", str(checkpoint), "--out", str(tmp_path / "one.json")]) == 0
    result = torchrun("evaluate", str(checkpoint), "--out", str(tmp_path / "two.json"))
    assert result.returncode == 0, result.stderr
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["per_class"] == two["per_class"] and one["miou"] == two["miou"]  # exactly: summed pixel counts
    inputs = tmp_path / "images"
    inputs.mkdir()
    from PIL import Image

    from pspnet.data.synthetic import ContextScenes

    for index in range(5):
        Image.fromarray(ContextScenes("val", 5, (40, 48)).load(index).image).save(inputs / f"{index}.png")
    assert main(["--quiet", "predict", str(checkpoint), str(inputs), "--out", str(tmp_path / "pred-one")]) == 0
    result = torchrun("predict", str(checkpoint), str(inputs), "--out", str(tmp_path / "pred-two"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote 5 predictions") == 1  # rank 0 reports for the job
    for index in range(5):
        a = Image.open(tmp_path / "pred-one/labels" / f"{index}.png")
        b = Image.open(tmp_path / "pred-two/labels" / f"{index}.png")
        assert (np.asarray(a) == np.asarray(b)).all()


def test_a_rank_that_fails_on_bad_data_stops_the_job_with_its_error(tmp_path):
    import numpy as np
    from PIL import Image

    for folder in ("images", "masks"):
        (tmp_path / "data/train" / folder).mkdir(parents=True)
    for index in range(4):
        Image.fromarray(np.full((40, 40, 3), 60 * index, np.uint8)).save(tmp_path / f"data/train/images/{index}.png")
        Image.fromarray(np.full((40, 40), index % 2, np.uint8)).save(tmp_path / f"data/train/masks/{index}.png")
    (tmp_path / "data/train/images/3.png").write_text("broken")
    (tmp_path / "classes.yaml").write_text("names: [a, b]\n")
    config = tiny_config_dict(max_iters=20, batch_size=4, checkpoint_interval=100, eval_interval=100)
    config["data"].update(
        format="folders",
        root=str(tmp_path / "data"),
        classes_file=str(tmp_path / "classes.yaml"),
        val_split="train",
        augment={"scale": None, "rotate": 0, "blur": 0, "flip": False, "crop_size": [40, 40]},
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    start = time.monotonic()
    result = torchrun("train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode != 0 and time.monotonic() - start < TIMEOUT
    # rank 0 reports rank 1's error; both stop with exit status 2 (torchrun then reports the failed workers)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: rank 1: cannot read image") and "3.png" in errors[0]
    assert "exitcode  : 2" in result.stderr and 'File "' + str(ROOT / "src") not in result.stderr


def test_a_killed_job_resumes_on_two_processes_to_the_same_weights(runs, tmp_path):
    config = write_config(tmp_path / "long.yaml", max_iters=8, eval_interval=100)
    reference = torchrun("train", str(config), "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "pspnet",
        "--quiet",
        "train",
        str(config),
        "--out",
        str(run),
    ]
    job = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True
    )
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not (run / "checkpoints/last.resume.pt").exists():
        time.sleep(0.1)
    os.killpg(job.pid, signal.SIGKILL)  # kill -9 of the whole job: launcher and workers
    job.wait(timeout=60)
    resumed = torchrun("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert largest_difference(weights(tmp_path / "reference"), weights(run), running_stats=False) == 0
    assert largest_difference(weights(tmp_path / "reference"), weights(run), running_stats=True) == 0
