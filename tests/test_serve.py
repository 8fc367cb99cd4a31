"""`pspnet serve`: every endpoint and error through FastAPI's test client, the bounded queue, SIGTERM
draining a real server, and the page driven by headless Chromium (Playwright)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_checkpoint
from PIL import Image

from pspnet.checkpoint import open_model
from pspnet.cli import main
from pspnet.data.synthetic import ContextScenes
from pspnet.inference.predict import predict_image

if os.environ.get("CI") != "true":  # CI installs every extra: there a missing FastAPI is a failure
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'pspnet[serve]'")
    pytest.importorskip("httpx", reason="FastAPI's test client needs httpx (the test extra)")
from fastapi.testclient import TestClient

from pspnet.serve.app import ServeOptions, create_app

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SIZE = (40, 56)  # height, width of the test scenes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.safetensors")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return open_model(checkpoint)


def started(app) -> TestClient:
    """A test client whose app has started and finished its warm-up run."""
    client = TestClient(app).__enter__()
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def client(loaded, checkpoint):
    client = started(create_app(loaded))
    yield client
    client.__exit__(None, None, None)


def scene(index: int = 0, size=SIZE) -> Image.Image:
    return Image.fromarray(ContextScenes("val", index + 1, size).load(index).image)


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def post_raw(client: TestClient, data: bytes, content_type: str = "image/png", query: str = ""):
    return client.post(f"/v1/segment{query}", content=data, headers={"content-type": content_type})


def label_of(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "P"
    return np.array(image)


def test_health_readiness_model_card_metrics_and_page(client, loaded):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    card = client.get("/v1/model").json()
    assert card["classes"] == list(ContextScenes.classes.names)
    assert card["palette"] == [list(colour) for colour in ContextScenes.classes.palette]
    assert (card["encoder"], card["in_channels"], card["backend"], card["device"]) == (
        "resnet18_deepstem",
        3,
        "torch",
        "cpu",
    )
    assert card["protocol"] == "whole image, scales [1], no flip" and card["checkpoint"] == "model.safetensors"
    assert (card["format"], card["mean"], card["std"]) == ("pspnet", list(loaded.card.mean), list(loaded.card.std))
    assert card["limits"] == {
        "max_upload_bytes": 20 * 2**20,
        "max_pixels": 40_000_000,
        "queue_size": 64,
        "upload_seconds": 60,
    }
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and not any(
        ref in page.text for ref in ('src="http', 'href="http', "url(http", "@import")
    )
    assert (
        client.post("/v1/segment", content=encoded(scene()), headers={"content-type": "image/png"}).status_code == 200
    )
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'pspnet_http_requests_total{route="/v1/segment",status="200"}' in text
    assert 'pspnet_http_request_duration_seconds_bucket{le="0.005",route="/healthz"}' in text
    assert "pspnet_queue_depth 0.0" in text and "pspnet_queue_capacity 65.0" in text
    assert "pspnet_inference_seconds_count" in text


def test_label_png_is_what_pspnet_predict_writes(client, checkpoint, tmp_path):
    path = tmp_path / "street.png"
    scene(1).save(path)
    assert main(["--quiet", "predict", str(checkpoint), str(path), "--out", str(tmp_path / "out")]) == 0
    written = (tmp_path / "out/labels/street.png").read_bytes()

    answer = client.post("/v1/segment", files={"image": ("street.png", path.read_bytes(), "image/png")})
    assert answer.status_code == 200
    result = answer.json()
    served = base64.b64decode(result["label_png"])
    assert np.array_equal(label_of(served), label_of(written)) and served == written  # same ids, same palette
    raw = post_raw(client, path.read_bytes(), query="?format=png")
    assert raw.headers["content-type"] == "image/png" and raw.content == written
    assert float(raw.headers["x-inference-ms"]) > 0

    label = label_of(written)
    counts = np.bincount(label.ravel(), minlength=11)
    assert (result["width"], result["height"]) == (SIZE[1], SIZE[0]) and result["inference_ms"] > 0
    assert [c["id"] for c in result["classes"]] == sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
    assert [c["pixels"] for c in result["classes"]] == sorted(counts[counts > 0], reverse=True)
    assert sum(c["fraction"] for c in result["classes"]) == pytest.approx(1.0)
    first = result["classes"][0]
    assert first["name"] == ContextScenes.classes.names[first["id"]]
    assert first["color"] == list(ContextScenes.classes.palette[first["id"]])
    assert "overlay_png" not in result


def test_overlay_is_added_on_request(client):
    result = client.post("/v1/segment?overlay=true", files={"image": ("a.png", encoded(scene()), "image/png")}).json()
    overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay_png"])))
    assert overlay.mode == "RGB" and overlay.size == (SIZE[1], SIZE[0])


def photo_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: the camera was turned; viewers rotate the pixels 90 degrees clockwise
    return encoded(scene(2), "JPEG", exif=exif, quality=95)


@pytest.mark.parametrize(
    "name,data",
    [
        ("grey", lambda: encoded(scene().convert("L"))),
        ("rgba", lambda: encoded(scene().convert("RGBA"))),
        ("16-bit grey", lambda: encoded(Image.fromarray(np.asarray(scene().convert("L"), np.uint16) * 257))),
        ("cmyk jpeg", lambda: encoded(scene().convert("CMYK"), "JPEG")),
        ("palette", lambda: encoded(scene().convert("P"))),
        ("exif orientation", lambda: photo_with_orientation(6)),
    ],
)
def test_image_kinds_are_converted_as_predict_converts_them(client, loaded, name, data):
    data = data()
    result = post_raw(client, data, "image/jpeg" if "jpeg" in name or "exif" in name else "image/png").json()
    expected = predict_image(loaded.model, Image.open(io.BytesIO(data)))  # the library's route: EXIF applied
    assert np.array_equal(label_of(base64.b64decode(result["label_png"])), expected)
    turned = name == "exif orientation"
    assert (result["height"], result["width"]) == (SIZE[::-1] if turned else SIZE)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels and holds none: only a header reader accepts it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    size = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", size + bytes([8, 2, 0, 0, 0])) + chunk(b"IDAT", b"")


@pytest.fixture(scope="module")
def limited(loaded, checkpoint):
    """A server with a 64 KiB upload limit and a 10 000 pixel cap."""
    client = started(create_app(loaded, ServeOptions(max_upload_bytes=64 * 2**10, max_pixels=10_000)))
    yield client
    client.__exit__(None, None, None)


@pytest.mark.parametrize(
    "send,status,message",
    [
        (lambda c: post_raw(c, os.urandom(70_000)), 413, "upload larger than the limit of 0.0625 MB (--max-upload-mb)"),
        (
            lambda c: c.post("/v1/segment", files={"image": ("a.png", os.urandom(70_000), "image/png")}),
            413,
            "upload larger",
        ),
        (
            lambda c: post_raw(c, encoded(Image.new("RGB", (101, 100)))),
            413,
            "image (upload) is 101x100 (0.0 M pixels), more than the cap of 0.0 M pixels",
        ),
        (lambda c: post_raw(c, png_header(50_000, 50_000)), 413, "refused before decoding"),  # a bomb: never decoded
        (lambda c: post_raw(c, b"GIF89a? no, just text"), 415, "not an image format Pillow recognises"),
        (lambda c: post_raw(c, encoded(scene())[:400]), 400, "cannot read image (upload)"),  # truncated
        (lambda c: post_raw(c, b""), 400, "empty upload"),
        (lambda c: c.post("/v1/segment", files={"image": ("a.png", b"", "image/png")}), 400, "empty upload"),
        (lambda c: post_raw(c, b"{}", "application/json"), 415, "unsupported content type 'application/json'"),
        (lambda c: c.post("/v1/segment", content=encoded(scene())), 415, "unsupported content type 'none'"),
        (
            lambda c: c.post("/v1/segment", files={"file": ("a.png", encoded(scene()), "image/png")}),
            422,
            "multipart field 'image' is missing (fields sent: 'file')",
        ),
        (
            lambda c: c.post("/v1/segment", data={"image": "a.png"}, files={"x": ("x", b"x")}),
            422,
            "multipart field 'image' must be a file",
        ),
        (
            lambda c: post_raw(c, encoded(scene()), query="?format=jpeg"),
            422,
            "query parameter 'format': Input should be",
        ),
        (
            lambda c: post_raw(c, encoded(scene()), query="?format=png&overlay=true"),
            400,
            "format=png returns the label map",
        ),
        (lambda c: c.get("/v1/segment"), 405, "Method Not Allowed"),
    ],
)
def test_bad_requests_get_a_json_error_and_the_server_goes_on(limited, send, status, message):
    answer = send(limited)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    assert post_raw(limited, encoded(scene())).status_code == 200


def drive(app, body_chunks, headers=()) -> tuple[int, int]:
    """Send one `POST /v1/segment` straight to the ASGI app; (status, body chunks the app asked for).
    A chunk `None` is the client going away; `"slow"` one that never comes."""
    asked, status = 0, None

    async def receive():
        nonlocal asked
        chunk = body_chunks[asked] if asked < len(body_chunks) else None
        asked += 1
        if chunk == "slow":
            await asyncio.sleep(60)
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": asked < len(body_chunks)}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/segment",
        "raw_path": b"/v1/segment",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"image/png"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return status, asked


def test_an_oversized_body_is_not_read_past_the_limit(loaded, checkpoint):
    app = create_app(loaded, ServeOptions(max_upload_bytes=10_000))
    chunks = [bytes(1000)] * 1000  # 1 MB sent in 1 kB pieces, without a Content-Length
    assert drive(app, chunks) == (413, 11)  # refused at the first byte over the limit
    assert drive(app, chunks, [(b"content-length", b"1000000")]) == (413, 0)  # refused from the header alone


def test_slow_and_vanishing_uploads_give_their_place_back(loaded, checkpoint):
    app = create_app(loaded, ServeOptions(queue_size=0, upload_seconds=0.2))
    assert drive(app, [bytes(100), "slow"]) == (408, 2)
    assert drive(app, [bytes(100), None]) == (400, 2)
    assert app.state.worker.depth == 0  # both places are free again


class GatedModel:
    """The tiny model behind a gate: each call announces itself and waits until the test opens the gate;
    records the threads that call it and how many calls overlap."""

    def __init__(self, model):
        self.model, self.card = model, model.card
        self.entered, self.gate = threading.Semaphore(0), threading.Event()
        self.threads, self.active, self.most_active = set(), 0, 0
        self.gate.set()

    def __call__(self, batch):
        self.threads.add(threading.get_ident())
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self.entered.release()
        self.gate.wait(timeout=60)
        try:
            return self.model(batch)
        finally:
            self.active -= 1


def in_thread(action) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(action()))
    thread.start()
    return thread, result


def wait_until(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_full_queue_answers_503_with_retry_after(loaded, checkpoint):
    model = GatedModel(loaded.model)
    app = create_app(dataclasses.replace(loaded, model=model), ServeOptions(queue_size=1))  # one running, one waiting
    client = started(app)
    try:
        assert model.entered.acquire(timeout=1)  # the warm-up's call
        model.gate.clear()
        data = encoded(scene())
        running, first = in_thread(lambda: post_raw(client, data))
        assert model.entered.acquire(timeout=60)  # in the model
        waiting, second = in_thread(lambda: post_raw(client, data))
        wait_until(lambda: app.state.worker.depth == 2, "the second request to wait")
        refused = post_raw(client, data)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "the inference queue is full" in refused.json()["detail"]
        assert "pspnet_queue_depth 2.0" in client.get("/metrics").text
        model.gate.set()
        for thread in (running, waiting):
            thread.join(60)
        assert [answer.status_code for answer in first + second] == [200, 200]
        assert post_raw(client, data).status_code == 200  # and it goes on
        assert 'pspnet_http_requests_total{route="/v1/segment",status="503"} 1.0' in client.get("/metrics").text
    finally:
        model.gate.set()
        client.__exit__(None, None, None)


def test_concurrent_requests_reach_the_model_one_at_a_time_on_one_thread(loaded, checkpoint):
    model = GatedModel(loaded.model)
    client = started(create_app(dataclasses.replace(loaded, model=model), ServeOptions(queue_size=8)))
    try:
        data = [encoded(scene(index)) for index in range(6)]
        threads = [in_thread(lambda item=item: post_raw(client, item)) for item in data]
        for thread, _ in threads:
            thread.join(60)
        answers = [result[0] for _, result in threads]
        assert [answer.status_code for answer in answers] == [200] * 6
        assert len(model.threads) == 1 and model.most_active == 1
        for item, answer in zip(data, answers):  # each answer is its own image's
            expected = predict_image(loaded.model, Image.open(io.BytesIO(item)))
            assert np.array_equal(label_of(base64.b64decode(answer.json()["label_png"])), expected)
    finally:
        client.__exit__(None, None, None)


class FailingModel:
    """Fails on its second call (the first is the warm-up), as a model out of memory would."""

    def __init__(self, model):
        self.model, self.card, self.calls = model, model.card, 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("out of memory")
        return self.model(batch)


def test_a_failing_model_fails_one_request_not_the_server(loaded, checkpoint):
    client = started(create_app(dataclasses.replace(loaded, model=FailingModel(loaded.model))))
    try:
        failed = post_raw(client, encoded(scene()))
        assert (
            failed.status_code == 500 and failed.json()["detail"] == "segmentation failed: RuntimeError: out of memory"
        )
        assert post_raw(client, encoded(scene())).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_serve_refuses_bad_limits_and_missing_files(checkpoint, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["serve", str(checkpoint), "--queue-size", "-1"]) == 2
    error = capsys.readouterr().err
    assert "missing.safetensors" in error and "--queue-size" in error


# A real `pspnet serve` process whose uploads wait in the model until the test creates the file `go`
# (the start-up warm-up does not wait): the request is surely in flight when SIGTERM arrives.
HELD_SERVE = """
import pathlib, sys, time
import pspnet.serve.segment as segment
folder, real = pathlib.Path(sys.argv[1]), segment.predict_array
def held(*args, **kwargs):
    (folder / "started").touch()
    deadline = time.monotonic() + 60
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return real(*args, **kwargs)
segment.predict_array = held
from pspnet.cli import main
sys.exit(main(sys.argv[2:]))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(command: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start a server on a free loopback port; (process, base URL) once `/readyz` answers 200."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return process, url
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_answers_the_request_in_flight_then_exits(checkpoint, tmp_path):
    command = [sys.executable, "-c", HELD_SERVE, str(tmp_path), "serve", str(checkpoint)]
    process, url = start_server(command, tmp_path / "server.log")
    try:
        request = urllib.request.Request(
            f"{url}/v1/segment", data=encoded(scene()), headers={"Content-Type": "image/png"}
        )
        client, answers = in_thread(lambda: urllib.request.urlopen(request, timeout=60).read())
        wait_until((tmp_path / "started").exists, "the upload to reach the model")
        process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: refuses_connections(int(url.rsplit(":", 1)[1])), "the server to stop accepting connections", 30
        )
        (tmp_path / "go").touch()
        client.join(60)
        assert len(json.loads(answers[0])["classes"]) >= 1  # answered in full after SIGTERM
        assert process.wait(60) == -signal.SIGTERM  # uvicorn exits by the signal it stopped for (status 143)
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    finally:
        (tmp_path / "go").touch()
        if process.poll() is None:
            process.kill()
            process.wait()


def chromium_path() -> str:
    """Debian's Chromium, or a skip saying why; under CI=true a missing browser fails the run instead."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401  (heavy and optional: only for this test)
    except ImportError:
        reason = "Playwright is not installed (pip install playwright)"
    else:
        reason = None if browser else "Chromium is not installed (apt-get install chromium)"
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true needs the browser test to run")
    if reason:
        pytest.skip(reason)
    return browser


def test_the_page_segments_an_upload_in_chromium(checkpoint, tmp_path):
    browser_path = chromium_path()
    from playwright.sync_api import sync_playwright  # heavy and optional: only for this test

    image = tmp_path / "harbour.png"
    scene(3, (96, 128)).save(image)
    process, url = start_server([sys.executable, "-m", "pspnet", "serve", str(checkpoint)], tmp_path / "server.log")
    outside: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on(
                "request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None
            )
            page.goto(f"{url}/")
            page.wait_for_selector("#legend li")
            assert page.locator("#legend li").all_inner_texts() == list(ContextScenes.classes.names)
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#overlay[data-ready]", timeout=60_000)
            assert page.locator("#photo").evaluate("img => img.complete && img.naturalWidth") == 128
            shares = [float(text.rstrip("%")) for text in page.locator("#areas td.share").all_inner_texts()]
            assert shares and sum(shares) == pytest.approx(100.0, abs=1e-9)
            names = [row.split("\t")[0].strip() for row in page.locator("#areas tbody tr").all_inner_texts()]
            assert set(names) <= set(ContextScenes.classes.names)
            page.focus("#opacity")
            page.keyboard.press("ArrowLeft")  # the slider works from the keyboard
            assert page.locator("#overlay").evaluate("canvas => canvas.style.opacity") == "0.55"
            assert page.locator("#opacity-value").inner_text() == "55%"
            assert page.locator("#error").inner_text() == ""
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(60)
    assert outside == []  # no external assets
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_token_guards_the_server_but_not_its_health_probes(loaded):
    with TestClient(create_app(loaded, ServeOptions(token="s3cret"))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/model").status_code == 401
        assert (
            client.post("/v1/segment", content=encoded(scene()), headers={"content-type": "image/png"}).status_code
            == 401
        )
        assert client.get("/", headers={"accept": "text/html"}, follow_redirects=False).headers["location"] == "/login"
        model = client.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).json()
        assert "s3cret" not in json.dumps(model)
        assert client.post("/login", data={"token": "wrong"}).status_code == 401
        assert client.post("/login", data={"token": "s3cret"}, follow_redirects=False).status_code == 303
        answer = client.post("/v1/segment", content=encoded(scene()), headers={"content-type": "image/png"})
        assert answer.status_code == 200  # with the login's cookie


def test_a_non_loopback_host_needs_a_token_or_an_explicit_no_token(checkpoint, capsys):
    assert main(["serve", str(checkpoint), "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 lets other machines in: set --token" in capsys.readouterr().err
    assert main(["serve", str(checkpoint), "--host", "0.0.0.0", "--token", "t", "--no-token"]) == 2
