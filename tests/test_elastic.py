"""Elastic training: a worker lost (kill -9) or hung (SIGSTOP) under torchrun, restarts that resume the run,
and a world size that changes between restarts. Tiny runs on gloo over 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import ENV, free_port, largest_difference, torchrun_command, weights, write_config

from pspnet.errors import ConfigError
from pspnet.system.distributed import Distributed, split_batch

DIST_TIMEOUT = 5
ELASTIC_ENV = {**ENV, "PSPNET_DIST_TIMEOUT": str(DIST_TIMEOUT)}
BOUND = DIST_TIMEOUT + 15
"""Seconds within which every other process stops after one is lost: the collective timeout, three
heartbeats, and slack for two busy cores."""
WAIT = 240


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ELASTIC_ENV, start_new_session=True
    )


def wait_for_checkpoint(run: Path, job: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT
    while not (run / "checkpoints/last.resume.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)


def workers(launcher: int) -> dict[int, int]:
    """The pids of a launcher's worker processes, by RANK."""
    found = {}
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(item[5:] for item in environ if item.startswith(b"RANK="))
        found[int(rank)] = int(pid)
    return found


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its launcher does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_stopped(pids: list[int], seconds: float) -> float:
    """Seconds until every process of `pids` ended; fails after `seconds`."""
    start = time.monotonic()
    while any(running(pid) for pid in pids):
        assert time.monotonic() - start < seconds, f"still running after {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def finish(job: subprocess.Popen) -> str:
    try:
        return job.communicate(timeout=WAIT)[0]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run on 2 processes."""
    root = tmp_path_factory.mktemp("elastic")
    config = write_config(root / "tiny.yaml", max_iters=16, eval_interval=100, checkpoint_interval=4)
    job = start(torchrun_command(root / "reference", config, "--standalone", "--nproc-per-node", "2"))
    output = finish(job)
    assert job.returncode == 0, output
    return {"config": config, "run": root / "reference"}


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(reference, tmp_path):
    run = tmp_path / "run"
    launcher = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    job = start(torchrun_command(run, reference["config"], *launcher))
    wait_for_checkpoint(run, job)
    os.kill(workers(job.pid)[1], signal.SIGKILL)
    output = finish(job)
    assert job.returncode == 0, output
    assert "error: rank 0: rank 1 was lost" in output and "torchrun restarts the workers" in output
    assert "resuming" in output  # the restarted workers continued the run instead of refusing its directory
    for running_stats in (False, True):
        assert largest_difference(weights(reference["run"]), weights(run), running_stats) < 1e-6


def test_without_restarts_every_other_process_stops_and_names_the_lost_rank(tmp_path):
    config = write_config(tmp_path / "three.yaml", max_iters=40, batch_size=6, eval_interval=100)
    run = tmp_path / "run"
    job = start(
        [sys.executable, "-m", "pspnet", "--quiet", "train", str(config), "--out", str(run), "--nproc-per-node", "3"]
    )
    wait_for_checkpoint(run, job)
    pids = workers(job.pid)
    os.kill(pids[1], signal.SIGKILL)
    assert wait_stopped([pids[0], pids[2]], BOUND) < BOUND
    output = finish(job)
    assert job.returncode != 0
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert sorted(line.split(":")[1] for line in errors) == [" rank 0", " rank 2"], output
    for line in errors:
        assert "rank 1 was lost" in line and " at iteration " in line
        assert line.endswith(f"continue the run with: pspnet train --resume {run} --nproc-per-node 3")


def test_a_stopped_worker_does_not_hold_the_others(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", max_iters=40, eval_interval=100)
    run = tmp_path / "run"
    job = start(torchrun_command(run, config, "--standalone", "--nproc-per-node", "2"))
    wait_for_checkpoint(run, job)
    pids = workers(job.pid)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        elapsed = wait_stopped([pids[0]], BOUND)
    finally:
        os.kill(pids[1], signal.SIGKILL)
    output = finish(job)
    assert elapsed >= DIST_TIMEOUT and job.returncode != 0
    assert f"error: rank 0: rank 1 was lost (it died, or gave no answer within {DIST_TIMEOUT} s)" in output
    assert 'File "' + str(Path(__file__).parents[1] / "src") not in output  # no traceback from pspnet


def test_the_world_shrinks_from_two_nodes_to_one_and_the_run_goes_on(reference, tmp_path):
    run, port = tmp_path / "run", free_port()
    nodes = []
    for _ in range(2):
        launcher = [
            "--nnodes",
            "1:2",
            "--nproc-per-node",
            "1",
            "--max-restarts",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "pspnet-elastic",
            "--rdzv-conf",
            "last_call_timeout=3",
        ]
        nodes.append(start(torchrun_command(run, reference["config"], *launcher)))
        time.sleep(1)  # the first node hosts the rendezvous, and both join its first round
    try:
        wait_for_checkpoint(run, nodes[0])
        lost = [nodes[1].pid, *workers(nodes[1].pid).values()]  # the second machine is gone: launcher and worker
        for pid in lost:
            os.kill(pid, signal.SIGKILL)
        output = finish(nodes[0])
    finally:
        finish(nodes[1])
    assert nodes[0].returncode == 0, output
    assert "rank 1 was lost" in output and "resuming" in output
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert [session["processes"] for session in sessions] == [2, 1]
    for running_stats in (False, True):  # 1 process after the restart: the same as 2, up to float rounding
        assert largest_difference(weights(reference["run"]), weights(run), running_stats) < 1e-5


def test_a_global_batch_that_does_not_divide_says_which_world_sizes_work():
    with pytest.raises(ConfigError, match=r"among 3 processes; choose a multiple of 3, or run on 1, 2, 4 processes"):
        split_batch(4, Distributed(rank=0, world_size=3), sync_bn=True)
