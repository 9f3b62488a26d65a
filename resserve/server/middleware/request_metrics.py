"""Pure ASGI middleware: the in-flight gauge and request duration per model, endpoint and status."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resserve.metrics import Metrics, SeriesCache


class MetricsMiddleware:
    """Request duration by model, version, endpoint and status; the in-flight gauge.

    Only inference endpoints (``.../classify``, ``.../infer``) are recorded: health probes would
    drown the figures. Handlers put ``model`` and ``version`` into ``scope["state"]`` once the
    model is found, so a flood of unknown names cannot blow up label cardinality.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.series = SeriesCache()  # labels from found models only, never a request's own words

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            path: str = scope.get("path", "")
            endpoint = path.rsplit("/", 1)[-1] if path.startswith("/v2/models/") else ""
            if endpoint in ("classify", "infer"):
                state: dict[str, Any] = scope.get("state", {})
                model, version, code = state.get("model", ""), state.get("version", ""), str(status)
                self.series(self.metrics.request_duration, model, version, endpoint, code).observe(
                    time.perf_counter() - start)
                self.series(self.metrics.requests, model, endpoint, code).inc()
