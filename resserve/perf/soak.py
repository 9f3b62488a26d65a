"""Soak: a long closed-loop run that counts every outcome and follows the server's memory.

Leaks show as resident memory that keeps growing with the request count. Growth is measured from
the end of a warm-up (allocator arenas, caches and thread pools settle in the first requests) to
the end of the run, with the server's RSS sampled throughout.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from pydantic import BaseModel

from resserve.perf.stats import TAIL_PERCENTILES, latency_summary_ms
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import Payload
from resserve.perf.overload import rss_mib


class SoakResult(BaseModel):
    requests: int
    duration_s: float
    throughput_img_s: float
    statuses: dict[str, int]
    latency_ms: dict[str, float]
    rss_after_warmup_mib: float | None
    rss_end_mib: float | None
    rss_max_mib: float | None
    rss_growth_pct: float | None
    rss_samples_mib: list[float]


async def run_soak(url: str, payloads: list[Payload], *, requests: int = 20_000, concurrency: int = 8,
                   warmup_requests: int = 3_000, server_pid: int | None = None,
                   max_duration_s: float = 600.0) -> SoakResult:
    """``requests`` measured requests (after ``warmup_requests``), or until ``max_duration_s``."""
    async with LoadGenerator(url, payloads, max_outstanding=max(concurrency, 16)) as generator:
        stop = asyncio.Event()
        load = asyncio.create_task(generator.closed_loop(concurrency, stop))
        while len(generator.samples) < warmup_requests and not load.done():
            await asyncio.sleep(0.2)
        warm = len(generator.samples)
        started = time.perf_counter()
        rss_start = rss_mib(server_pid)
        samples_mib = [rss_start] if rss_start is not None else []
        while len(generator.samples) - warm < requests and time.perf_counter() - started < max_duration_s:
            await asyncio.sleep(1.0)
            current = rss_mib(server_pid)
            if current is not None:
                samples_mib.append(current)
        stop.set()
        await load
        duration = time.perf_counter() - started
        measured = generator.samples[warm:]
    rss_end = rss_mib(server_pid)
    ok = [s.latency_s for s in measured if s.ok]
    return SoakResult(
        requests=len(measured),
        duration_s=duration,
        throughput_img_s=len(ok) / duration,
        statuses=dict(Counter(s.status for s in measured)),
        latency_ms=latency_summary_ms(ok, TAIL_PERCENTILES) if ok else {},
        rss_after_warmup_mib=rss_start,
        rss_end_mib=rss_end,
        rss_max_mib=max(samples_mib) if samples_mib else None,
        rss_growth_pct=100.0 * (rss_end - rss_start) / rss_start if rss_start and rss_end else None,
        rss_samples_mib=samples_mib,
    )
