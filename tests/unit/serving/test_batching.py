"""The batch queue with a small in-process engine: grouping, limits, deadlines, failures, drain."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from resserve.errors import DeadlineExceededError, EngineError, ModelNotReadyError, QueueFullError
from resserve.metrics import Metrics
from resserve.serving.batching import BatchQueue
from resserve.serving.sinks import PrometheusSink
from resserve.serving.watchdog import Watchdog


class RecordingEngine:
    """Doubles its input; records every batch; can be told to block or fail."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = float("nan")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(5)
        self.batches.append(batch.copy())
        if np.any(batch == self.fail_on):
            raise RuntimeError("injected failure")
        return batch * 2


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def make_queue(engine, **overrides) -> BatchQueue:  # type: ignore[no-untyped-def]
    settings = dict(max_batch_size=4, max_queue_delay_ms=20, max_queue_size=64)
    settings.update(overrides)
    queue = BatchQueue([engine] if callable(engine) else engine, **settings)  # type: ignore[arg-type]
    await queue.start()
    return queue


async def test_concurrent_requests_share_a_batch() -> None:
    engine = RecordingEngine()
    queue = await make_queue(engine, max_queue_delay_ms=200)
    a, b = await asyncio.gather(queue.submit(rows(1), soon()), queue.submit(rows(2), soon()))
    assert a.tolist() == [[2.0]] and b.tolist() == [[4.0]]
    assert [batch.shape[0] for batch in engine.batches] == [2]
    await queue.close()


async def test_max_batch_size_is_respected_and_results_fan_back() -> None:
    engine = RecordingEngine()
    queue = await make_queue(engine, max_batch_size=4)
    results = await asyncio.gather(*(queue.submit(rows(i), soon()) for i in range(10)))
    assert [r.item() for r in results] == [2.0 * i for i in range(10)]
    assert all(batch.shape[0] <= 4 for batch in engine.batches)
    assert sum(batch.shape[0] for batch in engine.batches) == 10
    await queue.close()


async def test_preferred_batch_size_dispatches_without_waiting_for_the_delay() -> None:
    engine = RecordingEngine()
    # A 60 s delay: if the preferred size did not dispatch at once, the 2 s deadline would fail.
    queue = await make_queue(engine, max_queue_delay_ms=60_000, preferred_batch_sizes=[2])
    out = await asyncio.gather(queue.submit(rows(1), soon(2)), queue.submit(rows(2), soon(2)))
    assert len(out) == 2 and [b.shape[0] for b in engine.batches] == [2]
    await queue.close()


async def test_full_queue_rejects_at_once_with_retry_after() -> None:
    engine = RecordingEngine()
    engine.gate.clear()  # the engine blocks: everything else waits in the queue
    queue = await make_queue(engine, max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0)
    first = asyncio.create_task(queue.submit(rows(0), soon()))
    await asyncio.to_thread(engine.entered.wait, 5)
    waiting = [asyncio.create_task(queue.submit(rows(i), soon())) for i in (1, 2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFullError) as info:
        await queue.submit(rows(3), soon())
    assert info.value.retry_after_s >= 1
    engine.gate.set()
    assert [t.item() for t in await asyncio.gather(first, *waiting)] == [0.0, 2.0, 4.0]
    await queue.close()


async def test_expired_requests_never_reach_the_engine() -> None:
    engine = RecordingEngine()
    engine.gate.clear()
    registry = CollectorRegistry()
    queue = await make_queue(engine, max_batch_size=1, max_queue_delay_ms=0, observer=PrometheusSink(Metrics(registry), "model", "1"))
    first = asyncio.create_task(queue.submit(rows(1), soon()))
    await asyncio.to_thread(engine.entered.wait, 5)
    with pytest.raises(DeadlineExceededError):
        await queue.submit(rows(99), time.monotonic() + 0.05)
    engine.gate.set()
    assert (await first).item() == 2.0
    await queue.submit(rows(3), soon())  # the worker has passed the expired one by now
    seen = [b.item() for b in engine.batches]
    assert 99.0 not in seen and seen == [1.0, 3.0]
    await queue.close()


async def test_failed_batch_fails_only_its_own_requests() -> None:
    engine = RecordingEngine()
    engine.fail_on = 13.0
    registry = CollectorRegistry()
    queue = await make_queue(engine, max_batch_size=1, max_queue_delay_ms=0, observer=PrometheusSink(Metrics(registry), "model", "1"))
    results = await asyncio.gather(*(queue.submit(rows(v), soon()) for v in (1, 13, 2)), return_exceptions=True)
    assert results[0].item() == 2.0 and results[2].item() == 4.0  # type: ignore[union-attr]
    # The answer names no engine internals; the cause (and the log) keep them.
    assert isinstance(results[1], EngineError) and "engine failed" in str(results[1])
    assert "injected failure" not in str(results[1]) and "injected failure" in str(results[1].__cause__)
    assert registry.get_sample_value("resserve_engine_failures_total", {"model": "model", "version": "1"}) == 1
    assert (await queue.submit(rows(5), soon())).item() == 10.0  # still serving
    await queue.close()


async def test_engine_that_drops_rows_is_an_engine_error() -> None:
    queue = await make_queue(lambda batch: batch[:1], max_queue_delay_ms=50)
    results = await asyncio.gather(queue.submit(rows(1), soon()), queue.submit(rows(2), soon()),
                                   return_exceptions=True)
    assert all(isinstance(r, EngineError) and "returned 1 rows for a batch of 2" in str(r.__cause__)
               for r in results)
    await queue.close()


async def test_inputs_larger_than_max_batch_are_split() -> None:
    engine = RecordingEngine()
    queue = await make_queue(engine, max_batch_size=4)
    out = await queue.submit(rows(*range(10)), soon())
    assert out[:, 0].tolist() == [2.0 * i for i in range(10)]
    assert max(b.shape[0] for b in engine.batches) <= 4
    await queue.close()


async def test_close_finishes_queued_work_then_refuses() -> None:
    engine = RecordingEngine()
    queue = await make_queue(engine, max_batch_size=2, max_queue_delay_ms=0)
    pending = [asyncio.create_task(queue.submit(rows(i), soon())) for i in range(6)]
    await asyncio.sleep(0)
    await queue.close(timeout_s=5)
    assert [r.item() for r in await asyncio.gather(*pending)] == [2.0 * i for i in range(6)]
    with pytest.raises(ModelNotReadyError):
        await queue.submit(rows(1), soon())


async def test_every_instance_takes_work() -> None:
    engines = [RecordingEngine(), RecordingEngine()]
    for e in engines:
        e.gate.clear()
    queue = await make_queue(engines, max_batch_size=1, max_queue_delay_ms=0)
    tasks = [asyncio.create_task(queue.submit(rows(i), soon())) for i in range(4)]
    await asyncio.to_thread(engines[0].entered.wait, 5)
    await asyncio.to_thread(engines[1].entered.wait, 5)  # both busy at once: true parallel instances
    for e in engines:
        e.gate.set()
    assert sorted(t.item() for t in await asyncio.gather(*tasks)) == [0.0, 2.0, 4.0, 6.0]
    await queue.close()


async def test_cancelled_request_is_skipped() -> None:
    engine = RecordingEngine()
    engine.gate.clear()
    queue = await make_queue(engine, max_batch_size=1, max_queue_delay_ms=0)
    first = asyncio.create_task(queue.submit(rows(1), soon()))
    await asyncio.to_thread(engine.entered.wait, 5)
    gone = asyncio.create_task(queue.submit(rows(7), soon()))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0)  # the cancellation is delivered when the task next runs
    engine.gate.set()
    await first
    await queue.submit(rows(3), soon())
    assert 7.0 not in [b.item() for b in engine.batches]
    await queue.close()


async def test_abandoned_entries_leave_the_queue_and_free_their_places() -> None:
    """Entries whose deadline passed or whose caller was cancelled count neither against
    max_queue_size nor in the depth gauge, while the engine is still busy."""
    engine = RecordingEngine()
    engine.gate.clear()
    registry = CollectorRegistry()
    queue = await make_queue(engine, max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0,
                             observer=PrometheusSink(Metrics(registry), "model", "1"))
    depth = {"model": "model", "version": "1"}
    first = asyncio.create_task(queue.submit(rows(1), soon()))
    await asyncio.to_thread(engine.entered.wait, 5)
    gone = asyncio.create_task(queue.submit(rows(7), soon()))
    with pytest.raises(DeadlineExceededError):
        await queue.submit(rows(99), time.monotonic() + 0.05)
    assert queue.depth == 1 and registry.get_sample_value("resserve_batcher_queue_depth", depth) == 1
    assert registry.get_sample_value("resserve_batcher_expired_total", depth) == 1
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert queue.depth == 0 and registry.get_sample_value("resserve_batcher_queue_depth", depth) == 0
    # Both places are free again although the engine has not moved: two more fit, a third does not.
    waiting = [asyncio.create_task(queue.submit(rows(v), soon())) for v in (2, 3)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFullError):
        await queue.submit(rows(4), soon())
    engine.gate.set()
    assert [t.item() for t in await asyncio.gather(first, *waiting)] == [2.0, 4.0, 6.0]
    assert [b.item() for b in engine.batches] == [1.0, 2.0, 3.0]
    await queue.close()


async def test_a_refused_chunk_cancels_its_siblings() -> None:
    """An input split into chunks is all or nothing: one refused chunk, and the rest never run."""
    engine = RecordingEngine()
    queue = await make_queue(engine, max_batch_size=2, max_queue_size=3, max_queue_delay_ms=0)
    with pytest.raises(QueueFullError):
        await queue.submit(rows(1, 2, 3, 4), soon())
    await asyncio.sleep(0.05)
    assert engine.batches == [] and queue.depth == 0
    await queue.close()


async def test_queue_size_counts_rows() -> None:
    engine = RecordingEngine()
    engine.gate.clear()
    queue = await make_queue(engine, max_batch_size=4, max_queue_size=4, max_queue_delay_ms=0)
    first = asyncio.create_task(queue.submit(rows(1), soon()))
    await asyncio.to_thread(engine.entered.wait, 5)
    three = asyncio.create_task(queue.submit(rows(1, 2, 3), soon()))
    await asyncio.sleep(0.01)
    assert queue.depth == 3
    with pytest.raises(QueueFullError, match="3 of 4 rows waiting"):
        await queue.submit(rows(4, 5), soon())
    engine.gate.set()
    await asyncio.gather(first, three)
    await queue.close()


async def test_watchdog_fails_the_stuck_batch_marks_unhealthy_and_recovers() -> None:
    engine = RecordingEngine()
    engine.gate.clear()  # the engine hangs until released
    health: list[bool] = []
    metrics = Metrics(CollectorRegistry())
    watchdog = Watchdog("model", 0.2, health.append)
    queue = await make_queue(engine, watchdog=watchdog, observer=PrometheusSink(metrics, "model", "1"),
                             max_queue_delay_ms=0)
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"did not answer within 0\.2 s"):
        await queue.submit(rows(1), soon())
    assert 0.2 <= time.monotonic() - started < 2.0
    assert health == [False] and watchdog.hung
    with pytest.raises(ModelNotReadyError, match="not answering") as info:  # 503 at once, not queued behind it
        await queue.submit(rows(2), soon())
    assert info.value.retry_after_s >= 1
    assert metrics.registry.get_sample_value("resserve_engine_hangs_total", {"model": "model", "version": "1"}) == 1
    engine.gate.set()  # the stuck call returns: healthy again, and the queue serves
    for _ in range(100):
        if health == [False, True]:
            break
        await asyncio.sleep(0.02)
    assert health == [False, True] and not watchdog.hung
    assert (await queue.submit(rows(3), soon())).tolist() == [[6.0]]
    await queue.close()


async def test_watchdog_stays_quiet_for_batches_within_the_limit() -> None:
    engine = RecordingEngine()
    health: list[bool] = []
    watchdog = Watchdog("model", 5.0, health.append)
    queue = await make_queue(engine, watchdog=watchdog)
    assert (await queue.submit(rows(1), soon())).tolist() == [[2.0]]
    assert health == [] and not watchdog.hung
    await queue.close()


@pytest.mark.parametrize("timeout_s", [0.0, 0.2])
async def test_close_that_times_out_fails_the_running_batch_and_closes_the_engine_after_it(timeout_s: float) -> None:
    engine = RecordingEngine()
    engine.gate.clear()  # the engine hangs inside its batch until released
    returned = threading.Event()

    def runner(batch: np.ndarray) -> np.ndarray:
        try:
            return engine(batch)
        finally:
            returned.set()

    closes: list[tuple[threading.Thread, bool]] = []

    def close_engine() -> None:
        closes.append((threading.current_thread(), returned.is_set()))

    queue = await make_queue(runner, max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.create_task(queue.submit(rows(1), soon(30)))
    await asyncio.to_thread(engine.entered.wait, 5)
    queued = asyncio.create_task(queue.submit(rows(2), soon(30)))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await queue.close(timeout_s=timeout_s, finalizers=[close_engine])
    assert time.monotonic() - started < timeout_s + 1.0  # 0 waits for nothing
    for task in (running, queued):  # resolved, and retryable elsewhere: not left hanging
        with pytest.raises(ModelNotReadyError, match="shut down"):
            await task
    assert not await queue.released(timeout_s=0.1) and closes == []  # never under a running batch
    engine.gate.set()
    assert await queue.released(timeout_s=5)
    [(thread, after_the_batch)] = closes
    assert after_the_batch and thread is not threading.current_thread() and thread.name.startswith("engine-")
