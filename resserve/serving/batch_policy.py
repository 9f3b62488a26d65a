"""When a batch leaves the queue, and how big it may be: the strategy the batch queue asks.

The queue collects; a policy decides. :class:`FixedDelay` is Triton's dynamic batcher (dispatch at
``max_batch_size`` rows, at a preferred size, or ``max_queue_delay_ms`` after the oldest request
arrived); :class:`~resserve.serving.adaptive.SloBatchPolicy` holds against a latency target.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol


class QueueView(Protocol):
    """What a policy may see of the queue while it holds a batch."""

    @property
    def closed(self) -> bool: ...

    def queued_rows(self, cap: int | None = None) -> int:
        """Rows of the waiting requests, oldest first, that fit in ``cap`` (max_batch_size)."""
        ...

    def oldest(self) -> tuple[float, float] | None:
        """(enqueued, received) of the oldest waiting request, monotonic; None when none waits."""
        ...

    async def wait_for_arrival(self, timeout_s: float) -> bool:
        """Wait until a request arrives or ``timeout_s`` passes; False on timeout."""
        ...


class BatchPolicy(Protocol):
    """A batching strategy: told of arrivals and engine runs, asked how long to hold."""

    reports: bool  # whether its decisions are exported (resserve_batcher_batch_cap, planned_wait)

    def arrived(self, now: float) -> None: ...

    def ran(self, rows: int, seconds: float) -> None: ...

    async def hold(self, queue: QueueView) -> int | None:
        """Hold until the batch should go; the most rows it may carry (None: the queue emptied
        meanwhile, another instance took what was waiting)."""
        ...


class FixedDelay:
    """Dispatch at ``max_batch_size`` rows, at a preferred batch size, or ``max_queue_delay_ms``
    after the oldest waiting request was queued, whichever comes first."""

    reports = False

    def __init__(self, max_batch_size: int, max_queue_delay_ms: float, preferred_batch_sizes: Sequence[int] = ()
                 ) -> None:
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.preferred = frozenset(preferred_batch_sizes)

    def arrived(self, now: float) -> None:
        pass

    def ran(self, rows: int, seconds: float) -> None:
        pass

    async def hold(self, queue: QueueView) -> int | None:
        oldest = queue.oldest()
        if oldest is None:
            return None
        dispatch_at = oldest[0] + self.max_queue_delay_s
        while not queue.closed:
            rows = queue.queued_rows()
            if rows >= self.max_batch_size or rows in self.preferred:
                break
            remaining = dispatch_at - time.monotonic()
            if remaining <= 0 or not await queue.wait_for_arrival(remaining):
                break
        return self.max_batch_size
