"""Interleaved A/B comparison of two models in one real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from resserve.perf.server_process import server_process
from resserve.perf.compare import compare
from resserve.perf.images import generate
from tests.server_harness import write_model


def test_compare_interleaves_two_models_and_reports_each(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "fixed", model_onnx, dynamic_batching={"max_queue_delay_ms": 5})
    write_model(repo, "adaptive", model_onnx, dynamic_batching={"latency_target_ms": 500})
    with server_process(repo, log_dir=tmp_path, kill=True) as server:
        points = asyncio.run(compare(server.url, ("fixed", "adaptive"), generate(((320, 240),), per_size=4),
                                     [10.0], window_s=0.8, rounds=2, warmup_s=0.5))
    (point,) = points
    assert [side.model for side in point.sides] == ["fixed", "adaptive"]
    for side in point.sides:
        assert set(side.statuses) == {"200"} and side.statuses["200"] >= 8  # ~10/s over 2 x 0.8 s windows
        assert 3 < side.throughput_img_s < 20 and side.latency_ms["p99_ms"] > 0

    from PIL import Image

    from resserve.perf.load_report import plot_compare

    png = plot_compare(points, tmp_path / "compare.png", "fixed vs adaptive", target_ms=500)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 600
