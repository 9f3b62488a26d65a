"""Percentiles and a summary of latency samples, shared by every benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0)
# The load tester's set, as perf_analyzer and MLPerf report them.
TAIL_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def percentile_ms(samples_s: Sequence[float], q: float) -> float:
    """The q-th percentile of samples in seconds, in milliseconds (linear interpolation)."""
    if not samples_s:
        raise ValueError("no samples")
    return float(np.percentile(np.asarray(samples_s, dtype=np.float64), q) * 1000.0)


def latency_summary_ms(samples_s: Sequence[float],
                       percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """The percentiles (``p50_ms``, ``p99.9_ms``, ...), mean and max in milliseconds."""
    summary = {f"p{q:g}_ms": percentile_ms(samples_s, q) for q in percentiles}
    summary["mean_ms"] = float(np.mean(samples_s) * 1000.0)
    summary["max_ms"] = float(np.max(samples_s) * 1000.0)
    return summary
