"""Load-test logic without a server: arrivals, windows and stability, /metrics deltas, the search's judge."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from prometheus_client import generate_latest

from resserve.perf.stats import TAIL_PERCENTILES, latency_summary_ms
from resserve.perf.generator import CONNECTION_ERROR, Sample, arrival_intervals
from resserve.perf.measure import LoadPoint, MeasurementSettings, WindowStats, is_stable, window_stats
from resserve.perf.search import judge
from resserve.perf.server_metrics import breakdown, parse
from resserve.metrics import Metrics


def test_poisson_intervals_are_exponential_with_the_requested_rate() -> None:
    rate = 50.0
    gaps = np.fromiter(itertools.islice(arrival_intervals(rate, "poisson", seed=3), 20000), dtype=np.float64)
    assert abs(gaps.mean() - 1 / rate) / (1 / rate) < 0.03
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03  # coefficient of variation of an exponential: 1
    # Kolmogorov-Smirnov distance to Exp(rate); the 1% critical value for n=20000 is about 0.0115.
    xs = np.sort(gaps)
    cdf = 1 - np.exp(-rate * xs)
    n = len(xs)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 0.0115
    # Memorylessness shows as no correlation between consecutive gaps.
    assert abs(np.corrcoef(gaps[:-1], gaps[1:])[0, 1]) < 0.03


def test_poisson_intervals_depend_on_the_seed_only() -> None:
    first = list(itertools.islice(arrival_intervals(10, "poisson", seed=1), 5))
    assert first == list(itertools.islice(arrival_intervals(10, "poisson", seed=1), 5))
    assert first != list(itertools.islice(arrival_intervals(10, "poisson", seed=2), 5))


def test_constant_intervals_and_bad_rates() -> None:
    assert list(itertools.islice(arrival_intervals(40, "constant"), 3)) == [0.025] * 3
    with pytest.raises(ValueError, match="positive"):
        next(arrival_intervals(0, "poisson"))
    with pytest.raises(ValueError, match="unknown arrival"):
        next(arrival_intervals(1, "bursty"))  # type: ignore[arg-type]


def _sample(latency_s: float, status: str = "200", start: float = 0.0) -> Sample:
    return Sample(scheduled=start, sent=start, done=start + latency_s, status=status)


def test_window_stats_count_every_status_and_only_200s_as_throughput() -> None:
    samples = [_sample(0.010), _sample(0.030), _sample(0.002, "503"), _sample(0.5, CONNECTION_ERROR)]
    w = window_stats(samples, duration_s=2.0)
    assert w.completed == 4 and w.ok_images == 2
    assert w.throughput_img_s == 1.0
    assert w.statuses == {"200": 2, "503": 1, CONNECTION_ERROR: 1}
    assert math.isclose(w.mean_latency_ms, 1000 * (0.010 + 0.030 + 0.002 + 0.5) / 4)


def _window(throughput: float, latency_ms: float, completed: int = 10) -> WindowStats:
    return WindowStats(duration_s=1, completed=completed, ok_images=completed, throughput_img_s=throughput,
                       mean_latency_ms=latency_ms, statuses={"200": completed})


def test_stability_needs_throughput_and_latency_within_the_band() -> None:
    assert is_stable([_window(100, 50), _window(104, 52), _window(96, 49)], 3, 10)
    assert not is_stable([_window(100, 50), _window(104, 52)], 3, 10)  # too few windows
    assert not is_stable([_window(100, 50), _window(130, 50), _window(100, 50)], 3, 10)  # throughput moved
    assert not is_stable([_window(100, 50), _window(100, 70), _window(100, 50)], 3, 10)  # latency moved
    assert not is_stable([_window(0, 0, 0)] * 3, 3, 10)  # nothing completed is not a stable measurement
    # Only the last windows count: an early warm-up outlier does not block stability.
    assert is_stable([_window(10, 500), _window(100, 50), _window(101, 50), _window(99, 51)], 3, 10)


def test_measurement_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_windows"):
        MeasurementSettings(stable_windows=4, max_windows=3)


def test_tail_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    samples = list(rng.lognormal(-3, 0.7, size=5000))
    summary = latency_summary_ms(samples, TAIL_PERCENTILES)
    for q in TAIL_PERCENTILES:
        assert math.isclose(summary[f"p{q:g}_ms"], 1000 * float(np.percentile(samples, q)))
    assert summary["p99.9_ms"] <= summary["max_ms"] == pytest.approx(1000 * max(samples))


def _scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_server_breakdown_from_metrics_deltas() -> None:
    metrics = Metrics()
    # Traffic before the window must not count.
    metrics.decode.labels("m").observe(1.0)
    metrics.batch_size.labels("m", "1").observe(1)
    metrics.request_duration.labels("m", "1", "classify", "200").observe(2.0)
    before = parse(_scrape(metrics), "m")
    for _ in range(8):
        metrics.decode.labels("m").observe(0.004)
        metrics.preprocess.labels("m").observe(0.002)
        metrics.preprocess_wait.labels("m").observe(0.001)
        metrics.queue_wait.labels("m", "1").observe(0.010)
        metrics.request_duration.labels("m", "1", "classify", "200").observe(0.050)
    metrics.request_duration.labels("m", "1", "classify", "503").observe(0.001)  # rejections are not requests served
    metrics.decode.labels("other").observe(5.0)  # another model
    for size, seconds in ((4, 0.02), (4, 0.02), (8, 0.04), (7, 0.04)):
        metrics.batch_size.labels("m", "1").observe(size)
        metrics.inference.labels("m", "1").observe(seconds)
    result = breakdown(before, parse(_scrape(metrics), "m"))
    assert result.requests == 8
    assert result.request_ms == pytest.approx(50.0)
    assert result.stage_ms["decode"] == pytest.approx(4.0)
    assert result.stage_ms["preprocess"] == pytest.approx(2.0)
    assert result.stage_ms["preprocess_wait"] == pytest.approx(1.0)
    assert result.stage_ms["queue"] == pytest.approx(10.0)
    assert result.inference_ms_per_batch == pytest.approx(30.0) == result.stage_ms["inference"]
    assert result.batches == 4 and result.mean_batch_size == pytest.approx(23 / 4)
    assert result.batch_size_counts == {"4": 2, "7-8": 2}
    assert result.unaccounted_ms == pytest.approx(50.0 - 47.0)


def test_breakdown_of_an_idle_window_is_zero_not_an_error() -> None:
    snapshot = parse(_scrape(Metrics()), "m")
    result = breakdown(snapshot, snapshot)
    assert result.requests == 0 and result.mean_batch_size == 0 and result.batch_size_counts == {}


def _point(p99_ms: float | None, statuses: dict[str, int], throughput: float, rate: float) -> LoadPoint:
    completed = sum(statuses.values())
    return LoadPoint(mode="open", rate_rps=rate, arrival="poisson", stable=True, windows=[], duration_s=1,
                     completed=completed, throughput_img_s=throughput,
                     error_rate=1 - statuses.get("200", 0) / completed,
                     latency_ms={} if p99_ms is None else {"p99_ms": p99_ms}, statuses=statuses,
                     send_lag_ms={}, generator_cpu_us_per_request=0)


def test_max_rate_judge() -> None:
    assert judge(_point(100, {"200": 100}, 99, 100), 250, 0.0, 0.95) == (True, "p99 100 ms <= 250 ms")
    passed, why = judge(_point(300, {"200": 100}, 99, 100), 250, 0.0, 0.95)
    assert not passed and "p99 300 ms > 250 ms" in why
    passed, why = judge(_point(100, {"200": 99, "503": 1}, 99, 100), 250, 0.0, 0.95)
    assert not passed and "error rate" in why and "503" in why
    passed, why = judge(_point(100, {"200": 100}, 80, 100), 250, 0.0, 0.95)
    assert not passed and "delivered" in why
    assert not judge(_point(None, {"504": 3}, 0, 100), 250, 1.0, 0.95)[0]
    # Delivery is judged against what the schedule sent in the window, not the mean rate: a Poisson
    # window that happened to hold 82 requests at 100/s, all answered, keeps up.
    short = _point(100, {"200": 82}, 82, 100).model_copy(update={"offered_rps": 82.0})
    assert judge(short, 250, 0.0, 0.95)[0]
    behind = _point(100, {"200": 82}, 82, 100).model_copy(update={"offered_rps": 100.0})
    assert judge(behind, 250, 0.0, 0.95) == (False, "delivered 82.0 img/s < 95% of 100.0 offered")
