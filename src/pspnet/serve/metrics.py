"""Prometheus metrics of one app (its own registry): requests by route and status, latency, queue depth."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; from a health check to a large image on a slow CPU."""


class ServeMetrics:
    """The app's metrics; `registry` is what `GET /metrics` exports."""

    def __init__(self, queue_depth: Callable[[], float], capacity: int):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pspnet_http_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pspnet_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "pspnet_inference_seconds",
            "Time the model took per segmented image",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        Gauge(
            "pspnet_queue_depth",
            "Segmentation requests admitted and not finished (running and waiting)",
            registry=self.registry,
        ).set_function(queue_depth)
        Gauge(
            "pspnet_queue_capacity",
            "Segmentation requests admitted at most; more are answered 503",
            registry=self.registry,
        ).set(capacity)


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request by its route template (not its raw path) and status."""

    def __init__(self, app: Any, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_note_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
