"""The HTTP app: health, the model card, `POST /v1/segment`, Prometheus metrics and the page at `/`.

`create_app` wraps one loaded model; every segmentation runs on the single `InferenceWorker`,
so the model is never called from two threads. `run` serves an app with uvicorn: SIGTERM (or
Ctrl-C) stops accepting connections, answers the requests already admitted, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from ..checkpoint import LoadedModel
from ..config import EvalConfig
from ..errors import ConfigError, ImageTooLargeError, NotAnImageError, PSPNetError
from ..inference.predict import predict_array
from .access import TokenGate, add_login
from .label_studio import LabelStudioOptions, add_label_studio_backend
from .metrics import MetricsMiddleware, ServeMetrics
from .segment import Segmentation, segment_upload
from .worker import InferenceWorker, QueueFull

log = logging.getLogger("pspnet.serve")

FIELD = "image"
"""The multipart field that carries the upload."""

MAX_PIXELS = 40_000_000
"""Default pixel cap of uploads, lowered to the inference protocol's own cap where that is smaller."""

WARM_UP_SIZE = 64
"""Side of the grey image run once at start-up; `/readyz` answers 200 after it."""

ERROR_STATUS = ((ImageTooLargeError, 413), (NotAnImageError, 415), (PSPNetError, 400))
"""HTTP status of the errors an upload can cause, most specific first."""

HOW_TO_SEND = (
    f"send the image as multipart field '{FIELD}' (curl -F {FIELD}=@photo.jpg) or as the raw body with an "
    "image/* content type (curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg)"
)


@dataclass(frozen=True)
class ServeOptions:
    """Limits of one server."""

    max_upload_bytes: int = 20 * 2**20
    """Largest request body; a longer one is refused (413) without reading the rest."""
    max_pixels: int = MAX_PIXELS
    """Largest image (width x height), checked from its header before decoding (413)."""
    queue_size: int = 64
    """Requests that may wait while one is segmented; more are answered 503 with Retry-After."""
    upload_seconds: float = 60.0
    """Longest time a client may take to send its upload (408 after it), so that slow senders cannot hold
    the queue's places."""
    token: str | None = None
    """Required of every request but the health probes (see `pspnet.serve.access`); None: no token."""

    def __post_init__(self) -> None:
        if min(self.max_upload_bytes, self.max_pixels, self.upload_seconds) <= 0 or self.queue_size < 0:
            raise ConfigError(
                "the upload size (--max-upload-mb), pixel cap (--max-pixels) and upload time must be "
                f"positive and the queue size (--queue-size) at least 0, got {self}"
            )


def default_pixel_cap(settings: EvalConfig) -> int:
    """`eval.max_pixels` when set, else 40 M pixels or the protocol's own lower cap (whole image: 8 M)."""
    return settings.max_pixels if settings.max_pixels is not None else min(MAX_PIXELS, settings.pixel_cap())


def model_description(loaded: LoadedModel, options: ServeOptions) -> dict[str, Any]:
    """What `GET /v1/model` answers: the model card, how the model runs, and the server's limits."""
    card, config = loaded.card, loaded.config
    return {
        "checkpoint": loaded.path.name,
        "format": loaded.format,
        "encoder": config.model.encoder,
        "classes": list(card.classes.names),
        "palette": [list(colour) for colour in card.classes.palette],
        "in_channels": card.in_channels,
        "mean": list(card.mean),
        "std": list(card.std),
        "protocol": config.eval.describe(),
        "backend": loaded.backend,
        "device": str(loaded.device),
        "limits": {key: value for key, value in asdict(options).items() if key != "token"},
    }


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body; 413 as soon as it is declared or found longer than `max_bytes` (the rest is never read)."""
    too_large = HTTPException(413, f"upload larger than the limit of {max_bytes / 2**20:g} MB (--max-upload-mb)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def multipart_image(request: Request, body: bytes) -> bytes:
    """The file in the multipart field `image` of an already read `body`; 422 naming the field when it is absent."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async with Request(request.scope, replay).form() as form:
        upload = form.get(FIELD)
        if upload is None:
            found = ", ".join(f"'{name}'" for name in form.keys()) or "none"
            raise HTTPException(422, f"multipart field '{FIELD}' is missing (fields sent: {found}); {HOW_TO_SEND}")
        if isinstance(upload, str):
            raise HTTPException(422, f"multipart field '{FIELD}' must be a file, not text; {HOW_TO_SEND}")
        return await upload.read()


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The uploaded image's bytes, from a multipart form or a raw `image/*` body (415 for anything else)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "multipart/form-data" and not media_type.startswith("image/"):
        raise HTTPException(415, f"unsupported content type '{media_type or 'none'}': {HOW_TO_SEND}")
    body = await read_body(request, max_bytes)
    return await multipart_image(request, body) if media_type == "multipart/form-data" else body


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error of the API: `{"detail": message}`, the shape of FastAPI's own errors."""
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line, e.g. `query parameter 'format': Input should be 'json' or 'png'`."""
    parts = []
    for error in exc.errors():
        where, *names = error.get("loc", ("request",))
        parts.append(f"{where} parameter '{'.'.join(map(str, names))}': {error.get('msg')}")
    return "; ".join(parts)


def create_app(
    loaded: LoadedModel, options: ServeOptions | None = None, label_studio: LabelStudioOptions | None = None
) -> FastAPI:
    """The app serving `loaded` under its protocol (`loaded.config.eval`) within `options`' limits; with
    `label_studio`, also as a Label Studio ML backend (`pspnet.serve.label_studio`)."""
    options = options or ServeOptions()
    model, settings = loaded.model, loaded.config.eval
    worker = InferenceWorker(options.queue_size + 1)
    metrics = ServeMetrics(lambda: worker.depth, worker.capacity)
    description = model_description(loaded, options)
    page = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    warm_up_image = np.full((WARM_UP_SIZE, WARM_UP_SIZE, model.card.in_channels), 128, np.uint8)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        app.state.warm_up = worker.enqueue(lambda: predict_array(model, warm_up_image, settings))
        try:
            yield
        finally:  # uvicorn gets here after the admitted requests were answered (or the drain timeout)
            await asyncio.to_thread(worker.close)

    app = FastAPI(title="pspnet", summary="PSPNet semantic segmentation", lifespan=lifespan)
    app.state.worker = worker
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if options.token is not None:
        app.add_middleware(TokenGate, token=options.token, loopback_only=False, open_paths=("/healthz", "/readyz"))
        add_login(app, options.token)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc))

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return error_response(400, "the client closed the connection before its upload was complete")

    @app.exception_handler(PSPNetError)
    async def upload_error(request: Request, exc: PSPNetError) -> JSONResponse:
        return error_response(next(status for kind, status in ERROR_STATUS if isinstance(exc, kind)), str(exc))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the model has run once (the start-up warm-up) and the worker is alive."""
        warm_up = request.app.state.warm_up
        if not warm_up.done():
            return error_response(503, "warming up: the model's first run has not finished")
        if warm_up.exception() is not None:
            return error_response(503, f"the model failed its first run: {warm_up.exception()}")
        if not worker.alive:
            return error_response(503, "the inference worker has stopped")
        return JSONResponse({"status": "ready"})

    @app.get("/v1/model")
    async def model_card() -> dict[str, Any]:
        """Classes and palette, encoder, input channels, inference protocol, backend and the server's limits."""
        return description

    if label_studio is not None:
        add_label_studio_backend(app, loaded, worker, label_studio, options.max_upload_bytes, options.max_pixels)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/segment")
    async def segment(
        request: Request, answer: Literal["json", "png"] = Query("json", alias="format"), overlay: bool = False
    ) -> Response:
        """Segment the uploaded image: JSON (class areas, the label map as a base64 palette PNG, timing) or,
        with `format=png`, the palette PNG whose pixel values are class ids."""
        if answer == "png" and overlay:
            raise HTTPException(
                400, "overlay=true adds a field to the JSON answer; format=png returns the label map alone"
            )
        try:
            ticket = worker.admit()
        except QueueFull as exc:
            return error_response(503, str(exc), {"Retry-After": str(exc.retry_after)})
        with ticket:
            try:
                data = await asyncio.wait_for(read_upload(request, options.max_upload_bytes), options.upload_seconds)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the upload took longer than {options.upload_seconds:g} s") from None
            submitted = time.perf_counter()

            def job() -> tuple[Segmentation, float]:
                waited_ms = (time.perf_counter() - submitted) * 1000
                return segment_upload(model, settings, data, options.max_pixels, overlay), waited_ms

            try:
                result, waited_ms = await asyncio.wrap_future(ticket.submit(job))
            except PSPNetError:
                raise
            except Exception as exc:  # the model failed (e.g. out of memory): this request fails, the server goes on
                log.exception("segmentation failed")
                raise HTTPException(500, f"segmentation failed: {type(exc).__name__}: {exc}") from None
        metrics.inference.observe(result.inference_ms / 1000)
        if answer == "png":
            return Response(
                result.label_png, media_type="image/png", headers={"X-Inference-Ms": f"{result.inference_ms:.2f}"}
            )
        return JSONResponse(result.to_json(waited_ms))

    return app


def run(
    app: FastAPI, host: str = "127.0.0.1", port: int = 8000, drain_seconds: float = 30, quiet: bool = False
) -> None:
    """Serve `app` until SIGTERM or Ctrl-C; then admitted requests get `drain_seconds` to finish."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=drain_seconds,
        log_level="warning" if quiet else "info",
        access_log=not quiet,
    )
