"""The load generator against a real HTTP server on 127.0.0.1 (resserve.perf.trivial)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from resserve.perf.server_process import free_port, server_process
from resserve.perf.generator import CLIENT_OVERFLOW, CONNECTION_ERROR, LoadGenerator
from resserve.perf.images import generate
from resserve.perf.measure import MeasurementSettings, closed_point, open_point
from resserve.perf.overhead import TRIVIAL_SERVER, measure_overhead

PAYLOADS = generate(((64, 48), (96, 72)), per_size=2)
QUICK = MeasurementSettings(warmup_s=0.2, window_s=0.5, stable_windows=2, max_windows=3)


@pytest.fixture(scope="module")
def trivial_url() -> Iterator[str]:
    with server_process(None, command=TRIVIAL_SERVER) as server:
        yield server.url


async def _run_for(seconds: float, start) -> None:  # start(stop) -> awaitable
    stop = asyncio.Event()
    task = asyncio.create_task(start(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


async def test_closed_loop_counts_every_request_and_keeps_its_concurrency(trivial_url: str) -> None:
    async with LoadGenerator(f"{trivial_url}/delay/40", PAYLOADS) as gen:
        await _run_for(1.0, lambda stop: gen.closed_loop(3, stop))
    samples = gen.samples
    assert samples and all(s.status == "200" for s in samples)
    assert all(s.scheduled == s.sent <= s.done for s in samples)
    # Never more than 3 requests in flight at once: sweep the send/done events.
    events = sorted([(s.sent, 1) for s in samples] + [(s.done, -1) for s in samples])
    in_flight = np.cumsum([e for _, e in events])
    assert in_flight.max() <= 3
    # Each request takes at least the server's 40 ms, so 3 clients cannot exceed 75 requests/s.
    assert min(s.latency_s for s in samples) >= 0.040
    span = max(s.done for s in samples) - min(s.sent for s in samples)
    assert len(samples) <= 3 * span / 0.040 + 3


async def test_errors_are_counted_by_status_never_dropped(trivial_url: str) -> None:
    # One client: the server's every-4th-request pattern shows up exactly in the counts.
    async with LoadGenerator(f"{trivial_url}/every/4/503", PAYLOADS) as gen:
        await _run_for(0.6, lambda stop: gen.closed_loop(1, stop))
    counts = Counter(s.status for s in gen.samples)
    assert set(counts) == {"200", "503"}
    assert abs(counts["503"] - len(gen.samples) / 4) <= 1


async def test_unreachable_server_is_a_counted_connection_error() -> None:
    async with LoadGenerator(f"http://127.0.0.1:{free_port()}/ok", PAYLOADS, timeout_s=2) as gen:
        await _run_for(0.3, lambda stop: gen.closed_loop(2, stop))
    assert gen.samples and {s.status for s in gen.samples} == {CONNECTION_ERROR}


async def test_open_loop_sends_with_poisson_spacing_at_the_rate(trivial_url: str) -> None:
    rate, seconds = 120.0, 3.0
    async with LoadGenerator(f"{trivial_url}/ok", PAYLOADS) as gen:
        await _run_for(seconds, lambda stop: gen.open_loop(rate, stop, "poisson", seed=5))
    sent = np.sort([s.sent for s in gen.samples])
    gaps = np.diff(sent)
    assert abs(len(sent) / seconds - rate) / rate < 0.2
    assert abs(gaps.mean() - 1 / rate) / (1 / rate) < 0.2
    assert 0.75 < gaps.std() / gaps.mean() < 1.25  # exponential gaps: coefficient of variation 1
    assert all(s.status == "200" for s in gen.samples)
    # Latency is charged from the schedule: never shorter than the time actually on the wire.
    assert all(s.latency_s >= s.done - s.sent for s in gen.samples)


async def test_constant_arrivals_are_evenly_spaced(trivial_url: str) -> None:
    async with LoadGenerator(f"{trivial_url}/ok", PAYLOADS) as gen:
        await _run_for(1.5, lambda stop: gen.open_loop(50, stop, "constant"))
    scheduled = np.diff(sorted(s.scheduled for s in gen.samples))
    assert np.allclose(scheduled, 1 / 50)


async def test_open_loop_overflow_is_recorded_not_hidden(trivial_url: str) -> None:
    async with LoadGenerator(f"{trivial_url}/delay/300", PAYLOADS, max_outstanding=2) as gen:
        await _run_for(0.5, lambda stop: gen.open_loop(100, stop, "constant"))
    counts = Counter(s.status for s in gen.samples)
    assert counts["200"] <= 4 and counts[CLIENT_OVERFLOW] >= 30


async def test_measured_point_accounts_for_every_completed_request(trivial_url: str) -> None:
    async with LoadGenerator(f"{trivial_url}/every/2/500", PAYLOADS) as gen:
        point = await closed_point(gen, 1, QUICK)
    assert point.mode == "closed" and point.concurrency == 1
    assert sum(point.statuses.values()) == point.completed > 0
    assert set(point.statuses) == {"200", "500"}
    # Throughput counts only the 200s; the error rate says what share failed.
    assert point.throughput_img_s * point.duration_s == pytest.approx(point.statuses["200"])
    assert point.error_rate == pytest.approx(point.statuses["500"] / point.completed)
    assert len(point.windows) >= QUICK.stable_windows
    assert point.server is None  # no metrics URL given
    assert point.generator_cpu_us_per_request > 0


def test_generator_overhead_is_measured() -> None:
    result = measure_overhead(PAYLOADS, concurrency=4, settings=QUICK)
    assert result.requests_per_s > 0 and 0 < result.cpu_us_per_request < 1e5
    assert result.share_of_core(100) == pytest.approx(100 * result.cpu_us_per_request / 1e6)


async def test_an_open_point_counts_what_its_schedule_sent_inside_the_window(trivial_url: str) -> None:
    async with LoadGenerator(f"{trivial_url}/every/1000/500", PAYLOADS) as gen:
        point = await open_point(gen, 200.0, QUICK, "poisson", seed=3)
    scheduled = point.offered_rps * point.duration_s
    # A trivial server keeps up: what was due inside the window was answered inside it (give or
    # take the requests in flight at its two edges), whatever the Poisson count strayed to.
    assert abs(scheduled - point.completed) <= 5, (scheduled, point.completed)
    async with LoadGenerator(f"{trivial_url}/every/1000/500", PAYLOADS) as gen:
        closed = await closed_point(gen, 1, QUICK)
    assert closed.offered_rps is None
