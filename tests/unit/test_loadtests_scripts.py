"""The report helpers in loadtests/: per-thread CPU from /proc and the stage-breakdown plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

LOADTESTS = Path(__file__).parents[2] / "loadtests"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_cpu_by_thread_sees_the_busy_thread() -> None:
    sys.path.insert(0, str(LOADTESTS))
    try:
        from cpu_by_thread import thread_cpu_seconds
    finally:
        sys.path.remove(str(LOADTESTS))
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin)
    before = thread_cpu_seconds(os.getpid())
    thread.start()
    time.sleep(0.5)
    after = thread_cpu_seconds(os.getpid())
    stop.set()
    thread.join()
    assert thread.native_id in after and thread.native_id not in before
    assert after[thread.native_id] >= 0.1  # the spinning thread, not the sleeping main thread


def test_plot_stages_draws_one_bar_per_run(tmp_path: Path) -> None:
    def run(e2e: float, inference: float) -> Path:
        path = tmp_path / f"{e2e}.json"
        stages = {"preprocess_wait": 5.0, "decode": 2.0, "preprocess": 2.0, "queue": 10.0, "inference": inference}
        path.write_text(json.dumps({"sizes": [{"image_size": [500, 375], "e2e_img_s": e2e, "server_stage_ms": stages,
                                               "server_request_ms": sum(stages.values()) + 7.0}]}))
        return path

    out = tmp_path / "stages.png"
    done = subprocess.run([sys.executable, str(LOADTESTS / "plot_stages.py"), str(out), f"before={run(100, 40)}",
                           f"after={run(150, 30)}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 500


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_access_log_cost_reads_a_process_cpu_time() -> None:
    sys.path.insert(0, str(LOADTESTS))
    try:
        from access_log_cost import _cpu_s
    finally:
        sys.path.remove(str(LOADTESTS))
    before = _cpu_s(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        sum(range(1000))
    assert 0.25 <= _cpu_s(os.getpid()) - before < 5


def test_the_scaling_model_names_the_first_wall() -> None:
    sys.path.insert(0, str(LOADTESTS))
    try:
        from scaling_model import Costs, Scenario, table, throughput
    finally:
        sys.path.remove(str(LOADTESTS))
    costs = Costs(loop_ms=2.0, decode_ms_per_mp=20.0, image_mp=0.5, engine_img_s_per_core=10.0)
    cpu = throughput(costs, Scenario(cores=2, workers=1, engine="cpu"))
    assert cpu.wall == "cores" and cpu.img_s == 2 * 1000 / (2.0 + 10.0 + 100.0)
    one_loop = throughput(costs, Scenario(cores=64, workers=1, engine="gpu", gpu_speedup=50))
    assert one_loop.wall == "event loops" and one_loop.img_s == 500.0  # one GIL: 1000 / 2 ms
    workers = throughput(costs, Scenario(cores=64, workers=64, engine="gpu", gpu_speedup=50))
    assert workers.wall == "gpu engine" and workers.img_s == 50 * 10.0 * 2  # 50x this 2-core CPU
    assert throughput(costs, Scenario(cores=64, workers=64, engine="gpu", decode="gpu")).caps["gpu decode"] == 4000
    assert "event loops 500" in table([one_loop])


def _import(name: str):
    sys.path.insert(0, str(LOADTESTS))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(LOADTESTS))


def test_bench_variants_summary_has_a_row_per_model_and_workers_with_every_run() -> None:
    summary = _import("bench_variants").summary

    def run(model: str, workers: int, ratio: float, engine_ms: float) -> dict:
        size = {"label": "500x375", "e2e_img_s_windows": [90.0 * ratio, 100.0 * ratio], "ratio": ratio,
                "preprocess_ms_one_core": 2.0, "bound_img_s": 100.0, "latency_ms": {"p99_ms": 300.0},
                "mean_batch_size": 6.0, "cores_used": {"engine threads": 1.5, "event loops": 0.2, "idle": 0.1},
                "cpu_ms_per_image": {"engine threads": engine_ms, "event loops": 2.0}}
        return {"model": model, "workers": workers, "engine_img_s": 120.0, "cores": 2, "sizes": [size]}

    # a, 1 worker: windows 72, 80, 75.6, 84 -> median 77.8
    text = summary([run("a", 1, 0.8, 15.0), run("a", 2, 0.9, 14.0), run("a", 1, 0.84, 17.0), run("b", 1, 1.0, 9.0)])
    rows = [line for line in text.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert "| a | 1 | 2 | 120.0 | 2.00 | 100.0 | 77.8 | 0.80, 0.84 | 300, 300 | 6.0 |" in rows
    assert "| a | 2 | 1 | 120.0 | 2.00 | 100.0 | 85.5 | 0.90 | 300 | 6.0 |" in rows
    # The CPU table: cores busy, CPU ms per image in brackets, medians over a row's runs.
    assert "| a | 1 | 1.50 (16.00) | 0.20 (2.00) | 0.10 |" in rows
    assert text.startswith("### 500x375") and len(rows) == 9  # and a gap row per (model, workers)


def test_bench_variants_gap_splits_the_time_per_image_beyond_the_bound() -> None:
    bench_variants = _import("bench_variants")
    # 2 cores; the bare engine 400 img/s (5 ms of the machine per image), preprocessing 1.5 ms on
    # one core: the bound's 6.5 ms. The engine threads ran 1.1 cores at 5.5 ms an image: 200 img/s
    # served, so the machine spent 10 ms per image.
    size = {"label": "photos", "e2e_img_s_windows": [200.0], "ratio": 0.65, "preprocess_ms_one_core": 1.5,
            "bound_img_s": 307.7, "latency_ms": {}, "mean_batch_size": 8.0,
            "cores_used": {"engine threads": 1.1, "preprocessing threads": 0.34, "event loops": 0.14,
                           "load generator": 0.06, "idle": 0.1},
            "cpu_ms_per_image": {"engine threads": 5.5, "preprocessing threads": 1.7, "event loops": 0.7,
                                 "load generator": 0.3}}
    run = {"model": "m", "workers": 1, "engine_img_s": 400.0, "cores": 2, "sizes": [size]}
    gap = bench_variants.gap(run, size)
    assert gap is not None
    assert gap["spent ms/img"] == pytest.approx(10.0) and gap["bound/spent"] == pytest.approx(0.65)
    assert gap["engine over bare"] == pytest.approx(0.5) and gap["idle"] == pytest.approx(0.5)
    # What no column names (other processes, rounding) is the rest, so the columns add up to spent.
    assert gap["rest"] == pytest.approx(10.0 - 6.5 - (0.5 + 0.2 + 0.7 + 0.3 + 0.5))
    rows = [line for line in bench_variants.summary([run]).splitlines() if line.startswith("| m | 1 | 6.50")]
    assert rows == ["| m | 1 | 6.50 | 10.00 | 0.65 | 0.50 | 0.20 | 0.70 | 0.30 | 0.50 | 1.30 |"]
    # A run read without the server's CPU by thread has no gap to show.
    assert bench_variants.gap(run, {**size, "cpu_ms_per_image": {}, "cores_used": {}}) is None


def test_the_tiny_repository_for_the_loop_cost_is_a_servable_model(tmp_path: Path) -> None:
    from resserve.repository import ModelRepository

    repo = _import("scaling_costs").tiny_model_repo(tmp_path)
    config = ModelRepository(repo).config("tiny")
    assert config.preprocess.crop_wh == (32, 32) and config.max_batch_size == 16


def test_bench_variants_compare_puts_each_model_before_and_after_side_by_side() -> None:
    compare = _import("bench_variants").compare

    def run(model: str, ratio: float, rate: float, loop_ms: float) -> dict:
        size = {"label": "500x375", "ratio": ratio, "e2e_img_s": rate, "cpu_ms_per_image": {"event loops": loop_ms}}
        return {"model": model, "workers": 1, "sizes": [size]}

    text = compare([run("a", 0.70, 200.0, 1.2), run("a", 0.74, 210.0, 1.0), run("b", 0.9, 50.0, 0.8)],
                   [run("a", 0.80, 240.0, 0.7)])
    # Medians over each side's runs; a model measured on one side only has no row.
    assert "| a | 1 | 2 / 1 | 0.72 -> 0.80 | 205.0 -> 240.0 | 1.10 -> 0.70 |" in text.splitlines()
    assert "| b |" not in text and text.startswith("### 500x375: before -> after")
