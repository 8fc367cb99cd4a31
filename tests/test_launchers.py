"""Launchers people use: SLURM's `srun` (its variables mapped to torch.distributed's) and the example job files."""

from __future__ import annotations

import json
import random
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import unavailable
from test_distributed import ENV, TIMEOUT, largest_difference, weights, write_config

from pspnet.cli import main
from pspnet.cli.train import resume_command
from pspnet.errors import ConfigError
from pspnet.system.distributed import SLURM_PORT_BASE, first_slurm_host, started_by_srun, use_slurm_environment

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "examples/slurm/train.sbatch"
PYTORCHJOB = ROOT / "examples/kubernetes/pytorchjob.yaml"


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node[01-03,07]", "node01"),
        ("gpu-[001-004],cpu01", "gpu-001"),
        ("a1,a2", "a1"),
        ("rack[2-3]-n[08-09]", "rack2-n08"),
        ("n[7]", "n7"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_the_first_host_of_a_slurm_node_list(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_srun_variables_become_torch_distributed_variables():
    step = {
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "4242",
    }
    environ = {**step, "SLURM_STEP_NODELIST": "gpu[12-13]", "SLURM_JOB_NODELIST": "gpu[10-13]"}
    assert use_slurm_environment(environ) and started_by_srun(environ)
    assert {key: environ[key] for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu12",  # the step's first node, not the job's
        "MASTER_PORT": str(SLURM_PORT_BASE + 4242),
    }
    given = {**step, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    assert use_slurm_environment(given) and (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("10.0.0.1", "1234")
    torchrun_worker = {**step, "RANK": "0", "WORLD_SIZE": "4"}  # `srun torchrun`: torchrun's variables win
    assert not use_slurm_environment(torchrun_worker) and torchrun_worker["WORLD_SIZE"] == "4"
    assert not started_by_srun({**torchrun_worker, "TORCHELASTIC_RUN_ID": "job"}) and not started_by_srun({})
    assert resume_command(Path("runs/x"), 8, slurm=True) == "srun --ntasks 8 pspnet train --resume runs/x"
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[10-13]"}  # no step
    assert not use_slurm_environment(batch_script) and "RANK" not in batch_script
    with pytest.raises(ConfigError, match="set MASTER_ADDR"):
        use_slurm_environment(dict(step))


def free_slurm_job_id() -> int:
    """A job id whose default port (SLURM_PORT_BASE + id % 40000) is free on 127.0.0.1."""
    for _ in range(100):
        job_id = random.randrange(40000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", SLURM_PORT_BASE + job_id))
            except OSError:
                continue
            return job_id
    raise RuntimeError("no free port")


def test_two_srun_tasks_train_from_shards_like_one_process_from_the_source(tmp_path):
    """Two processes started with SLURM's variables only (as `srun --ntasks 2 python -m pspnet train`), reading
    the data from shards, end with the weights of one process reading the generated samples."""
    config = write_config(tmp_path / "source.yaml")
    assert main(["--quiet", "train", str(config), "--out", str(tmp_path / "one")]) == 0
    for split in ("train", "val"):
        assert main(["--quiet", "data", "pack", str(config), "--split", split, "--out", str(tmp_path / "shards")]) == 0
    streamed = yaml.safe_load(config.read_text())
    streamed["data"].update(format="shards", root=str(tmp_path / "shards"))
    (tmp_path / "shards.yaml").write_text(yaml.safe_dump(streamed))
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(SLURM_STEP_ID="0", SLURM_NTASKS="2", SLURM_JOB_ID=str(free_slurm_job_id()))
    env.update(SLURM_STEP_NODELIST="127.0.0.1", SLURM_JOB_NODELIST="127.0.0.1")
    command = [
        sys.executable,
        "-m",
        "pspnet",
        "--quiet",
        "train",
        str(tmp_path / "shards.yaml"),
        "--out",
        str(tmp_path / "two"),
    ]
    tasks = [
        subprocess.Popen(
            command,
            env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for task in tasks:
        _, err = task.communicate(timeout=TIMEOUT)
        assert task.returncode == 0, err
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert largest_difference(one, two, running_stats=False) < 1e-5
    assert largest_difference(one, two, running_stats=True) < 1e-5


def sbatch_command() -> list[str]:
    """The `srun torchrun ... -m pspnet ...` command of the example batch script, as words."""
    lines, command = SBATCH.read_text().splitlines(), []
    start = next(number for number, line in enumerate(lines) if line.startswith("srun "))
    for line in lines[start:]:
        command += shlex.split(line.rstrip("\\"))
        if not line.endswith("\\"):
            return command
    raise AssertionError("unterminated srun command")


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_the_slurm_example_runs_torchrun_per_node_with_a_rendezvous_and_resume():
    text = SBATCH.read_text()
    directives = dict(
        line[len("#SBATCH --") :].partition("=")[::2] for line in text.splitlines() if line.startswith("#SBATCH --")
    )
    assert directives["ntasks-per-node"] == "1"  # one torchrun launcher per node
    assert "requeue" in directives and directives["nodes"] == "2"
    command = sbatch_command()
    assert command[:2] == ["srun", "torchrun"]
    assert option(command, "--nnodes") == "$SLURM_JOB_NUM_NODES"
    assert option(command, "--nproc-per-node") == "$GPUS_PER_NODE"
    assert f"GPUS_PER_NODE={directives['gpus-per-node']}" in text  # as many workers as GPUs per node
    assert int(option(command, "--max-restarts")) > 0 and option(command, "--rdzv-backend") == "c10d"
    assert option(command, "--rdzv-endpoint").startswith("$HEAD:")
    pspnet = command[command.index("-m") :]
    assert pspnet[:3] == ["-m", "pspnet", "train"] and option(pspnet, "--resume") == "auto"
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_kubernetes_example_is_a_pytorchjob_of_pspnet_train():
    job = yaml.safe_load(PYTORCHJOB.read_text())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    for spec in replicas.values():
        assert spec["restartPolicy"] == "OnFailure"
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the container the operator configures
        command = container["command"]
        assert command[:4] == ["torchrun", "-m", "pspnet", "train"] and option(command, "--resume") == "auto"
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == job["spec"]["nprocPerNode"]
        mounts = {mount["name"] for mount in container["volumeMounts"]}
        assert mounts <= {volume["name"] for volume in spec["template"]["spec"]["volumes"]}
        assert option(command, "--out").startswith("/runs/")  # on the volume every pod mounts


def schema_round_trip(job: dict) -> dict:
    """`job` read into the training operator's PyTorchJob model (its OpenAPI schema, nested Kubernetes types
    included) and written back: a key the schema does not know, or a value of another type, does not come back."""
    try:
        from kubeflow.training import ApiClient
    except ImportError:
        unavailable("kubeflow-training (the test extra) is not installed")
    client = ApiClient()
    response = type("Response", (), {"data": json.dumps(job)})
    return client.sanitize_for_serialization(client.deserialize(response, "KubeflowOrgV1PyTorchJob"))


def test_the_kubernetes_example_follows_the_operator_schema():
    text = PYTORCHJOB.read_text()
    job = yaml.safe_load(text)
    assert schema_round_trip(job) == job
    elastic = yaml.safe_load(re.search(r"^#\s+(elasticPolicy: .*)$", text, re.MULTILINE).group(1))
    variant = {**job, "spec": {**job["spec"], **elastic}}  # the elastic variant its comment describes
    assert schema_round_trip(variant) == variant
    typo = json.loads(json.dumps(job))
    typo["spec"]["pytorchReplicaSpecs"]["Worker"]["restartpolicy"] = typo["spec"]["pytorchReplicaSpecs"]["Worker"].pop(
        "restartPolicy"
    )
    assert schema_round_trip(typo) != typo  # what the check catches
