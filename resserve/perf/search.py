"""MLPerf-Server-like search: the highest Poisson rate whose p99 stays under a latency bound.

Binary search between a rate known to pass (``low``, default 0) and one expected to fail
(``high``): each probe is a full open-loop measurement; a probe passes when its p99 is within the
bound, no request failed (503s under overload count as failures, as MLPerf counts them) and the
server kept up (completed at least ``min_delivered`` of the offered rate).
"""

from __future__ import annotations

from pydantic import BaseModel

from resserve.perf.generator import Arrival, LoadGenerator
from resserve.perf.measure import LoadPoint, MeasurementSettings, open_point


class Probe(BaseModel):
    rate_rps: float
    passed: bool
    why: str
    point: LoadPoint


class RateSearch(BaseModel):
    """The answer and every probe that led to it."""

    p99_bound_ms: float
    max_rate_rps: float
    throughput_img_s: float
    p99_ms: float | None
    probes: list[Probe]


def judge(point: LoadPoint, p99_bound_ms: float, max_error_rate: float, min_delivered: float) -> tuple[bool, str]:
    """Whether an open-loop point meets the bound, and why not when it does not."""
    rate = point.rate_rps or 0.0
    if point.error_rate > max_error_rate:
        return False, f"error rate {point.error_rate:.2%} > {max_error_rate:.2%} ({point.statuses})"
    p99 = point.latency_ms.get("p99_ms")
    if p99 is None:
        return False, "no successful request"
    if p99 > p99_bound_ms:
        return False, f"p99 {p99:.0f} ms > {p99_bound_ms:g} ms"
    # Against what the schedule sent in the window, not the mean rate: a short window's Poisson
    # count alone can be 10-20% under the rate.
    offered = point.offered_rps if point.offered_rps is not None else rate
    if point.throughput_img_s < min_delivered * offered:
        return False, f"delivered {point.throughput_img_s:.1f} img/s < {min_delivered:.0%} of {offered:.1f} offered"
    return True, f"p99 {p99:.0f} ms <= {p99_bound_ms:g} ms"


async def find_max_rate(generator: LoadGenerator, p99_bound_ms: float, high_rps: float,
                        settings: MeasurementSettings, *, low_rps: float = 0.0, iterations: int = 5,
                        arrival: Arrival = "poisson", max_error_rate: float = 0.0,
                        min_delivered: float = 0.95, seed: int = 0, **scrape: str | None) -> RateSearch:
    """Bisect [low_rps, high_rps] ``iterations`` times; the answer is the highest passing probe."""
    if not 0 <= low_rps < high_rps:
        raise ValueError(f"need 0 <= low_rps < high_rps, got {low_rps}, {high_rps}")
    low, high = low_rps, high_rps
    probes: list[Probe] = []
    best: Probe | None = None
    for i in range(iterations):
        rate = (low + high) / 2.0
        point = await open_point(generator, rate, settings, arrival, seed + i, **scrape)
        passed, why = judge(point, p99_bound_ms, max_error_rate, min_delivered)
        probe = Probe(rate_rps=rate, passed=passed, why=why, point=point)
        probes.append(probe)
        if passed:
            low, best = rate, probe
        else:
            high = rate
    return RateSearch(
        p99_bound_ms=p99_bound_ms,
        max_rate_rps=best.rate_rps if best else 0.0,
        throughput_img_s=best.point.throughput_img_s if best else 0.0,
        p99_ms=best.point.latency_ms.get("p99_ms") if best else None,
        probes=probes,
    )
