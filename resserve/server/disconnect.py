"""Cancel a request's work when its client goes away.

uvicorn does not cancel a handler whose client disconnected: the handler would go on decoding,
queueing and running the engine for nobody, and under a retry storm that dead work is most of
the load. Once the body has been read, the only ASGI message left to receive is
``http.disconnect``; a watcher waits for it and cancels the handler's task.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive

from resserve.errors import ClientDisconnectedError


class CancelOnDisconnect:
    """``async with CancelOnDisconnect(request.receive):`` around work that follows the body read.

    The enclosed block is cancelled when the client disconnects, and ends in
    :class:`ClientDisconnectedError` instead of a bare cancellation. Enter it only after the body
    was read whole: the watcher consumes every message it receives.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.disconnected = False

    async def __aenter__(self) -> CancelOnDisconnect:
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch(), name="disconnect-watcher")
        return self

    async def _watch(self) -> None:
        while True:
            try:
                message = await self._receive()
            except Exception:  # the transport broke: nothing to watch any more
                return
            if message["type"] == "http.disconnect":
                self.disconnected = True
                assert self._task is not None
                self._task.cancel()
                return

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        assert self._watcher is not None and self._task is not None
        self._watcher.cancel()
        if self.disconnected:
            # Take our own cancel back. If someone else cancelled too (the server shutting down),
            # theirs stands and the CancelledError goes on; otherwise the handler ends in a 499.
            if self._task.uncancel() == 0 and (exc_type is asyncio.CancelledError or exc is None):
                raise ClientDisconnectedError("the client disconnected; its request was cancelled")
        return False
