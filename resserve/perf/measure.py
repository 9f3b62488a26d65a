"""Measurement discipline, as perf_analyzer does it: warm-up, fixed windows, a stability check.

A load point runs until its last ``stable_windows`` windows agree (throughput and mean latency
within ``stability_pct`` of their mean) or ``max_windows`` have passed; the result merges those
last windows and says whether they were stable. Every request that completed in them is counted
by status: errors lower the throughput (only 200s count) and are listed, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from resserve.perf.stats import TAIL_PERCENTILES, latency_summary_ms
from resserve.perf.generator import Arrival, LoadGenerator, Sample
from resserve.perf.server_metrics import ServerBreakdown, Snapshot, breakdown, parse


class MeasurementSettings(BaseModel):
    """How long and how carefully one load point is measured."""

    warmup_s: float = Field(2.0, ge=0)
    window_s: float = Field(2.0, gt=0)
    stable_windows: int = Field(3, ge=1)
    stability_pct: float = Field(10.0, gt=0)
    max_windows: int = Field(6, ge=1)

    @model_validator(mode="after")
    def _enough_windows(self) -> MeasurementSettings:
        if self.max_windows < self.stable_windows:
            raise ValueError(f"max_windows ({self.max_windows}) must be >= stable_windows ({self.stable_windows})")
        return self


class WindowStats(BaseModel):
    """One window: requests that completed in it."""

    duration_s: float
    completed: int
    ok_images: int
    throughput_img_s: float
    mean_latency_ms: float
    statuses: dict[str, int]


class LoadPoint(BaseModel):
    """One measured load point: a concurrency (closed loop) or a rate (open loop)."""

    mode: Literal["closed", "open"]
    concurrency: int | None = None
    rate_rps: float | None = None
    arrival: Arrival | None = None
    stable: bool
    windows: list[WindowStats]
    duration_s: float
    completed: int
    throughput_img_s: float
    # Open loop: requests the schedule put inside the measured windows, per second. A Poisson
    # schedule's count in a short window strays far from rate x duration (1.4 s at 40/s: +-13%).
    offered_rps: float | None = None
    error_rate: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    send_lag_ms: dict[str, float]
    generator_cpu_us_per_request: float
    server: ServerBreakdown | None = None

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.mode == "closed" else f"{self.rate_rps:.1f} rps {self.arrival}"


def window_stats(samples: Sequence[Sample], duration_s: float) -> WindowStats:
    """Counts, images/s of 200s, and mean latency of the samples that completed in a window."""
    statuses = Counter(s.status for s in samples)
    ok_images = sum(s.images for s in samples if s.ok)
    latencies = [s.latency_s for s in samples]
    return WindowStats(
        duration_s=duration_s, completed=len(samples), ok_images=ok_images,
        throughput_img_s=ok_images / duration_s,
        mean_latency_ms=1000.0 * sum(latencies) / len(latencies) if latencies else 0.0,
        statuses=dict(statuses),
    )


def _within(values: Sequence[float], pct: float) -> bool:
    mean = sum(values) / len(values)
    if mean == 0:
        return all(v == 0 for v in values)
    return all(abs(v - mean) / mean * 100.0 <= pct for v in values)


def is_stable(windows: Sequence[WindowStats], count: int, pct: float) -> bool:
    """The last ``count`` windows have throughput and mean latency within ``pct`` % of their mean."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    if any(w.completed == 0 for w in last):
        return False
    return _within([w.throughput_img_s for w in last], pct) and _within([w.mean_latency_ms for w in last], pct)


async def measure(generator: LoadGenerator, start_load: Callable[[asyncio.Event], Awaitable[None]],
                  settings: MeasurementSettings, *, metrics_url: str | None = None, model: str | None = None,
                  **point: object) -> LoadPoint:
    """Run ``start_load`` until the windows are stable (or exhausted) and summarize the last ones.

    ``point``: mode, concurrency or rate_rps, arrival: copied into the result.
    """

    async def scrape() -> Snapshot | None:
        if metrics_url is None or model is None:
            return None
        return parse(await generator.get_text(metrics_url), model)

    generator.samples.clear()
    stop = asyncio.Event()
    load = asyncio.create_task(start_load(stop))
    try:
        await asyncio.sleep(settings.warmup_s)
        marks, times, snapshots = [len(generator.samples)], [time.perf_counter()], [await scrape()]
        cpu = [time.process_time()]
        windows: list[WindowStats] = []
        while True:
            await asyncio.sleep(max(times[-1] + settings.window_s - time.perf_counter(), 0.0))
            # Samples are appended in completion order: a count marks the window boundary exactly.
            marks.append(len(generator.samples))
            times.append(time.perf_counter())
            cpu.append(time.process_time())
            snapshots.append(await scrape())
            windows.append(window_stats(generator.samples[marks[-2]:marks[-1]], times[-1] - times[-2]))
            stable = is_stable(windows, settings.stable_windows, settings.stability_pct)
            if stable or len(windows) >= settings.max_windows or load.done():
                break
    except asyncio.CancelledError:  # interrupted (Ctrl-C): drop what is in flight, do not wait for it
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await load
        raise
    finally:
        stop.set()
        await load
    k = min(settings.stable_windows, len(windows))
    counted = generator.samples[marks[-k - 1]:marks[-1]]
    duration = times[-1] - times[-k - 1]
    statuses = Counter(s.status for s in counted)
    ok = [s for s in counted if s.ok]
    start, end = times[-k - 1], times[-1]
    # Every request sent has its sample by now (the load awaited them): count the ones due inside.
    offered = sum(1 for s in generator.samples if start <= s.scheduled < end) / duration \
        if point.get("mode") == "open" else None
    before, after = snapshots[-k - 1], snapshots[-1]
    return LoadPoint(
        stable=stable,
        windows=windows,
        duration_s=duration,
        completed=len(counted),
        throughput_img_s=sum(s.images for s in ok) / duration,
        offered_rps=offered,
        error_rate=1.0 - len(ok) / len(counted) if counted else 0.0,
        latency_ms=latency_summary_ms([s.latency_s for s in ok], TAIL_PERCENTILES) if ok else {},
        statuses=dict(statuses),
        send_lag_ms=latency_summary_ms([s.sent - s.scheduled for s in counted], (50.0, 99.0)) if counted else {},
        generator_cpu_us_per_request=1e6 * (cpu[-1] - cpu[-k - 1]) / max(len(counted), 1),
        server=breakdown(before, after) if before is not None and after is not None else None,
        **point,  # type: ignore[arg-type]
    )


async def closed_point(generator: LoadGenerator, concurrency: int, settings: MeasurementSettings,
                       **scrape: str | None) -> LoadPoint:
    """One closed-loop point at ``concurrency``."""
    return await measure(generator, lambda stop: generator.closed_loop(concurrency, stop), settings,
                         mode="closed", concurrency=concurrency, **scrape)


async def open_point(generator: LoadGenerator, rate_rps: float, settings: MeasurementSettings,
                     arrival: Arrival = "poisson", seed: int = 0, **scrape: str | None) -> LoadPoint:
    """One open-loop point at ``rate_rps`` with ``arrival`` spacing."""
    return await measure(generator, lambda stop: generator.open_loop(rate_rps, stop, arrival, seed), settings,
                         mode="open", rate_rps=rate_rps, arrival=arrival, **scrape)
