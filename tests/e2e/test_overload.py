"""Open-loop overload at 3x measured capacity against a real server process, then recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

from resserve.perf.server_process import server_process
from resserve.perf.images import generate
from resserve.perf.overload import run_overload
from tests.server_harness import write_model


def test_overload_is_refused_quickly_accepted_work_stays_bounded_and_service_recovers(
        model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx, max_batch_size=8,
                dynamic_batching={"max_queue_delay_ms": 2, "max_queue_size": 24, "preferred_batch_sizes": [8]})
    with server_process(repo, log_dir=tmp_path, kill=True) as server:
        result = asyncio.run(run_overload(f"{server.url}/v2/models/r18/classify",
                                          generate(((320, 240), (500, 375)), per_size=4), factor=3.0,
                                          duration_s=4.0, capacity_concurrency=8,
                                          server_pid=server.process.pid))
    # Every request got an answer: served or refused with 503, nothing else (no 500, no timeouts).
    assert set(result.statuses) == {"200", "503"}, result.statuses
    assert result.statuses["503"] > result.statuses["200"] / 2  # a real overload, mostly refused
    # Refusals are cheap: the median refusal is answered faster than the median served request.
    assert result.rejected_latency_ms["p50_ms"] < result.accepted_latency_ms["p50_ms"]
    # Admission bounds the backlog, so accepted requests wait for a bounded queue, not for the overload.
    assert result.accepted_latency_ms["p99_ms"] < 10_000
    assert result.recovery_s is not None and result.recovery_s < 10
    assert result.rss_peak_mib is not None and result.rss_before_mib is not None
    assert result.rss_peak_mib - result.rss_before_mib < 300
