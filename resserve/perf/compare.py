"""A/B comparison of two served models under the same load, interleaved to cancel machine drift.

On shared machines throughput drifts by tens of percent from one minute to the next, so two
variants measured one after the other cannot be compared. Here both are loaded in one server and
the load alternates between them in short windows (A, B, A, B, ...) at each offered rate; each
side's numbers merge its own windows, so drift lands on both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from pydantic import BaseModel

from resserve.perf.stats import TAIL_PERCENTILES, latency_summary_ms
from resserve.perf.generator import Arrival, LoadGenerator, Sample
from resserve.perf.images import Payload


class SideResult(BaseModel):
    model: str
    throughput_img_s: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]


class ComparePoint(BaseModel):
    rate_rps: float
    arrival: Arrival
    windows_per_side: int
    window_s: float
    sides: list[SideResult]


async def _window(generator: LoadGenerator, rate: float, arrival: Arrival, seconds: float, seed: int) -> list[Sample]:
    generator.samples.clear()
    stop = asyncio.Event()
    load = asyncio.create_task(generator.open_loop(rate, stop, arrival, seed))
    await asyncio.sleep(seconds)
    stop.set()
    await load
    return list(generator.samples)


async def compare(base_url: str, models: tuple[str, str], payloads: list[Payload], rates: list[float], *,
                  arrival: Arrival = "poisson", window_s: float = 3.0, rounds: int = 3, warmup_s: float = 2.0,
                  endpoint: str = "/v2/models/{model}/classify") -> list[ComparePoint]:
    """For each rate: warm both up, then ``rounds`` x (A window, B window); the same seeds for A and B."""
    points = []
    async with contextlib.AsyncExitStack() as stack:
        generators = [await stack.enter_async_context(LoadGenerator(base_url + endpoint.format(model=m), payloads))
                      for m in models]
        for rate in rates:
            collected: list[list[Sample]] = [[], []]
            for generator in generators:
                await _window(generator, rate, arrival, warmup_s, seed=999)
            durations = [0.0, 0.0]
            for round_ in range(rounds):
                order = (0, 1) if round_ % 2 == 0 else (1, 0)  # ABBA: neither side always goes first
                for side in order:
                    started = time.perf_counter()
                    collected[side] += await _window(generators[side], rate, arrival, window_s, seed=round_)
                    durations[side] += time.perf_counter() - started
            sides = []
            for side, model in enumerate(models):
                ok = [s.latency_s for s in collected[side] if s.ok]
                sides.append(SideResult(
                    model=model, throughput_img_s=len(ok) / durations[side],
                    latency_ms=latency_summary_ms(ok, TAIL_PERCENTILES) if ok else {},
                    statuses=dict(Counter(s.status for s in collected[side]))))
            points.append(ComparePoint(rate_rps=rate, arrival=arrival, windows_per_side=rounds, window_s=window_s,
                                       sides=sides))
    return points
