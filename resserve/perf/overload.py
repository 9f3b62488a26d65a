"""Overload drill: open-loop load at a multiple of measured capacity, then recovery.

What a server owes its clients when offered more than it can do: excess requests answered 503
(with Retry-After) *quickly*, the accepted ones still within a bounded latency, memory that does
not grow with the backlog, and normal service again seconds after the load stops.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from resserve.perf.stats import TAIL_PERCENTILES, latency_summary_ms
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import Payload
from resserve.perf.measure import MeasurementSettings, closed_point


class OverloadResult(BaseModel):
    capacity_img_s: float
    baseline_p50_ms: float
    offered_rps: float
    duration_s: float
    statuses: dict[str, int]
    accepted_img_s: float
    accepted_latency_ms: dict[str, float]
    rejected_latency_ms: dict[str, float]
    recovery_s: float | None
    rss_before_mib: float | None = None
    rss_peak_mib: float | None = None
    rss_after_mib: float | None = None


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of a local process and its descendants (Linux /proc), in MiB: with
    ``--workers`` the server is the supervisor and its workers, and the supervisor alone holds
    almost nothing."""
    if pid is None:
        return None
    total, found = 0, False
    for member in _process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:  # exited meanwhile
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                found = True
    return total / 1024 if found else None


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return tree


async def run_overload(url: str, payloads: list[Payload], *, factor: float = 3.0, duration_s: float = 10.0,
                       capacity_concurrency: int = 16, recovery_timeout_s: float = 30.0,
                       server_pid: int | None = None, seed: int = 0) -> OverloadResult:
    """Measure capacity (closed loop), offer ``factor`` times it as Poisson arrivals, then time the recovery."""
    async with LoadGenerator(url, payloads, max_outstanding=4096) as generator:
        settings = MeasurementSettings(warmup_s=1.0, window_s=2.0, max_windows=4)
        capacity = await closed_point(generator, capacity_concurrency, settings)
        baseline = await closed_point(generator, 1, MeasurementSettings(warmup_s=0.5, window_s=1.0, max_windows=3))
        baseline_p50 = baseline.latency_ms["p50_ms"]
        rss_before = rss_mib(server_pid)

        generator.samples.clear()
        offered = factor * capacity.throughput_img_s
        stop = asyncio.Event()
        load = asyncio.create_task(generator.open_loop(offered, stop, "poisson", seed))
        peak = rss_before
        end = time.perf_counter() + duration_s
        while time.perf_counter() < end:
            await asyncio.sleep(0.5)
            current = rss_mib(server_pid)
            if current is not None and (peak is None or current > peak):
                peak = current
        stop.set()
        await load
        samples = list(generator.samples)

        # Recovery: one client, until a request succeeds within twice the idle p50.
        started, recovered = time.perf_counter(), None
        while time.perf_counter() - started < recovery_timeout_s:
            sample = await generator.send(payloads[0])
            if sample.ok and sample.latency_s * 1000 <= 2 * baseline_p50:
                recovered = time.perf_counter() - started
                break
            await asyncio.sleep(0.05)

    accepted = [s.latency_s for s in samples if s.ok]
    rejected = [s.latency_s for s in samples if s.status == "503"]
    return OverloadResult(
        capacity_img_s=capacity.throughput_img_s,
        baseline_p50_ms=baseline_p50,
        offered_rps=offered,
        duration_s=duration_s,
        statuses=dict(Counter(s.status for s in samples)),
        accepted_img_s=len(accepted) / duration_s,
        accepted_latency_ms=latency_summary_ms(accepted, TAIL_PERCENTILES) if accepted else {},
        rejected_latency_ms=latency_summary_ms(rejected, TAIL_PERCENTILES) if rejected else {},
        recovery_s=recovered,
        rss_before_mib=rss_before,
        rss_peak_mib=peak,
        rss_after_mib=rss_mib(server_pid),
    )
