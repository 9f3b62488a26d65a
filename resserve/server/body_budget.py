"""One byte budget for request bodies in flight, across HTTP, gRPC and multipart.

Each connection may send ``max_body_bytes``, and parsing multiplies a body: a JSON tensor of
20 MiB became 368 MiB of Python floats while it parsed (``tests/e2e/test_request_memory.py``).
Before, nothing bounded the sum: 96 concurrent 19 MiB bodies with a valid key grew the server by
1.95 GB, 12 JSON ones by 1.6 GB (issue 30). Now a request reserves its body times the copies its
kind makes *before the body is read*, and gives the bytes back when it is answered:

- HTTP with a Content-Length reserves at once, and is refused (503, Retry-After) when the budget
  cannot cover it; a chunked body reserves chunk by chunk as it arrives; an encoded body reserves
  its inflated size once that has been counted, before it is inflated;
- gRPC cannot know a message's size before grpc reads it: a call reserves ``max_body_bytes`` and
  waits for room (HTTP/2 flow control keeps the message on the client meanwhile), then keeps only
  what the message it read needs.

All on the event loop's thread: no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from resserve.errors import QueueFullError

# Peak memory per body byte while a request is parsed and run (measured with
# tests/e2e/test_request_memory.py: 20 MiB of JSON floats peaked at 368 MiB over the idle server).
JSON_COPIES = 18
RESERVATION = "resserve.body_reservation"  # the request's Reservation, in the ASGI scope's state
# The body, the tensors viewed or copied out of it, the batch; a multipart body: the stream's
# chunks, the parts (kept in memory, never spooled to disk), the images read from them.
BINARY_COPIES = 3
GRPC_COPIES = 3  # the message's bytes, the parsed message, the tensors


class BodyBudgetFullError(QueueFullError):
    """The bodies in flight hold the whole budget: retry (503 with Retry-After; gRPC RESOURCE_EXHAUSTED)."""


def copies_for(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """How many times its size an HTTP body costs while parsed: JSON numbers are Python objects."""
    media_type = b""
    for name, value in headers:
        if name == b"inference-header-content-length":
            return BINARY_COPIES  # OIP binary tensors: a small JSON header, then raw bytes
        if name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
    return JSON_COPIES if media_type.endswith(b"json") else BINARY_COPIES


class BodyBudget:
    """Bytes reserved by the bodies in flight, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._room = asyncio.Condition()

    def take(self, size: int) -> Reservation:
        """Reserve ``size`` bytes now, or raise BodyBudgetFullError."""
        reservation = Reservation(self)
        reservation.grow(size)
        return reservation

    async def wait_take(self, size: int) -> Reservation:
        """Reserve ``size`` bytes once the budget has room (the caller bounds the wait)."""
        async with self._room:
            await self._room.wait_for(lambda: self.used + size <= self.limit)
            return self.take(size)

    def _give(self, size: int) -> None:
        self.used -= size
        if self._room._waiters:  # type: ignore[attr-defined]  # wake a waiting gRPC call, if any
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._room:
            self._room.notify_all()


class Reservation:
    """One request's share of the budget; :meth:`release` gives it back (again: nothing)."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow(self, more: int) -> None:
        budget = self.budget
        if budget.used + more > budget.limit:
            raise BodyBudgetFullError(
                f"server busy: request bodies in flight hold {budget.used} of {budget.limit} bytes "
                f"(max_body_memory_bytes); this one needs {more} more; retry")
        budget.used += more
        self.size += more

    def resize(self, size: int) -> None:
        """Keep ``size`` bytes: less gives back the rest, more must fit."""
        if size > self.size:
            self.grow(size - self.size)
        elif size < self.size:
            spare, self.size = self.size - size, size
            self.budget._give(spare)

    def release(self) -> None:
        self.resize(0)
