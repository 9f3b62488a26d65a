"""``resserve bench server`` end to end: engine, preprocessing and HTTP measured in one run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from resserve.perf.server_bench import bound_img_s, run_server_bench
from tests.server_harness import write_model


def test_bound_counts_engine_cores_and_one_core_of_preprocessing() -> None:
    # 2 cores, engine 200 img/s on both (10 ms of CPU per image), preprocessing 5 ms: 15 ms per image.
    assert abs(bound_img_s(200.0, 0.005, 2) - 2 / 0.015) < 1e-9
    assert bound_img_s(200.0, 0.0, 2) == 200.0


def test_bench_server_measures_engine_preprocessing_and_http_per_size(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    result = run_server_bench(repo, "r18", concurrency=2, image_sizes=((320, 240), (640, 480)), rounds=2,
                              window_s=0.8, warmup_s=0.3, engine_s=0.3, preprocess_s=0.3)
    assert result.engine_img_s > 0 and result.engine_instances == 1 and len(result.engine_img_s_rounds) == 2
    small, large = result.size(320, 240), result.size(640, 480)
    assert large.preprocess_ms_one_core > small.preprocess_ms_one_core > 0
    for size in (small, large):
        assert len(size.bound_img_s_rounds) == 2 and len(size.e2e_img_s_windows) == 2 and size.e2e_img_s > 0
        # Each round's bound comes from that round's engine rate; the ratio is per round, then the median.
        assert size.bound_img_s_rounds[0] < result.engine_img_s_rounds[0]
        ratios = [e / b for e, b in zip(size.e2e_img_s_windows, size.bound_img_s_rounds, strict=True)]
        assert abs(size.ratio - sum(ratios) / 2) < 1e-9
        assert set(size.statuses) == {"200"} and size.latency_ms["p50_ms"] > 0
        # The server's own histograms cover the measured windows: every stage ran.
        assert size.server_stage_ms["decode"] > 0 and size.server_stage_ms["inference"] > 0
        assert size.mean_batch_size >= 1 and size.server_request_ms > 0


def test_bench_server_measures_a_folder_of_photos_and_where_the_cpu_went(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, size in enumerate(((640, 480), (480, 640), (800, 600))):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            photos / f"{index}.JPEG")
    result = run_server_bench(repo, "r18", concurrency=2, images=photos, rounds=1, window_s=1.0, warmup_s=0.3,
                              engine_s=0.3, preprocess_s=0.3)
    synthetic, real = result.size(500, 375), result.photos()
    assert synthetic.label == "500x375" and real.label == "photos: photos (3)"
    assert real.image_size == (640, 600)  # the median width and height
    assert real.e2e_img_s > 0 and real.preprocess_ms_one_core > 0 and set(real.statuses) == {"200"}
    for size in (synthetic, real):
        # The server names its threads for the kernel, so /proc tells engine from preprocessing work.
        assert size.cpu_ms_per_image["engine threads"] > 0, size.cpu_ms_per_image
        assert size.cpu_ms_per_image["preprocessing threads"] > 0
        assert size.cpu_ms_per_image["event loops"] > 0
        assert size.cpu_ms_per_image["load generator"] > 0
        assert "idle" in size.cores_used and "idle" not in size.cpu_ms_per_image
        assert sum(v for k, v in size.cores_used.items() if k != "idle") <= result.cores * 1.1
