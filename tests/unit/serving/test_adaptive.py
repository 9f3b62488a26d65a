"""The SLO-aware batching policy: engine-time model, arrival rate, cap and wait decisions."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from resserve.metrics import Metrics
from resserve.serving.adaptive import ArrivalRate, EngineTimeModel, SloBatchPolicy
from resserve.serving.batching import BatchQueue
from resserve.serving.sinks import PrometheusSink


def learned(a: float = 0.010, c: float = 0.005, sizes: tuple[int, ...] = (1, 2, 4, 8)) -> EngineTimeModel:
    model = EngineTimeModel()
    for _ in range(5):
        for b in sizes:
            model.observe(b, a + c * b)
    return model


def test_engine_time_model_fits_a_line_and_extrapolates() -> None:
    model = learned()
    a, c = model.fit()  # type: ignore[misc]
    assert a == pytest.approx(0.010) and c == pytest.approx(0.005)
    assert model.predict(16) == pytest.approx(0.010 + 0.005 * 16)
    assert model.predict(4) == pytest.approx(0.030)  # seen often: its own average


def test_engine_time_model_before_and_after_its_first_batches() -> None:
    model = EngineTimeModel()
    assert model.predict(4) is None and model.fit() is None
    model.observe(2, 0.02)
    assert model.predict(8) == pytest.approx(0.08)  # one size seen: proportional, pessimistic


def test_arrival_rate_follows_gaps_and_silence() -> None:
    rate = ArrivalRate()
    for i in range(50):
        rate.observe(i * 0.01)  # 100 requests/s
    assert rate.per_second(0.49) == pytest.approx(100, rel=0.01)
    assert rate.per_second(0.49 + 1.0) == pytest.approx(1.0, rel=0.01)  # a second of silence


def policy(target_ms: float = 100.0, max_batch: int = 32, rate_rps: float | None = None) -> SloBatchPolicy:
    p = SloBatchPolicy(target_s=target_ms / 1000, max_batch_size=max_batch, max_wait_s=0.05, engine=learned())
    if rate_rps:
        for i in range(20):
            p.arrivals.observe(i / rate_rps)
    return p


def test_cap_is_the_largest_batch_that_fits_the_budget() -> None:
    p = policy(target_ms=110)  # budget 77 ms; t(b) = 10 + 5b ms
    assert p.cap(oldest_age_s=0.0) == 13       # t(13) = 75 ms
    assert p.cap(oldest_age_s=0.030) == 7      # 47 ms left: t(7) = 45 ms
    # Already late: drain in the smallest batch within 5% of the cheapest time per row among those a
    # fresh request could afford (1..13): 10/13 + 5 = 5.77 ms/row at 13, 10/10 + 5 = 6.0 at 10.
    assert p.cap(oldest_age_s=0.2) == 10


def test_efficient_rows_follow_the_fixed_cost() -> None:
    cpu = SloBatchPolicy(target_s=1.0, max_batch_size=64, max_wait_s=0.05, engine=learned(a=0.0025, c=0.005))
    assert cpu.efficient_rows(32) == 8  # small fixed cost: per-row time is flat early
    gpu = SloBatchPolicy(target_s=1.0, max_batch_size=64, max_wait_s=0.05, engine=learned(a=0.020, c=0.0005))
    assert gpu.efficient_rows(32) > 24  # large fixed cost: only big batches are efficient
    assert SloBatchPolicy(target_s=1.0, max_batch_size=8, max_wait_s=0.05).efficient_rows(8) == 8  # nothing learned


def test_a_late_backlog_explores_bigger_batches_before_two_sizes_are_known() -> None:
    p = SloBatchPolicy(target_s=0.25, max_batch_size=32, max_wait_s=0.05)
    for _ in range(50):
        p.engine.observe(1, 0.021)  # only batches of one so far (a backlog drained one by one)
    assert p.cap(oldest_age_s=0.3) == 8  # late: the largest batch a fresh request could afford (t = b * 21 ms)
    p.engine.observe(8, 0.120)  # bigger batches turn out cheaper per row: 15 vs 21 ms
    assert p.cap(oldest_age_s=0.3) > 1


def test_cap_without_knowledge_is_the_max_batch() -> None:
    p = SloBatchPolicy(target_s=0.1, max_batch_size=16, max_wait_s=0.05)
    assert p.cap(0.0) == 16


def test_low_load_dispatches_at_once() -> None:
    p = policy(rate_rps=2.0)  # one request every 500 ms: waiting gains nothing
    now = 10 / 2.0
    decision = p.decide(now=now, oldest_received=now, queued_rows=1)
    assert decision.wait_s == 0 and decision.why == "keeps up"


def test_batches_grow_only_as_far_as_the_load_needs() -> None:
    # t(b) = 10 + 5b ms on one instance: at 100 requests/s a batch of 3 keeps utilization <= 0.85.
    p = policy(target_ms=110, rate_rps=100.0)
    now = 20 / 100.0
    assert p.rows_to_keep_up(100.0, cap=13) == 3
    assert p.decide(now=now, oldest_received=now, queued_rows=3).why == "keeps up"
    # Behind, but one row already outweighs what waiting could save (rows >= a * rate = 1): go now,
    # the queue fills while the engine runs.
    assert p.decide(now=now, oldest_received=now, queued_rows=1).why == "engine-bound"
    # Two instances share the load: a batch of one already keeps up.
    two = SloBatchPolicy(target_s=0.11, max_batch_size=32, max_wait_s=0.05, engine=learned(), instances=2,
                         arrivals=p.arrivals)
    assert two.rows_to_keep_up(100.0, cap=13) == 1


def test_busy_load_waits_only_while_waiting_pays() -> None:
    p = policy(target_ms=110, rate_rps=400.0)
    now = 20 / 400.0
    decision = p.decide(now=now, oldest_received=now, queued_rows=2)
    # Behind the load, and 2 rows < a * rate = 4: waiting for 2 more rows (5 ms at 400/s) lowers
    # the engine time per image; the slack (w + t(2 + 400 w) <= 77 ms: 19 ms) allows it.
    assert decision.cap == 13 and decision.why == "filling"
    assert decision.wait_s == pytest.approx(0.005, rel=1e-3)
    older = p.decide(now=now, oldest_received=now - 0.060, queued_rows=2)
    assert older.wait_s == 0  # 60 ms already gone: no slack left
    assert p.decide(now=now, oldest_received=now, queued_rows=4).why == "engine-bound"


def test_full_batch_or_no_slack_goes_now() -> None:
    p = policy(target_ms=110, rate_rps=400.0)
    now = 1.0
    assert p.decide(now, now, queued_rows=13).why == "full"
    assert p.decide(now, now - 0.060, queued_rows=1).wait_s == 0


class SleepEngine:
    """Engine time a + c*b, like a real one; records batch sizes."""

    def __init__(self, a: float = 0.004, c: float = 0.002) -> None:
        self.a, self.c = a, c
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.a + self.c * batch.shape[0])
        with self.lock:
            self.sizes.append(batch.shape[0])
        return batch


async def test_queue_with_policy_caps_what_can_still_be_on_time_then_drains() -> None:
    engine = SleepEngine()
    metrics = Metrics(CollectorRegistry())
    p = SloBatchPolicy(target_s=0.040, max_batch_size=64, max_wait_s=0.02)
    queue = BatchQueue([engine], max_batch_size=64, max_queue_delay_ms=0, max_queue_size=1024, policy=p,
                       observer=PrometheusSink(metrics, "model", "1"))
    await queue.start()
    row = np.zeros((1, 1), np.float32)
    for _ in range(4):  # teach it the engine's cost at a few sizes
        for size in (1, 4, 8):
            await asyncio.gather(*(queue.submit(row, time.monotonic() + 5) for _ in range(size)))
    engine.sizes.clear()
    await asyncio.gather(*(queue.submit(row, time.monotonic() + 5) for _ in range(200)))
    # Budget 28 ms, t(b) = 4 + 2b ms: the first batch holds at most 12 rows though 200 are waiting,
    # so its requests can still meet the target; the rest are late whatever happens, and the
    # batcher drains them in the smallest batch within 5% of the cheapest per-row time (about 9).
    assert max(engine.sizes) <= 12 and sum(engine.sizes) == 200
    assert sorted(engine.sizes)[len(engine.sizes) // 2] < 12  # most of the backlog below the largest
    assert metrics.registry.get_sample_value("resserve_batcher_batch_cap", {"model": "model", "version": "1"}) >= 1
    await queue.close()


async def test_two_instances_holding_the_same_queue_never_lose_a_request() -> None:
    """One worker may hold for more rows while the other empties the queue: both carry on."""
    engines = [SleepEngine(a=0.003, c=0.001), SleepEngine(a=0.003, c=0.001)]
    p = SloBatchPolicy(target_s=0.2, max_batch_size=16, max_wait_s=0.05, instances=2)
    queue = BatchQueue(engines, max_batch_size=16, max_queue_delay_ms=0, max_queue_size=1024, policy=p)
    await queue.start()
    row = np.zeros((1, 1), np.float32)

    async def later(delay: float) -> np.ndarray:
        await asyncio.sleep(delay)
        return await queue.submit(row, time.monotonic() + 5)

    results = await asyncio.gather(*(later(i * 0.002) for i in range(300)))
    assert len(results) == 300 and sum(sum(e.sizes) for e in engines) == 300
    assert all(e.sizes for e in engines)  # both instances worked
    await queue.close()
