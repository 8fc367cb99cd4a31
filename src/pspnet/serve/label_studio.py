"""Label Studio's ML backend protocol (`pspnet serve --label-studio`): a connected project gets pspnet's masks.

Label Studio calls `GET /health`, then `POST /setup` with the project's labelling config (the answer
reports any class the project's `<BrushLabels>` and the model do not share), then `POST /predict` with
tasks; each answer holds one prediction per task, a `brushlabels` result per class present (as
`pspnet predict --format label-studio` writes them; classes the project lacks are left out).

A task's image is read from `local_files_root` for local-files URLs when that is set; otherwise it is
fetched from Label Studio itself (`url`, default: the host name Label Studio sends to `/setup`) with
`token` (default: the access token it sends). Nothing else is fetched: a task's reference must be a path
on that server.

With `retrain_config`, `POST /webhook` with Label Studio's `START_TRAINING` (its model settings' *Start
Training*) exports the project as JSON into `retrain_dir/exports/project-ID-TIME/` and starts
`pspnet train retrain_config` on it in the background (`data.format: label-studio`, `data.root` the export,
`train.init_from` the served checkpoint, the run in `retrain_dir/project-ID-TIME/`, its output in
`train.log` there); one training at a time, and it runs on when the server stops. Serve the new
checkpoint when it is done: its model version differs, so Label Studio asks for predictions again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from ..checkpoint import LoadedModel
from ..data.formats.label_studio import LabelConfig, local_file, parse_labelling_config
from ..errors import DataError
from ..inference.predict import predict_probabilities
from ..io.files import atomic_path
from ..io.images import read_image
from ..jobs.annotation_files import label_studio_prediction, model_version
from .worker import InferenceWorker, QueueFull

log = logging.getLogger("pspnet.serve")

FETCH_SECONDS = 30.0
EXPORT_BYTES = 1 << 30
"""Largest project export a retraining downloads."""


@dataclass(frozen=True)
class LabelStudioOptions:
    """Where the backend finds the images of Label Studio's tasks."""

    url: str | None = None
    """Label Studio's address for `/data/...` references; None: the host name it sends to `/setup`."""
    token: str | None = None
    """Label Studio API token for fetching images; None: the access token it sends to `/setup`."""
    local_files_root: str | None = None
    """Label Studio's LOCAL_FILES_DOCUMENT_ROOT: local-files images are read from here, not fetched."""
    retrain_config: str | None = None
    """Training config that `START_TRAINING` webhooks fine-tune the served checkpoint with; None: no retraining."""
    retrain_dir: str = "runs/label-studio"
    """Where retraining puts the exports and the runs."""


def retraining_command(config: str, export_root: Path, checkpoint: Path, run_dir: Path) -> list[str]:
    """`pspnet train` of `config` on a Label Studio export, fine-tuning `checkpoint`."""
    overrides = ["data.format=label-studio", f"data.root={export_root}", f"train.init_from={checkpoint}"]
    return [sys.executable, "-m", "pspnet", "train", config, "--out", str(run_dir), "--set", *overrides]


def class_mismatch(config: LabelConfig, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Project labels the model does not predict, and model classes the project does not have."""
    return {
        "unknown_to_model": [name for name in config.names if name not in names],
        "missing_in_project": [name for name in names if name not in config.names],
    }


def add_label_studio_backend(
    app: FastAPI,
    loaded: LoadedModel,
    worker: InferenceWorker,
    options: LabelStudioOptions,
    max_bytes: int,
    max_pixels: int,
) -> None:
    """Add `/health`, `/setup`, `/predict` and `/webhook` of the ML backend protocol to `app`."""
    model, settings, classes = loaded.model, loaded.config.eval, loaded.card.classes
    version = model_version(loaded)
    servers: dict[str, tuple[str, str]] = {}  # project id -> (Label Studio's address, token), from /setup
    training: list[subprocess.Popen] = []  # the latest retraining process

    async def json_body(request: Request) -> dict[str, Any]:
        """The request's JSON object (at most `max_bytes`); 413 or 422 otherwise."""
        body = await request.body()
        if len(body) > max_bytes:
            raise HTTPException(413, f"request larger than the limit of {max_bytes / 2**20:g} MB (--max-upload-mb)")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise HTTPException(422, "expected a JSON object, as Label Studio sends")
        return data

    def label_config(text: Any) -> LabelConfig:
        try:
            return parse_labelling_config(str(text or ""), "the project's labelling config")
        except DataError as exc:
            raise HTTPException(400, str(exc)) from None

    def fetch(reference: str, project: str) -> bytes:
        """The bytes of a task's image (see the module docstring); DataError naming it when they cannot be had."""
        local = local_file(reference)
        if local is not None and options.local_files_root is not None:
            root = Path(options.local_files_root).resolve()
            path = (root / local).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                raise DataError(f"image {reference}: {path} not found under --local-files-root {root}")
            return path.read_bytes()
        if not reference.startswith("/") or reference.startswith("//"):
            raise DataError(f"image {reference}: only images on the Label Studio server (/data/...) are read")
        return from_label_studio(reference, project, max_bytes, f"image {reference}")

    def from_label_studio(path: str, project: str, limit: int, what: str) -> bytes:
        """GET `path` from the project's Label Studio with its token; DataError naming `what` on failure."""
        base, token = servers.get(project.partition(".")[0], (None, None))
        base, token = options.url or base, options.token or token
        if base is None:
            raise DataError(f"{what}: Label Studio's address is unknown (set --label-studio-url)")
        request = urllib.request.Request(base.rstrip("/") + path)
        if token:
            request.add_header("Authorization", f"Token {token}")
        try:
            with urllib.request.urlopen(request, timeout=FETCH_SECONDS) as response:
                data = response.read(limit + 1)
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(f"{what}: cannot fetch it from {base}: {exc}") from None
        if len(data) > limit:
            raise DataError(f"{what}: larger than the limit of {limit / 2**20:g} MB")
        return data

    def retrain(project: str) -> dict[str, str]:
        """Export the project and start fine-tuning on it (see the module docstring)."""
        if training and training[-1].poll() is None:
            raise HTTPException(409, f"a retraining is running (process {training[-1].pid}); wait for it to end")
        name = f"project-{project}-{time.strftime('%Y%m%d-%H%M%S')}"
        export = from_label_studio(
            f"/api/projects/{project}/export?exportType=JSON", project, EXPORT_BYTES, f"project {project}'s export"
        )
        export_root = Path(options.retrain_dir) / "exports" / name
        export_root.mkdir(parents=True, exist_ok=True)
        with atomic_path(export_root / "export.json") as tmp:
            tmp.write_bytes(export)
        run_dir = Path(options.retrain_dir) / name
        command = retraining_command(str(options.retrain_config), export_root, loaded.path.resolve(), run_dir)
        run_dir.mkdir(parents=True)
        with open(run_dir / "train.log", "wb") as log_file:
            training[:] = [subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)]
        log.info("Label Studio project %s: retraining in %s (process %d)", project, run_dir, training[-1].pid)
        return {"status": "training", "run": str(run_dir), "log": str(run_dir / "train.log")}

    def segment(data: bytes, config: LabelConfig) -> dict[str, Any]:
        """The prediction for one image's bytes (on the inference worker)."""
        image = read_image(data, model.card.in_channels, max_pixels=max_pixels, exif=True)
        probabilities = predict_probabilities(model, image, settings)
        label = probabilities.argmax(0).astype("uint8")
        return label_studio_prediction(label, probabilities.max(0), classes, version, config)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Label Studio's health check."""
        return {"status": "UP", "model_class": "pspnet", "model_version": version}

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        """The model version, and the classes the project and the model do not share."""
        body = await json_body(request)
        config = label_config(body.get("schema"))
        if isinstance(body.get("hostname"), str) and body.get("project") is not None:
            servers[str(body["project"]).partition(".")[0]] = (body["hostname"], str(body.get("access_token") or ""))
        mismatch = class_mismatch(config, classes.names)
        answer: dict[str, Any] = {"model_version": version, "classes": mismatch}
        if any(mismatch.values()):
            answer["warning"] = (
                f"the project's labels and the model's classes differ: not predicted by the model: "
                f"{mismatch['unknown_to_model'] or 'none'}; not in the project: {mismatch['missing_in_project'] or 'none'}"
            )
            log.warning("Label Studio project %s: %s", body.get("project"), answer["warning"])
        return answer

    @app.post("/webhook")
    async def webhook(request: Request) -> dict[str, str]:
        """`START_TRAINING` starts a retraining with `retrain_config`; other events are acknowledged."""
        body = await json_body(request)
        action = str(body.get("action"))
        if action != "START_TRAINING":
            return {"status": "ignored", "action": action}
        if options.retrain_config is None:
            raise HTTPException(400, "retraining is off: start pspnet serve with --retrain-config CONFIG")
        project = (body.get("project") or {}).get("id") if isinstance(body.get("project"), dict) else None
        if project is None:
            raise HTTPException(422, "a START_TRAINING event names its project in project.id")
        return await asyncio.to_thread(retrain, str(project))

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        """One prediction per task, in the order of the tasks."""
        body = await json_body(request)
        config = label_config(body.get("label_config"))
        project = str(body.get("project"))
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise HTTPException(422, "expected a list of tasks in 'tasks'")
        results = []
        for task in tasks:
            reference = (task.get("data") or {}).get(config.image_key) if isinstance(task, dict) else None
            if not isinstance(reference, str):
                raise DataError(
                    f"task {task.get('id') if isinstance(task, dict) else task!r}: no image in data.{config.image_key}"
                )
            data = await asyncio.to_thread(fetch, reference, project)
            try:
                ticket = worker.admit()
            except QueueFull as exc:
                return JSONResponse({"detail": str(exc)}, 503, {"Retry-After": str(exc.retry_after)})
            with ticket:
                results.append(await asyncio.wrap_future(ticket.submit(lambda data=data: segment(data, config))))
        return JSONResponse({"results": results})
