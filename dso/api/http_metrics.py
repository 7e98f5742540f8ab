"""ASGI middleware: request counts and latency per route template (never per id or raw path)."""

from __future__ import annotations

import time
from typing import Any

from dso.telemetry import LoopMetrics

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetricsMiddleware:
    """Counts ``dso_http_requests_total{method, route, status}`` and times requests until the response starts."""

    def __init__(self, app: Any, metrics: LoopMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                self._observe(scope, status["code"], time.perf_counter() - start)
                status["observed"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if "observed" not in status:  # the app died before answering
                self._observe(scope, status["code"], time.perf_counter() - start)

    def _observe(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED
        method = scope.get("method", "GET")
        method = method if method in METHODS else "OTHER"  # bounded label values
        self.metrics.http_requests.labels(method, template, str(status)).inc()
        self.metrics.http_duration.labels(method, template).observe(seconds)
