"""``resserve bench server`` end to end: engine, preprocessing and HTTP measured in one run."""

from __future__ import annotations

from pathlib import Path

from server_harness import write_model

from resserve.bench.server import run_server_bench


def test_bench_server_measures_all_three_and_the_ratio(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    result = run_server_bench(repo, "r18", concurrency=2, duration_s=1.5, warmup_s=0.5, image_size=(320, 240),
                              engine_round_s=0.2)
    assert result.engine_img_s > 0 and result.preprocess_img_s_one_core > 0 and result.e2e_img_s > 0
    expected_bound = 1 / (1 / result.engine_img_s + 1 / result.preprocess_img_s_one_core)
    assert abs(result.bound_img_s - expected_bound) < 1e-9
    assert result.ratio == result.e2e_img_s / result.bound_img_s
    assert set(result.statuses) == {"200"} and result.latency_ms["p50_ms"] > 0
