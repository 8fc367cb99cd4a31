"""The playground's HTTP API against real `pspnet` job processes, its access rules, and a restart after kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import tiny_config_dict
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from pspnet.data.synthetic import ContextScenes
from pspnet.playground.app import PlaygroundOptions, create_playground

HEADERS = {"X-Pspnet": "1"}
TERMINAL = ("finished", "failed", "interrupted")


def tiny(**train) -> dict:
    config = tiny_config_dict(**train)
    config["train"].setdefault("seed", 0)
    return config


@pytest.fixture
def roots(tmp_path) -> tuple[Path, Path]:
    workspace, data = tmp_path / "workspace", tmp_path / "data"
    data.mkdir()
    return workspace, data


@pytest.fixture
def client(roots):
    app = create_playground(PlaygroundOptions(roots[0], (roots[1],), max_jobs=1))
    with TestClient(app, headers=HEADERS) as client:
        yield client


def wait(client, run_id: str, states=TERMINAL, seconds: float = 120, until=None) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        run = client.get(f"/api/runs/{run_id}").json()
        if (until(run) if until else run["state"] in states) or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def test_a_run_goes_from_queued_to_finished_with_its_metrics(client, roots):
    answer = client.post("/api/runs", json={"name": "First try", "config": tiny()})
    assert answer.status_code == 201 and answer.json()["state"] == "queued"
    run_id = answer.json()["id"]
    assert run_id.startswith("first-try-")
    run = wait(client, run_id)
    assert run["state"] == "finished", run
    assert (run["iteration"], run["max_iters"]) == (4, 4) and 0 <= run["mIoU"] <= 1 and run["error"] is None
    assert list(run["per_class_iou"]) == list(ContextScenes.classes.names)  # from the run's own val_log.csv
    assert (roots[0] / "runs" / run_id / "checkpoints" / "best.safetensors").is_file()  # an ordinary run directory
    assert [r["id"] for r in client.get("/api/runs").json()] == [run_id]
    events = client.get(f"/api/runs/{run_id}/events").text  # a finished run's stream: its state, then the end
    assert "event: progress" in events and "event: end" in events and '"state": "finished"' in events


def test_typed_config_errors_are_422_and_runtime_failures_are_failed(client, roots):
    bad = client.post("/api/runs", json={"config": {"model": {"dropuot": 0.2}}})
    assert bad.status_code == 422 and "unknown config key 'model.dropuot'; did you mean model.dropout" in bad.text
    bad = client.post("/api/runs", json={"yaml": "train: {max_iters: -3}"})
    assert bad.status_code == 422 and "train.max_iters: expected a positive int" in bad.text
    bad = client.post("/api/runs", json={"config": tiny(), "processes": 3})
    assert bad.status_code == 422 and "does not divide train.batch_size" in bad.text
    config = tiny()
    config["data"] = {"format": "folders", "root": str(roots[1] / "missing"), "classes_file": str(roots[1] / "c.yaml")}
    run_id = client.post("/api/runs", json={"config": config}).json()["id"]
    run = wait(client, run_id)
    assert run["state"] == "failed" and run["error"].startswith("error: dataset root not found:")


def test_stop_interrupts_resume_finishes_and_the_queue_runs_one_job_at_a_time(client):
    long_run = client.post("/api/runs", json={"name": "long", "config": tiny(max_iters=400, eval_interval=400)}).json()
    queued = client.post("/api/runs", json={"name": "next", "config": tiny()}).json()
    running = wait(client, long_run["id"], until=lambda run: run["iteration"] >= 2)
    assert running["state"] == "running"
    assert client.get(f"/api/runs/{queued['id']}").json()["state"] == "queued"  # --max-jobs 1
    assert client.post(f"/api/runs/{long_run['id']}/stop").json()["state"] in ("stopping", "interrupted")
    stopped = wait(client, long_run["id"])
    assert stopped["state"] == "interrupted" and stopped["iteration"] < 400
    assert wait(client, queued["id"])["state"] == "finished"
    resumed = client.post(f"/api/runs/{long_run['id']}/resume", json={"max_iters": stopped["iteration"] + 3})
    assert resumed.status_code == 200
    finished = wait(client, long_run["id"])
    assert (
        finished["state"] == "finished" and finished["iteration"] == finished["max_iters"] == stopped["iteration"] + 3
    )


def test_paths_outside_the_workspace_and_data_roots_are_refused(client, roots, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (roots[1] / "escape").symlink_to(outside)
    for root in ("../secret", str(outside), "escape", "escape/../.."):
        config = tiny()
        config["data"] = {"format": "folders", "root": root, "classes_file": "c.yaml"}
        answer = client.post("/api/runs", json={"config": config})
        assert answer.status_code == 403 and "data.root" in answer.text, (root, answer.text)
        assert client.post("/api/datasets", json={"name": "x", "root": root}).status_code == 403
    config = tiny()
    config["train"]["init_from"] = "/etc/passwd"
    assert client.post("/api/runs", json={"config": config}).status_code == 403
    run_id = client.post("/api/runs", json={"config": tiny()}).json()["id"]
    wait(client, run_id)
    for path in ("../../playground.db", "..%2F..%2Fplayground.db", "/etc/passwd"):
        assert client.get(f"/api/runs/{run_id}/files/{path}").status_code in (403, 404)
    assert client.get(f"/api/runs/{run_id}/files/config.yaml").status_code == 200
    assert client.get("/api/runs/..%2F..%2Fsecret").status_code in (403, 404)
    assert client.delete(f"/api/runs/{run_id}").status_code == 409  # needs confirmation
    assert client.delete(f"/api/runs/{run_id}?confirm={run_id}").json()["deleted"]
    assert not (roots[0] / "runs" / run_id).exists() and outside.is_dir()


def test_state_changing_requests_must_come_from_the_page(roots):
    app = create_playground(PlaygroundOptions(roots[0], (roots[1],)))
    with TestClient(app) as client:
        assert client.get("/api/health").json()["status"] == "ok"
        assert client.post("/api/runs", json={"config": tiny()}).status_code == 403  # no X-Pspnet header
        evil = {**HEADERS, "Origin": "http://evil.example"}
        assert client.post("/api/runs", json={"config": tiny()}, headers=evil).status_code == 403
        cross = {**HEADERS, "Sec-Fetch-Site": "cross-site"}
        assert client.post("/api/runs", json={"config": tiny()}, headers=cross).status_code == 403
        assert client.get("/api/runs", headers={"Host": "attacker.example"}).status_code == 403  # DNS rebinding


def test_a_token_guards_every_request(roots):
    app = create_playground(PlaygroundOptions(roots[0], (roots[1],), token="s3cret"))
    with TestClient(app, base_url="http://10.1.2.3:8080") as client:
        assert client.get("/api/runs").status_code == 401
        assert client.get("/", headers={"accept": "text/html"}, follow_redirects=False).headers["location"] == "/login"
        assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).json() == []
        assert client.post("/login", data={"token": "nope"}).status_code == 401
        assert client.post("/login", data={"token": "s3cret"}, follow_redirects=False).status_code == 303
        assert client.get("/api/runs").status_code == 200  # the cookie from the login


def test_a_non_loopback_host_needs_a_token(capsys):
    from pspnet.cli import main

    assert main(["playground", "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 lets other machines in: set --token" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_playground(workspace: Path, data: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "pspnet", "--quiet", "playground", str(workspace), "--port", str(port),
         "--data-root", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the playground did not start within 60 s")


def test_a_playground_killed_during_a_job_lists_it_interrupted_and_resumes_it_exactly(roots, tmp_path):
    workspace, data = roots
    config = tiny(max_iters=60, eval_interval=60, checkpoint_interval=10)
    config["model"]["dropout"] = 0.0
    # the reference: the same config, uninterrupted
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(config))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pspnet",
            "--quiet",
            "train",
            str(tmp_path / "ref.yaml"),
            "--out",
            str(tmp_path / "ref"),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_playground(workspace, data, port)
    try:
        run_id = httpx.post(f"{base}/api/runs", json={"config": config}, headers=HEADERS).json()["id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/api/runs/{run_id}").json()["iteration"] < 15 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        process = start_playground(workspace, data, port)
        run = httpx.get(f"{base}/api/runs/{run_id}").json()
        assert run["state"] == "interrupted" and run["iteration"] < 60, run
        assert httpx.post(f"{base}/api/runs/{run_id}/resume", headers=HEADERS).status_code == 200
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/api/runs/{run_id}").json()["state"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(f"{base}/api/runs/{run_id}").json()["state"] == "finished"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    resumed = load_file(workspace / "runs" / run_id / "checkpoints" / "last.safetensors")
    reference = load_file(tmp_path / "ref" / "checkpoints" / "last.safetensors")
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert (resumed[key] - reference[key]).abs().max() <= 1e-6, key


def test_a_dataset_folder_is_detected_checked_and_previewed(client, roots):
    from PIL import Image

    data = roots[1] / "street"
    for folder in ("train/images", "train/masks"):
        (data / folder).mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (32, 24), (index * 60, 90, 30)).save(data / "train/images" / f"{index}.png")
        Image.new("L", (32, 24), index % 2).save(data / "train/masks" / f"{index}.png")
    (roots[1] / "classes.yaml").write_text("names: [road, car]\n")
    answer = client.post("/api/datasets", json={"name": "street", "root": "street", "classes_file": "classes.yaml"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["data"]["format"] == "folders"  # detected from train/images and train/masks
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        street = next(d for d in client.get("/api/datasets").json() if d["name"] == "street")
        if street["check"] is not None and street["preview"] is not None:
            break
        time.sleep(0.3)
    assert "3" in street["check"] and "road" in street["check"] and "car" in street["check"]
    assert client.get(street["preview"]).headers["content-type"] == "image/png"
    names = [d["name"] for d in client.get("/api/datasets").json()]
    assert names == ["synthetic", "street"]
    assert client.post("/api/datasets", json={"name": "bad", "root": "nowhere"}).status_code == 422


def test_the_form_comes_from_the_typed_config_and_validates_before_anything_starts(client):
    from pspnet.config import all_keys

    schema = client.get("/api/schema").json()
    assert [row["key"] for row in schema["keys"]] == all_keys()  # a new key appears without editing the page
    encoders = {encoder["name"]: encoder for encoder in schema["encoders"]}
    assert encoders["resnet50_deepstem"]["strides"] == "8/16/32" and encoders["lite"]["imagenet"] is False
    assert "synthetic" in [preset["name"] for preset in schema["presets"]]
    preset = client.get("/api/presets/synthetic").json()["config"]
    assert preset["model"]["encoder"] == "resnet18_deepstem"
    answer = client.post("/api/validate", json={"config": tiny(), "processes": 2}).json()
    assert answer["command"].startswith("pspnet train config.yaml --out ") and "--nproc-per-node 2" in answer["command"]
    assert "encoder: resnet18_deepstem" in answer["yaml"]
    estimate = answer["estimate"]
    assert estimate["parameters"] > 0 and estimate["forward_gflops"] > 0 and estimate["seconds_per_iter"] > 0
    assert client.post("/api/validate", json={"config": {"train": {"batch_size": 1}}}).status_code == 422
