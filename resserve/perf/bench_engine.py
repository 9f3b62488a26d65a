"""Bare-engine benchmark: images/s and latency per batch size, no HTTP, no preprocessing.

This is the reference the server is measured against. Rounds are interleaved across batch
sizes and the median round is reported, because on shared 2-core machines throughput drifts
by 20-30% over minutes; interleaving spreads that drift over every batch size equally.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from resserve import __version__
from resserve.perf.stats import latency_summary_ms
from resserve.engines.base import Engine


@dataclass
class BatchResult:
    """One batch size's figures."""

    batch_size: int
    images_per_s: float  # median over rounds
    images_per_s_min: float
    images_per_s_max: float
    calls: int
    latency_ms: dict[str, float] = field(default_factory=dict)


def cpu_model() -> str:
    """The CPU's marketing name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_engine(
    engine: Engine,
    batch_sizes: list[int],
    *,
    rounds: int = 5,
    round_s: float = 1.0,
    warmup_calls: int = 3,
    seed: int = 0,
) -> list[BatchResult]:
    """Time ``engine.infer`` per batch size: warm-up, then ``rounds`` interleaved timed rounds."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive, got {batch_sizes}")
    if rounds < 1 or round_s <= 0:
        raise ValueError("rounds must be >= 1 and round_s > 0")
    inputs = {b: engine.input_spec.example(b, seed) for b in batch_sizes}
    for b in batch_sizes:
        for _ in range(warmup_calls):
            engine.infer(inputs[b])
    throughput: dict[int, list[float]] = {b: [] for b in batch_sizes}
    latencies: dict[int, list[float]] = {b: [] for b in batch_sizes}
    for _ in range(rounds):
        for b in batch_sizes:
            calls, start = 0, time.perf_counter()
            while True:
                t0 = time.perf_counter()
                engine.infer(inputs[b])
                now = time.perf_counter()
                latencies[b].append(now - t0)
                calls += 1
                if now - start >= round_s and calls >= 2:
                    break
            throughput[b].append(b * calls / (now - start))
    return [
        BatchResult(
            batch_size=b,
            images_per_s=statistics.median(throughput[b]),
            images_per_s_min=min(throughput[b]),
            images_per_s_max=max(throughput[b]),
            calls=len(latencies[b]),
            latency_ms=latency_summary_ms(latencies[b]),
        )
        for b in batch_sizes
    ]


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "resserve": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(path: Path, engine: Engine, results: list[BatchResult], settings: dict[str, Any]) -> None:
    """Results, engine description, settings and environment as one JSON document."""
    doc = {
        "engine": engine.describe(),
        "settings": settings,
        "environment": environment(),
        "results": [asdict(r) for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
