"""Pure ASGI middleware: header size, body size and body time limits.

Pure ASGI (not BaseHTTPMiddleware) because it runs on every request and must not buffer bodies:
the size limit counts bytes as they arrive and stops reading at the limit, so an oversize
upload costs at most the limit in memory; the time limit ends a body that trickles in.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resserve.errors import PayloadTooLargeError, RequestTimeoutError
from resserve.server.body_budget import RESERVATION, BodyBudget, BodyBudgetFullError, copies_for
from resserve.server.error_responses import error_response, response_for


class HeaderLimitMiddleware:
    """Answer 431 for request headers over ``max_header_bytes`` (names and values together). The
    outermost middleware: a header flood is refused before anything reads a header (request ids,
    API keys, trace context, logging), so 4.5 million ``X-API-Key`` lines are not each hashed."""

    def __init__(self, app: ASGIApp, max_header_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.max_header_bytes:
                response = error_response(431, f"request headers of {size} bytes exceed the limit of "
                                               f"{self.max_header_bytes}")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes``: at once from Content-Length, else while reading;
    408 for a body not received whole within ``body_timeout_s`` of the request's start (a client
    trickling a body holds a connection and a read, never for ever); 503 with Retry-After when the
    body budget (:mod:`resserve.server.body_budget`) cannot cover the body and its parse copies:
    from Content-Length before a byte is read, else chunk by chunk. The reservation lasts until the
    request is answered."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float | None = None,
                 budget: BodyBudget | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
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
        copies = copies_for(scope["headers"])
        reservation = None
        if self.budget is not None:
            try:
                reservation = self.budget.take(max(declared or 0, 0) * copies)
            except BodyBudgetFullError as busy:
                await response_for(busy)(scope, receive, send)
                return
            scope.setdefault("state", {})[RESERVATION] = reservation
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
                if reservation is not None and received * copies > reservation.size:
                    reservation.resize(received * copies)  # a chunked body, or one longer than declared
                body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            if reservation is not None:
                reservation.release()
