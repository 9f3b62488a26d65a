"""The dynamic batcher: groups concurrent requests into engine batches. Knows nothing of HTTP.

One queue per model version, one worker per engine instance, each worker with its own thread so
the engine never blocks the event loop. A worker takes the oldest request, then gathers more
until ``max_batch_size`` rows, a preferred batch size, or ``max_queue_delay_ms`` after that
oldest request arrived (or as its :mod:`batch policy <resserve.serving.batch_policy>` says).
While the engine is busy requests pile up, so under load batches fill without waiting. Expired
requests are dropped before the engine sees them; a batch whose engine call fails fails only its
own requests. What happens is told to one observer (metrics, statistics, spans); hangs are the
watchdog's (:mod:`resserve.serving.watchdog`).

Example::

    queue = BatchQueue([engine.infer], max_batch_size=16, max_queue_delay_ms=5, max_queue_size=256)
    await queue.start()
    logits = await queue.submit(rows, deadline=time.monotonic() + 1.0)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from opentelemetry.trace import SpanContext

from resserve.errors import DeadlineExceededError, EngineError, EngineHungError, ModelNotReadyError, QueueFullError
from resserve.serving.batch_policy import BatchPolicy, FixedDelay
from resserve.serving.observers import NO_OBSERVER, BatchRun, Observer
from resserve.serving.watchdog import EngineThread, Runner, Watchdog
from resserve.tracing import now_ns

log = logging.getLogger(__name__)

__all__ = ["BatchQueue", "Runner"]


@dataclass(eq=False)
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float  # time.monotonic()
    enqueued: float = field(default_factory=time.monotonic)
    received: float = 0.0  # when the request reached the server (adaptive batching ages from here)
    queued: bool = True  # still in the queue's deque (not yet taken into a batch, not forgotten)
    trace: SpanContext | None = None  # the request's span, which the batch's span links to


class BatchQueue:
    """Collects requests into batches and runs them on one or more engine instances."""

    def __init__(
        self,
        runners: Sequence[Runner],
        *,
        max_batch_size: int,
        max_queue_size: int,
        max_queue_delay_ms: float = 0.0,
        preferred_batch_sizes: Sequence[int] = (),
        policy: BatchPolicy | None = None,
        observer: Observer = NO_OBSERVER,
        watchdog: Watchdog | None = None,
        model: str = "model",
        version: str = "1",
    ) -> None:
        if not runners:
            raise ValueError("a BatchQueue needs at least one runner")
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.policy: BatchPolicy = policy or FixedDelay(max_batch_size, max_queue_delay_ms, preferred_batch_sizes)
        self.observer = observer
        self._labels = (model, version)
        self.watchdog = watchdog
        self._instances = [EngineThread(runner, model, index, watchdog) for index, runner in enumerate(runners)]
        # Only live entries: one whose caller gave up (deadline, disconnect) leaves at once, so it
        # counts against neither max_queue_size nor the depth, and its rows are freed.
        self._pending: collections.deque[_Pending] = collections.deque()
        self._pending_rows = 0
        self._arrived = asyncio.Event()
        self._closed = False
        self._workers: list[asyncio.Task[None]] = []
        self._released: asyncio.Future[list[None]] | None = None  # set by close()
        self._batch_s_ewma = 0.05  # engine seconds per batch, for Retry-After

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def depth(self) -> int:
        """Rows waiting (not yet in a running batch) whose callers still wait for them."""
        return self._pending_rows

    async def start(self) -> None:
        """Start one worker per engine instance."""
        for instance in self._instances:
            self._workers.append(asyncio.create_task(self._work(instance), name=f"batcher-{instance.index}"))

    async def submit(self, rows: np.ndarray, deadline: float, received: float | None = None,
                     trace: SpanContext | None = None) -> np.ndarray:
        """Queue ``rows`` (a batch of one or more inputs) and wait for their outputs.

        Raises QueueFullError at once when the queue is full, DeadlineExceededError when
        ``deadline`` (monotonic) passes first, EngineError when the batch's engine call fails.
        Inputs larger than ``max_batch_size`` are split and their outputs joined.
        """
        if self._closed:
            raise ModelNotReadyError(f"model {self._labels[0]} is draining or unloaded")
        if self.watchdog is not None and self.watchdog.hung:  # nothing would run it: 503 now, not 504 later
            raise self.watchdog.not_answering()
        if self._pending_rows + rows.shape[0] > self.max_queue_size:
            raise QueueFullError(
                f"model {self._labels[0]}: queue full ({self._pending_rows} of {self.max_queue_size} rows waiting)",
                retry_after_s=self.retry_after_s(),
            )
        if rows.shape[0] > self.max_batch_size:
            chunks = [rows[i : i + self.max_batch_size] for i in range(0, rows.shape[0], self.max_batch_size)]
            # The whole input was checked against the queue above; should a chunk fail all the same,
            # the others are cancelled, not run for nobody.
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self.submit(chunk, deadline, received, trace)) for chunk in chunks]
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
            return np.concatenate([task.result() for task in tasks])
        loop = asyncio.get_running_loop()
        item = _Pending(rows, loop.create_future(), deadline, trace=trace)
        item.received = item.enqueued if received is None else min(received, item.enqueued)
        self.policy.arrived(item.enqueued)
        self._pending.append(item)
        self._pending_rows += rows.shape[0]
        self.observer.queue_depth(self._pending_rows)
        self._arrived.set()
        try:
            # asyncio.wait never cancels what it waits on, and a cancellation reaches us at once.
            await asyncio.wait({item.future}, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.CancelledError:  # the client went away: its entry leaves the queue now
            item.future.cancel()
            self._forget(item)
            raise
        if not item.future.done():
            item.future.cancel()
            if item.queued:
                self.observer.expired()
            self._forget(item)
            raise DeadlineExceededError(
                f"model {self._labels[0]}: deadline passed after {time.monotonic() - item.enqueued:.3f} s"
            )
        return item.future.result()

    async def close(self, timeout_s: float = 30.0, finalizers: Sequence[Callable[[], object]] = ()) -> None:
        """Stop accepting, finish everything queued and running, then stop the workers.

        Requests still queued or in a running batch after ``timeout_s`` (0: at once) fail with
        ModelNotReadyError, which a caller may retry on a successor. An engine call cannot be
        interrupted: ``finalizers[i]`` (engine ``i``'s close) runs on engine thread ``i`` once the
        call it may still be making has returned, never on the event loop; :meth:`released` waits
        for that.
        """
        self._closed = True
        self._arrived.set()
        if self._workers:
            _done, still = await asyncio.wait(self._workers, timeout=timeout_s)
            while still:  # each ends at its next await, failing its running batch (_work)
                for task in still:
                    task.cancel()
                _done, still = await asyncio.wait(still, timeout=0.1)  # should one swallow it: again
        while self._pending:
            item = self._pending.popleft()
            self._take(item)
            if not item.future.done():
                item.future.set_exception(ModelNotReadyError(f"model {self._labels[0]} shut down"))
        if self._released is None:
            self._released = asyncio.gather(*[
                instance.close(finalizers[index] if index < len(finalizers) else None)
                for index, instance in enumerate(self._instances)])
        self.observer.queue_depth(self._pending_rows)

    async def released(self, timeout_s: float | None = None) -> bool:
        """After :meth:`close`: wait until every engine thread's last call and finalizer have returned
        (at most ``timeout_s``); False if one is still running."""
        if self._released is None:
            raise RuntimeError("released() before close()")
        done, _ = await asyncio.wait({self._released}, timeout=timeout_s)
        return bool(done)

    def retry_after_s(self) -> int:
        """Seconds until the queue ahead has likely drained: what a 503 tells the client to wait."""
        batches_ahead = math.ceil(self._pending_rows / self.max_batch_size / len(self._instances))
        return max(1, math.ceil(batches_ahead * self._batch_s_ewma))

    # --- what the policy sees (QueueView) --------------------------------------------------------

    def queued_rows(self, cap: int | None = None) -> int:
        limit = self.max_batch_size if cap is None else min(cap, self.max_batch_size)
        rows = 0
        for item in self._pending:
            if rows + item.rows.shape[0] > limit:
                break
            rows += item.rows.shape[0]
        return rows

    def oldest(self) -> tuple[float, float] | None:
        return (self._pending[0].enqueued, self._pending[0].received) if self._pending else None

    async def wait_for_arrival(self, timeout_s: float) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # --- collecting and running ---------------------------------------------------------------

    def _forget(self, item: _Pending) -> None:
        """Take an abandoned entry out of the queue (O(queue), bounded by max_queue_size)."""
        if item.queued:
            self._take(item)
            self._pending.remove(item)
            self.observer.queue_depth(self._pending_rows)

    def _take(self, item: _Pending) -> None:
        item.queued = False
        self._pending_rows -= item.rows.shape[0]

    async def _collect(self) -> list[_Pending] | None:
        """The next batch, or None when closed and empty."""
        while not self._pending:
            if self._closed:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        held_from = time.monotonic()
        cap = await self.policy.hold(self)
        if cap is None:  # another instance's worker took them while this one held
            return []
        if self.policy.reports:
            self.observer.batch_planned(cap, time.monotonic() - held_from)
        batch: list[_Pending] = []
        rows, now = 0, time.monotonic()
        while self._pending and (rows == 0 or rows + self._pending[0].rows.shape[0] <= cap) \
                and rows + self._pending[0].rows.shape[0] <= self.max_batch_size:
            item = self._pending.popleft()
            self._take(item)
            if item.future.done():  # cancelled by its caller (deadline or disconnect)
                continue
            if item.deadline <= now:
                item.future.set_exception(DeadlineExceededError(f"model {self._labels[0]}: deadline passed in the queue"))
                self.observer.expired()
                continue
            batch.append(item)
            rows += item.rows.shape[0]
        self.observer.queue_depth(self._pending_rows)
        return batch

    async def _work(self, instance: EngineThread) -> None:
        while True:
            await instance.free()  # after a hang: until the stuck call has returned
            batch = await self._collect()
            if batch is None:
                return
            if batch:
                try:
                    await self._run(instance, batch)
                except asyncio.CancelledError:  # close() timed out: the engine call goes on without us
                    _fail(batch, ModelNotReadyError(f"model {self._labels[0]} shut down before its batch finished"))
                    raise

    async def _run(self, instance: EngineThread, batch: list[_Pending]) -> None:
        started = time.monotonic()
        run = BatchRun(rows=tuple(i.rows.shape[0] for i in batch), waited_s=tuple(started - i.enqueued for i in batch),
                       traces=tuple(i.trace for i in batch), started_ns=now_ns())
        self.observer.batch_started(run)
        with self.observer.batch_scope(run):  # the batch's span is current: its log lines carry the trace id
            try:
                ran = await instance.run([i.rows for i in batch])
            except EngineHungError as hung:
                _fail(batch, hung)
                self.observer.batch_failed(replace(run, elapsed_s=time.monotonic() - started), hung=True)
                return
            except Exception as exc:  # a failed batch fails only its own requests
                log.error("engine failed on a batch of %d requests: %s", len(batch), exc, exc_info=True)
                # The answer says what failed, never the engine's own words (paths, internals): the log has those.
                error = EngineError(f"model {self._labels[0]} version {self._labels[1]}: the engine failed on "
                                    f"this request's batch ({len(batch)} requests); the server log has the details")
                error.__cause__ = exc
                _fail(batch, error)
                self.observer.batch_failed(replace(run, elapsed_s=time.monotonic() - started), hung=False)
                return
        elapsed = time.monotonic() - started
        self._batch_s_ewma = 0.8 * self._batch_s_ewma + 0.2 * elapsed
        self.policy.ran(run.total_rows, elapsed)
        sliced = time.monotonic()
        offset = 0
        for item in batch:
            count = item.rows.shape[0]
            if not item.future.done():
                item.future.set_result(ran.outputs[offset : offset + count])
            offset += count
        self.observer.batch_done(replace(run, elapsed_s=elapsed, concat_s=ran.concat_s, infer_s=ran.infer_s,
                                         output_s=time.monotonic() - sliced))


def _fail(batch: list[_Pending], error: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error)
