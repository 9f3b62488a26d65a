"""Soak (slow: RESSERVE_SLOW=1): 20,000 requests against a server process; no errors, RSS growth < 5%."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from resserve.perf.server_process import server_process
from resserve.perf.images import generate
from resserve.perf.soak import run_soak
from tests.server_harness import write_model


@pytest.mark.slow
def test_soak_has_no_errors_and_no_memory_growth(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx, max_batch_size=8,
                dynamic_batching={"max_queue_delay_ms": 2, "preferred_batch_sizes": [8]})
    with server_process(repo, log_dir=tmp_path, kill=True) as server:
        result = asyncio.run(run_soak(f"{server.url}/v2/models/r18/classify",
                                      generate(((320, 240), (500, 375)), per_size=4), requests=20_000,
                                      concurrency=8, server_pid=server.process.pid, max_duration_s=900))
    assert result.requests >= 20_000
    assert result.statuses == {"200": result.requests}
    assert result.rss_growth_pct is not None and result.rss_growth_pct < 5.0, result.rss_samples_mib
