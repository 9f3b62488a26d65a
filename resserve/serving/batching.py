"""The dynamic batcher: groups concurrent requests into engine batches. Knows nothing of HTTP.

One queue per model version, one worker per engine instance, each worker with its own thread so
the engine never blocks the event loop. A worker takes the oldest request, then gathers more
until ``max_batch_size`` rows, a preferred batch size, or ``max_queue_delay_ms`` after that
oldest request arrived. While the engine is busy requests pile up, so under load batches fill
without waiting. Expired requests are dropped before the engine sees them; a batch whose engine
call fails fails only its own requests.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from resserve.errors import (
    DeadlineExceededError,
    EngineError,
    ModelNotReadyError,
    QueueFullError,
)
from resserve.metrics import Metrics
from resserve.serving.adaptive import SloBatchPolicy
from resserve.serving.statistics import ModelStatistics
from resserve.threads import ENGINE_PREFIX, set_os_thread_name
from resserve.tracing import Carried, now_ns

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(eq=False)
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float  # time.monotonic()
    enqueued: float = field(default_factory=time.monotonic)
    received: float = 0.0  # when the request reached the server (adaptive batching ages from here)
    queued: bool = True  # still in the queue's deque (not yet taken into a batch, not forgotten)
    trace: Carried | None = None  # the request's span, which the batch's span links to


class BatchQueue:
    """Collects requests into batches and runs them on one or more engine instances."""

    def __init__(
        self,
        runners: Sequence[Runner],
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
        preferred_batch_sizes: Sequence[int] = (),
        metrics: Metrics | None = None,
        model: str = "model",
        version: str = "1",
        engine_timeout_s: float | None = None,
        on_health: Callable[[bool], None] | None = None,
        policy: SloBatchPolicy | None = None,
        statistics: ModelStatistics | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a BatchQueue needs at least one runner")
        self._runners = list(runners)
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.preferred = frozenset(preferred_batch_sizes)
        self._metrics = metrics
        self._labels = (model, version)
        # Only live entries: one whose caller gave up (deadline, disconnect) leaves at once, so it
        # counts against neither max_queue_size nor the depth, and its rows are freed.
        self._pending: collections.deque[_Pending] = collections.deque()
        self._pending_rows = 0
        self._arrived = asyncio.Event()
        self._closed = False
        self._workers: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._released: asyncio.Future[list[None]] | None = None  # set by close()
        self._batch_s_ewma = 0.05  # engine seconds per batch, for Retry-After
        self.engine_timeout_s = engine_timeout_s
        self.on_health = on_health  # told when every instance gets stuck, and when one answers again
        self._hung = 0  # runners stuck past engine_timeout_s
        self.policy = policy
        self.statistics = statistics

    def not_answering(self) -> ModelNotReadyError:
        """The one answer while the watchdog sees every engine instance stuck: 503, retry after
        about one ``engine_timeout_s`` (the stuck call ends by then or trips the watchdog again)."""
        return ModelNotReadyError(f"model {self._labels[0]}: the engine is not answering (watchdog)",
                                  retry_after_s=max(1, math.ceil(self.engine_timeout_s or 1)))

    @property
    def hung(self) -> bool:
        """Every engine instance is stuck in a batch past the watchdog's limit."""
        return self._hung >= len(self._runners)

    @property
    def depth(self) -> int:
        """Rows waiting (not yet in a running batch) whose callers still wait for them."""
        return self._pending_rows

    async def start(self) -> None:
        """Start one worker per runner."""
        for index, runner in enumerate(self._runners):
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{self._labels[0]}-{index}",
                                          initializer=set_os_thread_name, initargs=(f"{ENGINE_PREFIX}-{index}",))
            self._executors.append(executor)
            self._workers.append(asyncio.create_task(self._work(runner, executor), name=f"batcher-{index}"))

    async def submit(self, rows: np.ndarray, deadline: float, received: float | None = None,
                     trace: Carried | None = None) -> np.ndarray:
        """Queue ``rows`` (a batch of one or more inputs) and wait for their outputs.

        Raises QueueFullError at once when the queue is full, DeadlineExceededError when
        ``deadline`` (monotonic) passes first, EngineError when the batch's engine call fails.
        Inputs larger than ``max_batch_size`` are split and their outputs joined.
        """
        if self._closed:
            raise ModelNotReadyError(f"model {self._labels[0]} is draining or unloaded")
        if self.hung:
            raise self.not_answering()
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
        if self.policy is not None:
            self.policy.arrivals.observe(item.enqueued)
        self._pending.append(item)
        self._pending_rows += rows.shape[0]
        self._set_depth()
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
            if item.queued and self._metrics:
                self._metrics.expired.labels(*self._labels).inc()
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
            loop = asyncio.get_running_loop()
            calls = [loop.run_in_executor(executor, _finalize, finalizers[index] if index < len(finalizers) else None,
                                          self._labels[0], index)
                     for index, executor in enumerate(self._executors)]
            for executor in self._executors:
                executor.shutdown(wait=False)  # the finalizer queued behind the running call still runs
            self._released = asyncio.gather(*calls)
        self._set_depth()

    async def released(self, timeout_s: float | None = None) -> bool:
        """After :meth:`close`: wait until every engine thread's last call and finalizer have returned
        (at most ``timeout_s``); False if one is still running."""
        if self._released is None:
            raise RuntimeError("released() before close()")
        done, _ = await asyncio.wait({self._released}, timeout=timeout_s)
        return bool(done)

    def retry_after_s(self) -> int:
        """Seconds until the queue ahead has likely drained: what a 503 tells the client to wait."""
        batches_ahead = math.ceil(self._pending_rows / self.max_batch_size / len(self._runners))
        return max(1, math.ceil(batches_ahead * self._batch_s_ewma))

    def _forget(self, item: _Pending) -> None:
        """Take an abandoned entry out of the queue (O(queue), bounded by max_queue_size)."""
        if item.queued:
            self._take(item)
            self._pending.remove(item)
            self._set_depth()

    def _take(self, item: _Pending) -> None:
        item.queued = False
        self._pending_rows -= item.rows.shape[0]

    def _set_depth(self) -> None:
        if self._metrics:
            self._metrics.queue_depth.labels(*self._labels).set(self._pending_rows)

    def _queued_rows(self, cap: int | None = None) -> int:
        limit = self.max_batch_size if cap is None else cap
        rows = 0
        for item in self._pending:
            if rows + item.rows.shape[0] > limit:
                break
            rows += item.rows.shape[0]
        return rows

    async def _wait_for_arrival(self, timeout_s: float) -> bool:
        """Wait until a request arrives or ``timeout_s`` passes; False on timeout."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _hold_adaptive(self, policy: SloBatchPolicy) -> int:
        """The SLO policy's loop: re-decide on every arrival until it says go; returns the cap."""
        held_from = time.monotonic()
        while True:
            if not self._pending:  # another instance's worker took them while this one held
                return self.max_batch_size
            now = time.monotonic()
            decision = policy.decide(now, self._pending[0].received, self._queued_rows())
            if self._closed or decision.wait_s <= 0 or self._queued_rows(decision.cap) >= decision.cap:
                break
            if not await self._wait_for_arrival(decision.wait_s):
                break
        if self._metrics:
            self._metrics.batch_cap.labels(*self._labels).set(decision.cap)
            self._metrics.planned_wait.labels(*self._labels).observe(time.monotonic() - held_from)
        return decision.cap

    async def _collect(self) -> list[_Pending] | None:
        """The next batch, or None when closed and empty."""
        while not self._pending:
            if self._closed:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        cap = self.max_batch_size
        if self.policy is not None:
            cap = await self._hold_adaptive(self.policy)
        else:
            dispatch_at = self._pending[0].enqueued + self.max_queue_delay_s
            while not self._closed:
                rows = self._queued_rows()
                if rows >= self.max_batch_size or rows in self.preferred:
                    break
                remaining = dispatch_at - time.monotonic()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
        batch: list[_Pending] = []
        rows, now = 0, time.monotonic()
        while self._pending and (rows == 0 or rows + self._pending[0].rows.shape[0] <= cap) \
                and rows + self._pending[0].rows.shape[0] <= self.max_batch_size:
            item = self._pending.popleft()
            self._take(item)
            if item.future.done():  # cancelled by its caller (deadline or disconnect)
                continue
            if item.deadline <= now:
                self._expire(item)
                continue
            batch.append(item)
            rows += item.rows.shape[0]
        self._set_depth()
        return batch

    def _expire(self, item: _Pending) -> None:
        item.future.set_exception(DeadlineExceededError(f"model {self._labels[0]}: deadline passed in the queue"))
        if self._metrics:
            self._metrics.expired.labels(*self._labels).inc()

    async def _work(self, runner: Runner, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if batch is None:
                return
            if batch:
                try:
                    await self._run(loop, runner, executor, batch)
                except asyncio.CancelledError:  # close() timed out: the engine call goes on without us
                    error = ModelNotReadyError(f"model {self._labels[0]} shut down before its batch finished")
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(error)
                    raise

    async def _run(
        self, loop: asyncio.AbstractEventLoop, runner: Runner, executor: ThreadPoolExecutor, batch: list[_Pending]
    ) -> None:
        started = time.monotonic()
        if self._metrics:
            for item in batch:
                self._metrics.queue_wait.labels(*self._labels).observe(started - item.enqueued)
        traced = [i.trace for i in batch if i.trace is not None]
        if traced:  # tracing on: this batch gets a span
            await self._run_traced(loop, runner, executor, batch, traced, started)
            return
        await self._run_engine(loop, runner, executor, batch, started)

    async def _run_traced(self, loop: asyncio.AbstractEventLoop, runner: Runner, executor: ThreadPoolExecutor,
                          batch: list[_Pending], traced: list[Carried], started: float) -> None:
        """A ``queue wait`` span per request, then the batch in an ``engine batch`` span linked to them."""
        end_ns = now_ns() - int((time.monotonic() - started) * 1e9)
        tracing = traced[0][0]
        for item in batch:
            if item.trace is not None:
                tracing.record("queue wait", end_ns - int((started - item.enqueued) * 1e9), end_ns, item.trace[1],
                               rows=item.rows.shape[0])
        with tracing.batch_span([c for _t, c in traced], model=self._labels[0], version=self._labels[1],
                                batch_size=sum(i.rows.shape[0] for i in batch), requests=len(batch)):
            await self._run_engine(loop, runner, executor, batch, started)

    async def _run_engine(self, loop: asyncio.AbstractEventLoop, runner: Runner, executor: ThreadPoolExecutor,
                          batch: list[_Pending], started: float) -> None:
        call = loop.run_in_executor(executor, _run_batch, runner, [i.rows for i in batch])
        if self.engine_timeout_s is not None:
            done, _ = await asyncio.wait({call}, timeout=self.engine_timeout_s)
            if not done:
                await self._watchdog(call, batch)
                return
        try:
            outputs, concat_s, infer_s = await call
        except Exception as exc:  # a failed batch fails only its own requests
            log.error("engine failed on a batch of %d requests: %s", len(batch), exc, exc_info=True)
            if self._metrics:
                self._metrics.engine_failures.labels(*self._labels).inc()
            # The answer says what failed, never the engine's own words (paths, internals): the log has those.
            error = EngineError(f"model {self._labels[0]} version {self._labels[1]}: the engine failed on this "
                                f"request's batch ({len(batch)} requests); the server log has the details")
            error.__cause__ = exc
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        elapsed = time.monotonic() - started
        self._batch_s_ewma = 0.8 * self._batch_s_ewma + 0.2 * elapsed
        if self.policy is not None:
            self.policy.engine.observe(sum(i.rows.shape[0] for i in batch), elapsed)
        if self._metrics:
            self._metrics.inference.labels(*self._labels).observe(elapsed)
            self._metrics.batch_size.labels(*self._labels).observe(sum(i.rows.shape[0] for i in batch))
        sliced = time.monotonic()
        offset = 0
        for item in batch:
            count = item.rows.shape[0]
            if not item.future.done():
                item.future.set_result(outputs[offset : offset + count])
            offset += count
        if self.statistics is not None:
            self.statistics.batch_done([i.rows.shape[0] for i in batch], [started - i.enqueued for i in batch],
                                       concat_s, infer_s, time.monotonic() - sliced)


    async def _watchdog(self, call: asyncio.Future[tuple[np.ndarray, float, float]], batch: list[_Pending]) -> None:
        """A batch outlived ``engine_timeout_s``: fail its requests, report the engine unhealthy until
        the call returns (a thread cannot be killed), then report it healthy again."""
        model = self._labels[0]
        log.error("model %s: engine has not finished a batch of %d in %.1f s; marking the model not ready",
                  model, len(batch), self.engine_timeout_s)
        if self._metrics:
            self._metrics.engine_hangs.labels(*self._labels).inc()
            self._metrics.engine_failures.labels(*self._labels).inc()
        error = EngineError(f"model {model}: the engine did not answer within {self.engine_timeout_s:g} s")
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)
        self._hung += 1
        if self.hung and self.on_health:
            self.on_health(False)
        try:
            await call
        except Exception as exc:  # the batch is already answered; only the recovery matters
            log.warning("model %s: the stuck batch ended with %s", model, exc)
        finally:
            recovered = self.hung
            self._hung -= 1
            if recovered and self.on_health:
                self.on_health(True)
            log.info("model %s: the engine answered again after the watchdog fired", model)


def _finalize(finalizer: Callable[[], object] | None, model: str, index: int) -> None:
    """Run on an engine thread after its last batch: an engine's close, whose failure is only logged."""
    if finalizer is None:
        return
    try:
        finalizer()
    except Exception:
        log.exception("model %s: closing engine instance %d failed", model, index)


def _run_batch(runner: Runner, parts: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """Concatenate, run, and check the engine kept one output row per input row; with the seconds
    each step took (the statistics extension's compute_input and compute_infer)."""
    started = time.perf_counter()
    batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
    ran = time.perf_counter()
    outputs = runner(batch)
    if outputs.shape[0] != batch.shape[0]:
        raise EngineError(f"engine returned {outputs.shape[0]} rows for a batch of {batch.shape[0]}")
    return outputs, ran - started, time.perf_counter() - ran
