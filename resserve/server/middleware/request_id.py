"""Request ids and the access log: a pure ASGI middleware, outermost, so every answer (a 401, a
413 refused from its Content-Length, a 500) carries ``X-Request-ID`` and gets its access line.

The id is the client's ``X-Request-ID`` when it is a sane token (printable, no spaces, at most
128 characters: a log line or a header is never the place for a client's control characters),
else a new one: 32 hex digits, a counter hashed with this process's random key (unique like a
uuid4, without a ``getrandom`` system call per request, and saying nothing of the traffic between
two answers or of which worker gave them). It is set in :data:`resserve.logs.request_id` for the
request's task, so every log record written while handling it carries it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resserve.logs import request_id

HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
# Probes and scrapes every few seconds would drown the requests that matter.
QUIET_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
access = logging.getLogger("resserve.access")
# Where the tracing middleware, inside this one, leaves the request span's context: the access
# line is written after that span ends, and still names its trace.
TRACE_SCOPE_KEY = "resserve.span_context"


_KEY = b""
_COUNTER = itertools.count()


def _reseed() -> None:
    """A fresh key: at import, and in a forked child (workers are spawned, but a fork must not
    repeat its parent's ids)."""
    global _KEY, _COUNTER
    _KEY = secrets.token_bytes(32)
    _COUNTER = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """32 hex digits: this process's counter under its random key (distinct counters, distinct ids)."""
    return hashlib.blake2b(next(_COUNTER).to_bytes(16, "big"), key=_KEY, digest_size=16).hexdigest()


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's id if it is a sane token, else a fresh one."""
    for name, value in headers:
        if name == HEADER and _SANE.fullmatch(value):
            return value.decode("ascii")
    return new_request_id()


class RequestIdMiddleware:
    """Echo or assign ``X-Request-ID``; write one access line per request (``access_log``)."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope["headers"])
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode("ascii"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log and scope["path"] not in QUIET_PATHS:
                client = scope.get("client")
                extra = {"method": scope["method"], "path": scope["path"], "status": status,
                         "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                         "client": f"{client[0]}:{client[1]}" if client else None}
                if (span := scope.get(TRACE_SCOPE_KEY)) is not None:
                    extra |= {"trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}
                access.info("%s %s %d", scope["method"], scope["path"], status, extra=extra)
            request_id.reset(token)
