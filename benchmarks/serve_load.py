"""Load test of `pspnet serve`: one sequential client, 50 concurrent clients, and an overload run.

The server runs the demo-sized model (`configs/synthetic.yaml`: ResNet-18 with the deep stem, output
stride 8; untrained unless `--checkpoint`: the latency does not depend on the weights) in its own
process on 127.0.0.1; every client sends 96x96 PNG scenes as raw `image/png` bodies, one request
after another on a fresh connection. Runs:

1. sequential: one client, `--sequential` requests: latency and throughput of an idle server;
2. concurrent: `--clients` clients at once, `--requests` each, with the default queue (64): errors
   (target 0), p50/p95/p99 latency and throughput against the sequential run;
3. overload: the same clients against a server started with `--queue-size 4`: the requests beyond
   the queue are answered 503 with Retry-After, none fails otherwise, and the server goes on serving.

Everything is bounded: each request times out after 120 s and no request starts after `--time-limit`
seconds of a run. The clients share the machine with the server (on a 2-core machine they take CPU
from it), so the figures are those of a server under that load.

    python benchmarks/serve_load.py [--checkpoint CKPT] [--clients 50] [--requests 4] [--sequential 40]
                                    [--size 96] [--time-limit 300] [--work-dir runs/benchmark-serve]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from machine import cpu_name
from PIL import Image

from pspnet.checkpoint import save_checkpoint
from pspnet.config import load_config
from pspnet.data.synthetic import ContextScenes
from pspnet.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "synthetic.yaml"
REQUEST_TIMEOUT = 120
OVERLOAD_QUEUE = 4


@dataclass
class Run:
    """Outcome of one run: per-request latency of the answered ones, status counts, wall time."""

    name: str
    clients: int
    latencies: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    retry_after: set[str] = field(default_factory=set)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int | str, seconds: float, body: bytes = b"", retry_after: str | None = None) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.latencies.append(seconds)
                self.inference_ms.append(json.loads(body)["inference_ms"])
            if retry_after is not None:
                self.retry_after.add(retry_after)

    def row(self, sequential_throughput: float | None) -> str:
        answered = sum(self.statuses.values())
        ok, refused = self.statuses[200], self.statuses[503]
        errors = answered - ok - refused
        if len(self.latencies) >= 2:
            cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
            p50, p95, p99 = (f"{cuts[i] * 1000:.0f} ms" for i in (49, 94, 98))
        else:
            p50 = p95 = p99 = "-"
        throughput = ok / self.seconds
        ratio = f" ({throughput / sequential_throughput:.2f}x)" if sequential_throughput else ""
        model = f"{statistics.median(self.inference_ms):.0f} ms" if self.inference_ms else "-"
        return (
            f"| {self.name} | {self.clients} | {answered} | {ok} | {refused} | {errors} | {p50} | {p95} | {p99} | "
            f"{throughput:.1f}/s{ratio} | {model} |"
        )


def demo_checkpoint(work_dir: Path) -> Path:
    """An untrained model of the demo's architecture and classes (latency does not depend on the weights)."""
    path = work_dir / "demo-untrained.safetensors"
    if not path.is_file():
        config = load_config(DEMO_CONFIG)
        torch.manual_seed(0)
        model = create_model(config, ContextScenes.classes)
        save_checkpoint(path, model, config.with_num_classes(model.config.num_classes))
    return path


def scenes(count: int, size: int) -> list[bytes]:
    """`count` validation scenes of the built-in data as PNG files."""
    source = ContextScenes("val", count, (size, size), seed=0)
    images = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(source.load(index).image).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`pspnet serve` in its own process on a free loopback port, its output in a log file."""

    def __init__(self, checkpoint: Path, log: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [
            sys.executable,
            "-m",
            "pspnet",
            "--quiet",
            "serve",
            str(checkpoint),
            "--port",
            str(self.port),
            *options,
        ]
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {log}:\n{log.read_text()}")
            time.sleep(0.2)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> int:
        """SIGTERM, then the exit status (negative: ended by that signal, as uvicorn does after draining)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def send(url: str, image: bytes, run: Run) -> None:
    request = urllib.request.Request(f"{url}/v1/segment", data=image, headers={"Content-Type": "image/png"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
            run.record(answer.status, time.perf_counter() - start, answer.read())
    except urllib.error.HTTPError as error:
        run.record(error.code, time.perf_counter() - start, retry_after=error.headers.get("Retry-After"))
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        run.record(type(error).__name__, time.perf_counter() - start)


def load(url: str, images: list[bytes], run: Run, requests: int, time_limit: float) -> Run:
    """`run.clients` threads, each sending `requests` images one after another; none starts after `time_limit` s."""
    barrier = threading.Barrier(run.clients + 1)

    def client(offset: int) -> None:
        barrier.wait()
        for index in range(requests):
            if time.perf_counter() - start > time_limit:
                return
            send(url, images[(offset + index) % len(images)], run)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(run.clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - start
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="model to serve (default: an untrained demo-sized model)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--requests", type=int, default=4, help="requests per concurrent client (default 4)")
    parser.add_argument("--sequential", type=int, default=40, help="requests of the sequential client (default 40)")
    parser.add_argument("--size", type=int, default=96, help="side of the square test scenes (default 96, the demo's)")
    parser.add_argument("--time-limit", type=float, default=300, help="seconds after which a run starts no request")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "benchmark-serve")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or demo_checkpoint(args.work_dir)
    images = scenes(20, args.size)
    print(
        f"{checkpoint.name}, {args.size}x{args.size} PNG scenes; {cpu_name()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}; load average {os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )

    server = Server(checkpoint, args.work_dir / "server.log")
    load(server.url, images, Run("warm-up", 1), 5, args.time_limit)
    sequential = load(server.url, images, Run("sequential", 1), args.sequential, args.time_limit)
    concurrent = load(server.url, images, Run("concurrent", args.clients), args.requests, args.time_limit)
    status = server.stop()

    server = Server(checkpoint, args.work_dir / "server-overload.log", "--queue-size", str(OVERLOAD_QUEUE))
    overload = load(
        server.url,
        images,
        Run(f"overload (--queue-size {OVERLOAD_QUEUE})", args.clients),
        args.requests,
        args.time_limit,
    )
    after = Run("after the overload", 1)
    send(server.url, images[0], after)
    alive = server.process.poll() is None and server.ready() and after.statuses[200] == 1
    overload_status = server.stop()

    base = sequential.statuses[200] / sequential.seconds
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    print(
        "| run | clients | requests | 200 | 503 | other errors | p50 | p95 | p99 | throughput | model time (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in (sequential, concurrent, overload):
        print(run.row(None if run is sequential else base))
    others = {
        status: count for status, count in (concurrent.statuses + overload.statuses).items() if status not in (200, 503)
    }
    print(
        f"\nother errors by kind: {others or 'none'}; Retry-After values seen: {sorted(overload.retry_after) or 'none'}"
    )
    print(
        f"after the overload the server answered /readyz and a segmentation: {alive}; exit statuses after SIGTERM: "
        f"{status}, {overload_status} (-{signal.SIGTERM}: stopped by SIGTERM after draining)"
    )


if __name__ == "__main__":
    main()
