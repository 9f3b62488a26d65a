"""What the load generator itself costs: its CPU time per request against a trivial endpoint.

On a shared 2-core machine every microsecond the generator spends is taken from the server. The
number that matters is client CPU per request (process time / requests): multiplied by a
server's request rate it gives the share of a core the generator used in that test.
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel

from resserve.perf.server_process import server_process
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import Payload
from resserve.perf.measure import MeasurementSettings, closed_point

TRIVIAL_SERVER = [sys.executable, "-m", "resserve.perf.trivial", "--port", "{port}"]


class GeneratorOverhead(BaseModel):
    concurrency: int
    body_bytes: int
    requests_per_s: float
    cpu_us_per_request: float
    p50_ms: float
    p99_ms: float

    def share_of_core(self, requests_per_s: float) -> float:
        """Fraction of one core the generator needs to drive ``requests_per_s``."""
        return requests_per_s * self.cpu_us_per_request / 1e6


def measure_overhead(payloads: list[Payload], concurrency: int = 16,
                     settings: MeasurementSettings | None = None) -> GeneratorOverhead:
    """Closed loop against ``resserve.perf.trivial`` (POST /ok reads the body, answers 200)."""
    settings = settings or MeasurementSettings(warmup_s=1.0, window_s=1.5, max_windows=4)
    with server_process(None, command=TRIVIAL_SERVER) as server:
        async def run() -> GeneratorOverhead:
            async with LoadGenerator(f"{server.url}/ok", payloads) as generator:
                point = await closed_point(generator, concurrency, settings)
            return GeneratorOverhead(
                concurrency=concurrency,
                body_bytes=sum(len(p.body) for p in payloads) // len(payloads),
                requests_per_s=point.throughput_img_s,
                cpu_us_per_request=point.generator_cpu_us_per_request,
                p50_ms=point.latency_ms["p50_ms"],
                p99_ms=point.latency_ms["p99_ms"],
            )

        return asyncio.run(run())
