"""The whole loop against a real Label Studio server (its own environment: `make label-studio-env`), on 127.0.0.1:
a project with pspnet's labelling config, pspnet's pre-annotated tasks imported, `pspnet serve --label-studio`
connected as its ML backend and predicting a new task, annotations submitted, Start Training fine-tuning through
`/webhook`, the project exported, then `pspnet data check` and two training iterations from the export. Skipped
without the environment, failed on CI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from annotate_helpers import LS_ENV, label_studio_label_map, label_studio_python, varied_checkpoint, write_photos
from conftest import TINY_RESNET, open_source
from PIL import Image
from test_serve import free_port, start_server

from pspnet.cli import main

TOKEN = "0123456789abcdef0123456789abcdef01234567"
STARTUP_SECONDS = 120


@pytest.fixture
def label_studio(tmp_path) -> Iterator[tuple[httpx.Client, Path, int]]:
    """(an API client, the local-files root, the port) of a fresh Label Studio; stopped afterwards."""
    python = label_studio_python()
    data = tmp_path / "label-studio-data"
    template = LS_ENV / "template"  # a migrated empty database (make label-studio-env): a start in seconds
    if template.is_dir():
        shutil.copytree(template, data)
    files = tmp_path / "files"
    files.mkdir()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))},
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "LABEL_STUDIO_USERNAME": "pspnet@example.com",
        "LABEL_STUDIO_PASSWORD": "pspnet-test-password",
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "ML_BLOCK_LOCAL_IP": "false",  # the ML backend runs on 127.0.0.1, which Label Studio refuses by default
        "SSRF_PROTECTION_ENABLED": "false",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    log = tmp_path / "label-studio.log"
    command = [str(python.parent / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "-p", str(port), "--data-dir", str(data)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Token {TOKEN}"}, timeout=60)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"Label Studio did not start in {STARTUP_SECONDS} s: {log.read_text()[-3000:]}"
            )
            try:
                if client.get("/api/current-user/whoami").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield client, files, port
    finally:
        client.close()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def ok(response: httpx.Response) -> object:
    assert response.status_code < 300, f"{response.request.url}: {response.status_code} {response.text[:2000]}"
    return response.json()


def test_the_labelling_loop_with_a_real_label_studio(label_studio, tmp_path):
    client, files, _ = label_studio
    checkpoint = varied_checkpoint(tmp_path / "model.safetensors")
    photos = write_photos(files / "photos", count=4)
    new_photo = photos / "scene3.png"
    (tmp_path / "next").mkdir()
    new_photo.rename(tmp_path / "next" / new_photo.name)
    out = tmp_path / "preannotations"
    command = ["--quiet", "predict", str(checkpoint), str(photos), "--out", str(out), "--format", "label-studio"]
    assert main([*command, "--local-files-root", str(files)]) == 0

    config = (out / "label_config.xml").read_text()
    project = ok(client.post("/api/projects", json={"title": "pspnet", "label_config": config}))
    storage = {"project": project["id"], "path": str(photos), "title": "photos", "use_blob_urls": True}
    ok(client.post("/api/storages/localfiles", json=storage))
    ok(client.post(f"/api/projects/{project['id']}/import", json=json.loads((out / "tasks.json").read_text())))
    tasks = ok(client.get("/api/tasks", params={"project": project["id"], "fields": "all"}))["tasks"]
    assert len(tasks) == 3 and all(len(task["predictions"]) == 1 for task in tasks)

    root = tmp_path / "export"
    run_config = tmp_path / "train.yaml"
    data = {
        "format": "label-studio",
        "root": str(root),
        "classes_file": str(out / "classes.json"),
        "options": {"local_files_root": str(files), "val_fraction": 0.25},
        "augment": {"crop_size": [32, 32]},
        "num_workers": 0,
    }
    train = {
        "max_iters": 2,
        "batch_size": 2,
        "eval_interval": 2,
        "checkpoint_interval": 2,
        "init_from": str(checkpoint),
    }
    run_config.write_text(json.dumps({"model": TINY_RESNET, "data": data, "train": train}))

    # pspnet as the project's ML backend (behind a token: Label Studio's basic authentication) predicts a new task
    (tmp_path / "next" / new_photo.name).rename(new_photo)
    command = [sys.executable, "-m", "pspnet", "--quiet", "serve", str(checkpoint), "--label-studio", "--token", "t0k"]
    retraining = ["--retrain-config", str(run_config), "--retrain-dir", str(tmp_path / "retrain")]
    backend, url = start_server([*command, *retraining], tmp_path / "backend.log")
    try:
        auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": "label-studio", "basic_auth_pass": "t0k"}
        ml = ok(client.post("/api/ml", json={"project": project["id"], "url": url, "title": "pspnet", **auth}))
        assert ml["state"] == "CO", ml  # connected: /health and /setup answered
        imported = ok(
            client.post(
                f"/api/projects/{project['id']}/import",
                params={"return_task_ids": "true"},
                json=[{"data": {"image": f"/data/local-files/?d=photos/{new_photo.name}"}}],
            )
        )
        new_task = imported["task_ids"][0]
        action = {"selectedItems": {"all": False, "included": [new_task]}}
        dm_action = {"id": "retrieve_tasks_predictions", "project": project["id"]}
        ok(client.post("/api/dm/actions", params=dm_action, json=action))
        predictions = ok(client.get("/api/predictions", params={"task": new_task}))
        assert len(predictions) == 1, (tmp_path / "backend.log").read_text()[-3000:]

        # an annotator accepts the predictions; Start Training fine-tunes the served model on the project's export
        ok(client.post(f"/api/tasks/{new_task}/annotations", json={"result": predictions[0]["result"]}))
        for task in tasks:
            ok(client.post(f"/api/tasks/{task['id']}/annotations", json={"result": task["predictions"][0]["result"]}))
        started = client.post(f"/api/ml/{ml['id']}/train", json={})  # Label Studio calls /webhook: START_TRAINING
        assert started.status_code < 300, started.text
        runs = list((tmp_path / "retrain").glob("project-*"))
        assert len(runs) == 1, (tmp_path / "backend.log").read_text()[-3000:]
        deadline = time.monotonic() + 120
        while not (runs[0] / "checkpoints" / "last.safetensors").is_file():
            assert time.monotonic() < deadline, (runs[0] / "train.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        backend.send_signal(signal.SIGTERM)
        backend.wait(30)
    names = tuple(json.loads((out / "classes.json").read_text())["names"])
    assert main(["--quiet", "predict", str(checkpoint), str(new_photo), "--out", str(tmp_path / "labels")]) == 0
    expected = np.array(Image.open(tmp_path / "labels" / "labels" / "scene3.png"))
    assert (label_studio_label_map(predictions[0]["result"], names) == expected).all()

    # the project exported by hand, checked, and trained from
    export = client.get(f"/api/projects/{project['id']}/export", params={"exportType": "JSON"})
    root.mkdir()
    (root / "project.json").write_bytes(export.content)
    assert len(ok(export)) == 4
    assert main(["data", "check", str(run_config), "--split", "all"]) == 0
    exported = open_source("label-studio", root, "all", out / "classes.json", {"local_files_root": str(files)})
    assert (exported.load([s.name for s in exported.samples].index("scene3")).mask == expected).all()
    assert main(["--quiet", "train", str(run_config), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
