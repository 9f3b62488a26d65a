"""uvicorn's HTTP protocols with the limits uvicorn lacks at the connection layer.

uvicorn arms no timer until a first response and lets httptools buffer an unfinished header
without limit, so a socket that sends nothing, or half a request line, or 100 MiB of one header,
is held for ever at no cost to the client. Here, per connection, before any ASGI code runs:

- **head timeout**: a request's line and headers must arrive within ``header_timeout_s`` of its
  first byte (of the connection, for the first request); otherwise 408 and close (a connection
  that sent nothing is closed without an answer);
- **head size**: the bytes of an unfinished head are counted as they arrive; past
  ``max_header_bytes``: 431 and close, before the parser has buffered more than one read beyond it;
- **probes are never refused for load**: uvicorn answers 503 once connections or requests reach
  ``limit_concurrency``, health probes included, so a connection flood turned the pod unready and
  the kubelet restarted it; ``/v2/health/live`` and ``/v2/health/ready`` are exempt.

Subclasses, not a fork: each overrides the parser callbacks it needs and calls uvicorn's.
"""

from __future__ import annotations

import asyncio
import http
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PROBE_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class GuardedConfig(uvicorn.Config):
    """uvicorn's Config with the connection-layer limits the guarded protocols read."""

    def __init__(self, app: Any, *, header_timeout_s: float, max_header_bytes: int, **kwargs: Any) -> None:
        kwargs.setdefault("http", "httptools")
        parser = kwargs.pop("http")
        super().__init__(app, http=GUARDED_PROTOCOLS[parser], **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        # h11 refuses an oversize head itself, with a 400; its cap stays above ours so ours answers first.
        self.h11_max_incomplete_event_size = 2 * max_header_bytes + 256 * 1024


def refusal(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection: a JSON body like the app's errors."""
    body = json.dumps({"error": message}).encode("ascii")
    return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode("ascii") + body


async def over_limit(scope: Any, receive: Any, send: Any) -> None:
    """503 with Retry-After: connections or requests in flight are at ``max_connections``."""
    body = b'{"error": "server busy: connections or requests at max_connections; retry"}'
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class HeadGuard:
    """The limits, for either parser; a subclass says whether a request head is unfinished."""

    config: GuardedConfig
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    scope: Any
    root_path: str
    connections: set[Any]
    tasks: set[Any]
    _limit: int | None
    _app: Any
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    def _awaiting_head(self) -> bool:
        """No request is in progress: the next bytes begin a head."""
        raise NotImplementedError

    def _in_head(self) -> bool:
        """A head has begun and is unfinished."""
        raise NotImplementedError

    # uvicorn reads ``limit_concurrency`` and then ``app`` after it has set the request's scope, on
    # either parser: its own check is turned off, and ``app`` answers for the limit instead.
    @property
    def limit_concurrency(self) -> int | None:
        return None

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:
        self._limit = value

    @property
    def app(self) -> Any:
        limit = self._limit
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            if self.scope["path"].removeprefix(self.root_path) not in PROBE_PATHS:
                return over_limit
        return self._app

    @app.setter
    def app(self, value: Any) -> None:
        self._app = value

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        began_outside_a_body = self._awaiting_head() or self._in_head()
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            self._disarm()
            return
        if not self._in_head():
            self._head_bytes = 0
            self._disarm()  # between requests uvicorn's keep-alive timer runs
            return
        # A read that began inside a body ends with the next head's start: not counted (at most
        # one read uncounted); one that began awaiting a head is all head.
        self._head_bytes = self._head_bytes + len(data) if began_outside_a_body else 0
        if self._head_bytes > self.config.max_header_bytes:
            self._refuse(431, f"request head over the limit of {self.config.max_header_bytes} bytes "
                              "(max_header_bytes)")
        elif self._head_timer is None:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.config.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._in_head():
            self._refuse(408, f"request head not received within {self.config.header_timeout_s:g} s "
                              "(header_timeout_s)")
        elif self._awaiting_head():
            self.transport.close()  # a connection that never sent a byte: nothing to answer

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        self.transport.write(refusal(status, message))
        self.transport.close()


class GuardedHttpTools(HeadGuard, HttpToolsProtocol):
    """httptools (the default parser) under :class:`HeadGuard`."""

    _head_pending = True
    _began = False

    def _awaiting_head(self) -> bool:
        return self._head_pending and not self._began

    def _in_head(self) -> bool:
        return self._head_pending and self._began

    def on_message_begin(self) -> None:
        self._began = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_pending = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_pending = True
        self._began = False


class GuardedH11(HeadGuard, H11Protocol):
    """h11 under :class:`HeadGuard`."""

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]

    def _in_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])


GUARDED_PROTOCOLS: dict[str, type[asyncio.Protocol]] = {"httptools": GuardedHttpTools, "h11": GuardedH11}
