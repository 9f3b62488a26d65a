"""The SERVER span of each HTTP request: pure ASGI, inside the request-id middleware (so the span
carries the request id) and outside everything else (so a 401 or a 413 is traced too).

The span is named once routing is done, from the route's template (``POST
/v2/models/{name}/infer``): one name per endpoint, never one per model or image. With tracing
off the middleware is not installed at all.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resserve.logs import request_id
from resserve.server.middleware.request_id import TRACE_SCOPE_KEY
from resserve.tracing import Tracing


class TracingMiddleware:
    """One SERVER span per request, child of the client's ``traceparent``."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": scope["path"]}
        if (rid := request_id.get()) is not None:
            attributes["request_id"] = rid
        if client := scope.get("client"):
            attributes["client.address"] = client[0]
        with self.tracing.server_span(method, scope["headers"], attributes) as span:
            assert span is not None
            scope[TRACE_SCOPE_KEY] = span.get_span_context()

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = scope.get("route")
                if (template := getattr(route, "path", None)) is not None:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                state = scope.get("state") or {}
                for key in ("model", "version"):
                    if (value := state.get(key)) is not None:
                        span.set_attribute(key, value)
