"""Pure ASGI middleware: body-size and body-time limits, in-flight gauge and request-duration metrics.

Pure ASGI (not BaseHTTPMiddleware) because it runs on every request and must not buffer bodies:
the size limit counts bytes as they arrive and stops reading at the limit, so an oversize
upload costs at most the limit in memory; the time limit ends a body that trickles in.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resserve.errors import PayloadTooLargeError, RequestTimeoutError
from resserve.metrics import Metrics
from resserve.server.errors import error_response


class BodyLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes``: at once from Content-Length, else while reading;
    408 for a body not received whole within ``body_timeout_s`` of the request's start (a client
    trickling a body holds a connection and a read, never for ever); and 431 for request headers
    over ``max_header_bytes`` (names and values together)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_header_bytes: int | None = None,
                 body_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.max_header_bytes is not None:
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.max_header_bytes:
                response = error_response(431, f"request headers of {size} bytes exceed the limit of "
                                               f"{self.max_header_bytes}")
                await response(scope, receive, send)
                return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    response = error_response(413, f"body of {declared} bytes exceeds the limit of {self.max_bytes}")
                    await response(scope, receive, send)
                    return
        received = 0
        limit = self.max_bytes
        timeout_s = self.body_timeout_s
        body_by = None if timeout_s is None else time.monotonic() + timeout_s
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done or body_by is None:  # after the body only http.disconnect is left: no limit
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(max(0.0, body_by - time.monotonic())):
                        message = await receive()
                except TimeoutError:
                    raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s "
                                              "(body_timeout_s)") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Request duration by model, version, endpoint and status; the in-flight gauge.

    Only inference endpoints (``.../classify``, ``.../infer``) are recorded: health probes would
    drown the figures. Handlers put ``model`` and ``version`` into ``scope["state"]`` once the
    model is found, so a flood of unknown names cannot blow up label cardinality.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
                model, version = state.get("model", ""), state.get("version", "")
                self.metrics.request_duration.labels(model, version, endpoint, str(status)).observe(
                    time.perf_counter() - start)
                self.metrics.requests.labels(model, endpoint, str(status)).inc()
