"""The playground's web application: the page at `/`, the HTTP API under `/api/` that the page uses, and
"try the model" pages under `/try/<run>/` (each the `pspnet serve` app of that run's best checkpoint).

Everything that trains, evaluates, exports or scans a dataset is a job (`jobs.py`): its own `pspnet`
process. The API only reads run directories and the index, validates configs with the typed config's own
errors, and queues jobs.

Access (`pspnet.serve.access`): without a token only loopback clients with a loopback `Host` are answered
(which also stops DNS rebinding); with a token every request needs it (the cookie `/login` sets, or
`Authorization: Bearer TOKEN`). Requests that change state must come from the page itself: a cross-site
`Origin` or `Sec-Fetch-Site` is refused, and the `X-Pspnet` header is required (a cross-site form cannot
send one without a CORS preflight, which is never granted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shlex
import shutil
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..config import Config, describe_keys, dump_yaml
from ..errors import PSPNetError
from ..serve.access import TokenGate, add_login
from .jobs import JobRunner
from .runs import RunInfo, config_paths, detect_format, diff_configs, read_run, run_config_dict
from .store import ACTIVE, OutsideError, Store, new_id

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
EVENT_SECONDS = 1.0
"""How often a run's event stream looks at its logs."""
EVENT_STREAM_SECONDS = 3600.0
"""Longest life of one event stream (the page reconnects)."""


@dataclasses.dataclass(frozen=True)
class PlaygroundOptions:
    """Where the playground keeps things and who may use it."""

    workspace: Path
    data_roots: tuple[Path, ...]
    token: str | None = None
    max_jobs: int = 1
    max_upload_bytes: int = 20 * 2**20


class Access(TokenGate):
    """The shared token and loopback gate, and the cross-site check (see the module docstring)."""

    def __init__(self, app: Any, token: str | None):
        super().__init__(app, token, loopback_only=True, open_paths=("/api/health",))

    def refuse(self, request: Request) -> Response | None:
        refused = super().refuse(request)
        if refused is not None or request.method in SAFE_METHODS or request.url.path == "/login":
            return refused
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return JSONResponse({"detail": "cross-site request refused"}, 403)
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            return JSONResponse({"detail": f"cross-site request refused (origin {origin})"}, 403)
        if request.headers.get("x-pspnet") != "1" and not request.url.path.startswith(
            "/try/"
        ):  # segmenting changes nothing
            return JSONResponse({"detail": "state-changing requests need the header X-Pspnet: 1"}, 403)
        return None


class TryModel:
    """`/try/<run>/...`: the `pspnet serve` app of a run's best (else last) checkpoint, created on first use."""

    def __init__(self, store: Store, max_upload_bytes: int):
        self.store = store
        self.max_upload_bytes = max_upload_bytes
        self.apps: dict[str, tuple[float, Any]] = {}
        self.stack = contextlib.AsyncExitStack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")  # Starlette keeps the full path and puts the mount's prefix in root_path
        run_id, _, rest = scope["path"].removeprefix(root).removeprefix("/").partition("/")
        try:
            app = await self._app(run_id)
        except (PSPNetError, FileNotFoundError) as exc:
            await JSONResponse({"detail": str(exc)}, 404)(scope, receive, send)
            return
        if not rest and scope["type"] == "http" and not scope["path"].endswith("/"):
            await RedirectResponse(f"{root}/{run_id}/", 307)(scope, receive, send)
            return
        await app(dict(scope, root_path=f"{root}/{run_id}"), receive, send)

    async def _app(self, run_id: str) -> Any:
        from ..checkpoint import open_model  # heavy (torch): only when a model is tried
        from ..serve.app import ServeOptions, create_app
        from ..training.run_dir import RunDirectory

        checkpoint = RunDirectory(self.store.run_dir(run_id)).checkpoint()
        stamp = checkpoint.stat().st_mtime
        cached = self.apps.get(run_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        loaded = await asyncio.to_thread(open_model, checkpoint, device="cpu")
        app = create_app(loaded.with_config(loaded.config), ServeOptions(max_upload_bytes=self.max_upload_bytes))
        await self.stack.enter_async_context(app.router.lifespan_context(app))  # its inference worker
        self.apps[run_id] = (stamp, app)
        return app


def create_playground(options: PlaygroundOptions) -> FastAPI:
    """The playground app over `options.workspace`."""
    store = Store(options.workspace, list(options.data_roots))
    runner = JobRunner(store, options.max_jobs)
    tried = TryModel(store, options.max_upload_bytes)
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start()
        try:
            yield
        finally:
            await tried.stack.aclose()
            await asyncio.to_thread(runner.close)

    app = FastAPI(title="pspnet playground", summary="Train, compare, try and export PSPNet models", lifespan=lifespan)
    app.add_middleware(Access, token=options.token)
    add_login(app, options.token)
    app.state.store, app.state.runner = store, runner
    app.mount("/try", tried)

    @app.exception_handler(OutsideError)
    async def outside(request: Request, exc: OutsideError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 403)

    @app.exception_handler(PSPNetError)
    async def invalid(request: Request, exc: PSPNetError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)

    def run_or_404(run_id: str) -> RunInfo:
        folder = store.run_dir(run_id)
        if not (folder / "playground.json").is_file():
            raise HTTPException(404, f"no run {run_id!r}")
        return read_run(folder, store.jobs(run=run_id))

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise HTTPException(400, "the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return data

    def config_from(data: dict[str, Any]) -> Config:
        """The typed config of a request: `config` (a nested dict) or `yaml` (text); left-out keys take defaults.
        Paths in it must lie in the workspace or a data root."""
        if "yaml" in data:
            try:
                raw = yaml.safe_load(data["yaml"]) or {}
            except yaml.YAMLError as exc:
                raise HTTPException(422, f"yaml: not valid YAML: {exc}") from None
        else:
            raw = data.get("config") or {}
        if not isinstance(raw, dict):
            raise HTTPException(422, "config: expected a mapping of sections (model, data, train, eval)")
        config = Config.from_dict(raw, source="config")
        for key, value in config_paths(config):
            try:
                store.inside(value)
            except OutsideError as exc:
                raise OutsideError(f"{key}: {exc}") from None
        return config

    def command_line(config_file: Path, run: Path, processes: int) -> list[str]:
        argv = ["train", str(config_file), "--out", str(run)]
        return argv + (["--nproc-per-node", str(processes)] if processes > 1 else [])

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "jobs": len(store.jobs(states=ACTIVE)), "workspace": str(store.workspace)}

    @app.get("/api/schema")
    async def schema() -> dict[str, Any]:
        """What the form is generated from: every config key, the encoders, presets and protocols."""
        from ..models.encoders.registry import encoder_table  # heavy (timm)

        keys = [{"key": k, "type": t, "default": d, "help": h} for k, t, d, h in describe_keys()]
        encoders = [
            {"name": name, "family": family, "strides": strides, "imagenet": weights != "-", "description": text}
            for name, family, strides, weights, text in encoder_table()
        ]
        from ..config import EvalConfig

        return {
            "keys": keys,
            "encoders": encoders,
            "presets": presets(),
            "protocols": list(EvalConfig.PROTOCOLS),
            "defaults": Config().to_dict(),
            "data_roots": [str(root) for root in store.data_roots],
        }

    @app.get("/api/presets/{name}")
    async def preset(name: str) -> dict[str, Any]:
        from ..config import load_config

        return {"name": name, "config": load_config(preset_file(name)).to_dict()}

    @app.post("/api/validate")
    async def validate(request: Request) -> dict[str, Any]:
        """The config a form gives, its YAML and command line, and the model's cost, before anything starts."""
        data = await body(request)
        config = config_from(data)
        processes = int(data.get("processes") or 1)
        run = store.runs / "<id>"
        estimate = await asyncio.to_thread(estimate_cost, config, processes)
        argv = command_line(Path("config.yaml"), run, processes)
        return {"yaml": dump_yaml(config), "command": shlex.join(["pspnet", *argv]), "estimate": estimate}

    @app.get("/api/runs")
    async def list_runs() -> list[dict[str, Any]]:
        runs = []
        for folder in sorted(store.runs.iterdir()):
            if (folder / "playground.json").is_file():
                runs.append(read_run(folder, store.jobs(run=folder.name)).summary())
        return runs

    @app.post("/api/runs", status_code=201)
    async def create_run(request: Request) -> dict[str, Any]:
        data = await body(request)
        name = str(data.get("name") or "run")
        config = config_from(data)
        processes = int(data.get("processes") or 1)
        if processes < 1 or config.train.batch_size % processes:
            raise HTTPException(
                422, f"processes: {processes} does not divide train.batch_size {config.train.batch_size}"
            )
        run_id = new_id(name)
        folder = store.run_dir(run_id)
        folder.mkdir(parents=True)
        (folder / "playground.json").write_text(json.dumps({"name": name, "created": time.time()}))
        config_file = store.jobs_dir / f"{run_id}.yaml"
        config_file.write_text(dump_yaml(config))
        runner.submit("train", run_id, command_line(config_file, folder, processes))
        return {"id": run_id, "state": "queued"}

    @app.get("/api/runs/{run_id}")
    async def get_run(run_id: str) -> dict[str, Any]:
        return run_or_404(run_id).details()

    @app.get("/api/runs/{run_id}/config")
    async def get_run_config(run_id: str) -> dict[str, Any]:
        run = run_or_404(run_id)
        return {"name": run.name, "config": run_config_dict(run.path)}

    @app.post("/api/runs/{run_id}/stop")
    async def stop_run(run_id: str) -> dict[str, Any]:
        run = run_or_404(run_id)
        for job in store.jobs(run=run_id, states=ACTIVE):
            runner.stop(job)
        return read_run(run.path, store.jobs(run=run_id)).summary()

    @app.post("/api/runs/{run_id}/resume")
    async def resume_run(run_id: str, request: Request) -> dict[str, Any]:
        run = run_or_404(run_id)
        data = await body(request) if await request.body() else {}
        if store.jobs(run=run_id, states=ACTIVE):
            raise HTTPException(409, f"run {run_id} has a job queued or running")
        argv = ["train", "--resume", str(run.path)]
        if data.get("max_iters") is not None:
            argv += ["--set", f"train.max_iters={int(data['max_iters'])}"]
        runner.submit("train", run_id, argv)
        return read_run(run.path, store.jobs(run=run_id)).summary()

    @app.post("/api/runs/{run_id}/evaluate", status_code=202)
    async def evaluate_run(run_id: str, request: Request) -> dict[str, Any]:
        run = run_or_404(run_id)
        data = await body(request)
        split = str(data.get("split") or "val")
        protocol = data.get("protocol")
        name = f"{split}-{protocol or 'run'}".replace("/", "_")
        out = run.path / "evaluations" / f"{name}.json"
        argv = ["evaluate", str(run.path), "--split", split, "--out", str(out)]
        argv += ["--protocol", str(protocol)] if protocol else []
        return runner.submit("evaluate", run_id, argv).to_dict()

    @app.post("/api/runs/{run_id}/export", status_code=202)
    async def export_run(run_id: str, request: Request) -> dict[str, Any]:
        from ..training.run_dir import RunDirectory

        run = run_or_404(run_id)
        data = await body(request)
        export_format = str(data.get("format") or "onnx")
        if export_format not in ("onnx", "onnx-int8"):
            raise HTTPException(422, f"format: expected onnx or onnx-int8, got {export_format!r}")
        checkpoint = RunDirectory(run.path).checkpoint()
        out = run.path / "exports" / f"model{'-int8' if export_format == 'onnx-int8' else ''}.onnx"
        return runner.submit(
            "export", run_id, ["export", str(checkpoint), str(out), "--format", export_format]
        ).to_dict()

    @app.delete("/api/runs/{run_id}")
    async def delete_run(run_id: str, confirm: str = "") -> dict[str, Any]:
        run = run_or_404(run_id)
        if confirm != run_id:
            raise HTTPException(409, f"deleting removes {run.path}; confirm with ?confirm={run_id}")
        if store.jobs(run=run_id, states=ACTIVE):
            raise HTTPException(409, f"run {run_id} has a job queued or running; stop it first")
        folder = store.inside(run.path, [store.runs])
        if folder.parent != store.runs:
            raise OutsideError(f"{folder} is not a run of this workspace")
        shutil.rmtree(folder)
        store.delete_jobs(run_id)
        return {"id": run_id, "deleted": True}

    @app.get("/api/runs/{run_id}/files/{path:path}")
    async def run_file(run_id: str, path: str) -> FileResponse:
        run = run_or_404(run_id)
        file = store.inside(run.path / path, [run.path])
        if not file.is_file():
            raise HTTPException(404, f"{path} not found in run {run_id}")
        return FileResponse(file, filename=file.name if file.suffix == ".onnx" else None)

    @app.get("/api/runs/{run_id}/jobs/{job_id}/log")
    async def job_log(run_id: str, job_id: str) -> Response:
        jobs = {job.id: job for job in store.jobs(run=run_id)}
        if job_id not in jobs:
            raise HTTPException(404, f"no job {job_id!r} of run {run_id!r}")
        log = runner.log_path(jobs[job_id])
        return Response(log.read_text(errors="replace") if log.is_file() else "", media_type="text/plain")

    @app.get("/api/runs/{run_id}/events")
    async def run_events(run_id: str, request: Request) -> StreamingResponse:
        run_or_404(run_id)

        async def events() -> AsyncIterator[str]:
            last, deadline = None, time.monotonic() + EVENT_STREAM_SECONDS
            while time.monotonic() < deadline and not await request.is_disconnected():
                details = read_run(store.run_dir(run_id), store.jobs(run=run_id)).details(curves=True)
                text = json.dumps(details)
                if text != last:
                    yield f"event: progress\ndata: {text}\n\n"
                    last = text
                if details["state"] not in ACTIVE:
                    yield f"event: end\ndata: {json.dumps({'state': details['state']})}\n\n"
                    return
                await asyncio.sleep(EVENT_SECONDS)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.post("/api/compare")
    async def compare(request: Request) -> dict[str, Any]:
        data = await body(request)
        ids = [str(run_id) for run_id in data.get("runs") or []]
        if len(ids) < 2:
            raise HTTPException(422, "runs: select two or more runs to compare")
        runs = [run_or_404(run_id) for run_id in ids]
        configs = [run_config_dict(run.path) for run in runs]
        return {
            "runs": [run.details(curves=True) for run in runs],
            "changed": diff_configs(configs),
        }

    @app.get("/api/datasets")
    async def list_datasets() -> list[dict[str, Any]]:
        found = [{"name": "synthetic", "data": {"format": "synthetic"}, "builtin": True}]
        found += [{"name": name, "data": data, "builtin": False} for name, data in store.datasets().items()]
        for entry in found:
            folder = store.datasets_dir / entry["name"]
            jobs = store.jobs(run=f"dataset:{entry['name']}")
            checks = [job for job in jobs if job.kind == "check" and job.state not in ACTIVE]
            entry["check"] = runner.log_path(checks[-1]).read_text(errors="replace") if checks else None
            entry["preview"] = (
                f"/api/datasets/{entry['name']}/preview.png" if (folder / "preview.png").is_file() else None
            )
            entry["jobs"] = [job.to_dict() for job in jobs]
        return found

    @app.post("/api/datasets", status_code=201)
    async def add_dataset(request: Request) -> dict[str, Any]:
        data = await body(request)
        name = str(data.get("name") or "")
        if not name or name == "synthetic" or not name.replace("-", "").replace("_", "").isalnum():
            raise HTTPException(422, "name: letters, digits, - and _, and not 'synthetic'")
        root = store.inside(str(data.get("root") or ""), list(store.data_roots))
        section = {"format": str(data.get("format") or "auto"), "root": str(root), "options": data.get("options") or {}}
        if data.get("classes_file"):
            section["classes_file"] = str(store.inside(str(data["classes_file"]), list(store.data_roots)))
        if section["format"] == "auto":
            section["format"] = detect_format(root)
        Config.from_dict({"data": section}, source="dataset")
        store.add_dataset(name, section)
        return {"name": name, "data": section, "jobs": [job.to_dict() for job in check_dataset(name, section)]}

    @app.post("/api/datasets/{name}/check", status_code=202)
    async def recheck_dataset(name: str) -> list[dict[str, Any]]:
        sections = {"synthetic": {"format": "synthetic"}, **store.datasets()}
        if name not in sections:
            raise HTTPException(404, f"no dataset {name!r}")
        return [job.to_dict() for job in check_dataset(name, sections[name])]

    @app.get("/api/datasets/{name}/preview.png")
    async def dataset_preview(name: str) -> FileResponse:
        file = store.inside(store.datasets_dir / name / "preview.png", [store.datasets_dir])
        if not file.is_file():
            raise HTTPException(404, f"no preview of {name!r} yet")
        return FileResponse(file)

    def check_dataset(name: str, section: dict[str, Any]):
        """Jobs that scan a dataset (`pspnet data check`) and draw its preview grid (`pspnet data preview`)."""
        folder = store.datasets_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        config_file = folder / "dataset.yaml"
        config_file.write_text(yaml.safe_dump({"data": section}))
        return [
            runner.submit("check", f"dataset:{name}", ["data", "check", str(config_file)]),
            runner.submit(
                "preview",
                f"dataset:{name}",
                ["data", "preview", str(config_file), "--out", str(folder / "preview.png")],
            ),
        ]

    return app


def presets() -> list[dict[str, str]]:
    """The shipped configs: name and one-line description."""
    from ..presets import list_presets

    return [{"name": name, "description": description} for name, description in list_presets()]


def preset_file(name: str) -> Path:
    from ..presets import preset_path

    return preset_path(name)


def estimate_cost(config: Config, processes: int) -> dict[str, Any]:
    """Parameters, forward FLOPs at the training crop, and rough memory and time per iteration."""
    from .estimate import training_cost

    return training_cost(config, processes)
