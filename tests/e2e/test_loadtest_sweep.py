"""A variant sweep end to end: real servers from an overlay repo, scenarios, JSON, Markdown and PNGs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from resserve.perf.server_process import server_process
from resserve.builder.build_pipeline import BuildPipeline
from resserve.perf.load_report import BATCH_PLOT, STAGES_PLOT, THROUGHPUT_PLOT, write_report
from resserve.perf.sweep import SweepConfig, SweepResult, VariantSpec, overlay_repo, run_sweep
from resserve.repository import ModelRepository
from tests.server_harness import write_model


@pytest.fixture
def repo(model_onnx: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx, max_batch_size=8,
                dynamic_batching={"max_queue_delay_ms": 2, "preferred_batch_sizes": [4, 8]})
    BuildPipeline(ModelRepository(repo)).build("r18")
    return repo


def test_overlay_repo_links_artifacts_and_edits_serving_settings(repo: Path, tmp_path: Path) -> None:
    overlay = overlay_repo(repo, VariantSpec(model="r18", max_batch_size=4, max_queue_delay_ms=7),
                           tmp_path / "overlay")
    config = ModelRepository(overlay).config("r18")
    assert config.max_batch_size == 4 and config.dynamic_batching.max_queue_delay_ms == 7
    assert config.dynamic_batching.preferred_batch_sizes == [4]  # 8 dropped: above the new max
    assert (overlay / "r18" / "1").is_symlink()
    # Serving settings do not enter the build hash: the overlay needs no rebuild.
    assert not BuildPipeline(ModelRepository(overlay)).is_stale("r18")
    assert yaml.safe_load((repo / "r18" / "config.yaml").read_text())["max_batch_size"] == 8  # original untouched


def test_sweep_runs_every_scenario_and_renders_the_report(repo: Path, tmp_path: Path) -> None:
    sweep = SweepConfig.model_validate({
        "name": "e2e",
        "model_repo": str(repo),
        "images": {"sizes": [[320, 240], [640, 480]], "per_size": 2},
        "measurement": {"warmup_s": 0.3, "window_s": 0.6, "stable_windows": 2, "max_windows": 2},
        "closed": {"concurrency": [1, 4]},
        "open": {"fractions_of_peak": [0.3], "arrival": "poisson"},
        "max_rate": {"p99_ms": 2000, "iterations": 2},
        "measure_generator": False,
        "variants": [{"model": "r18", "max_batch_size": 4, "max_queue_delay_ms": 3}, {"model": "missing"}],
    })
    messages: list[str] = []
    result = run_sweep(sweep, say=messages.append)
    good, bad = result.variants
    assert bad.error is not None and "missing" in bad.error  # a broken variant is reported, not fatal
    assert good.error is None, good.error
    assert good.label == "r18 b4 d3ms" and good.config["max_batch_size"] == 4
    assert [p.concurrency for p in good.closed] == [1, 4]
    assert len(good.open) == 1 and good.max_rate is not None and len(good.max_rate.probes) == 2
    for point in [*good.closed, *good.open]:
        assert point.statuses == {"200": point.completed} and point.completed > 0
        assert point.server is not None and point.server.requests > 0
        # The server's own counts agree with the client's within the requests on the window edges.
        assert abs(point.server.requests - point.completed) <= max(8, 0.2 * point.completed)
        assert point.server.stage_ms["decode"] > 0 and point.server.inference_ms_per_batch > 0
        assert 1 <= point.server.mean_batch_size <= 4
    assert good.closed[0].server.mean_batch_size == pytest.approx(1.0)  # one client: batches of one

    out = tmp_path / "report"
    report = write_report(result, out)
    for name in (THROUGHPUT_PLOT, STAGES_PLOT, BATCH_PLOT):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 100
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn
    text = report.read_text()
    assert "| r18 b4 d3ms | onnxruntime | fp32 |" in text and "failed: " in text
    assert f"![Throughput vs p99]({THROUGHPUT_PLOT})" in text
    again = SweepResult.model_validate_json((out / "results.json").read_text())
    assert again.variants[0].closed[1].throughput_img_s == good.closed[1].throughput_img_s


def test_loadtest_run_cli_against_a_running_server(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "points.json"
    with server_process(repo, log_dir=tmp_path, kill=True) as server:
        done = subprocess.run(
            [sys.executable, "-m", "resserve.cli", "loadtest", "run", server.url, "--model", "r18",
             "--mode", "open", "--rates", "15", "--arrival", "constant", "--warmup-s", "0.3", "--window-s", "0.5",
             "--max-windows", "3", "--json", str(out)],
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (point,) = json.loads(out.read_text())
    assert point["mode"] == "open" and point["rate_rps"] == 15 and point["statuses"].get("200", 0) > 0
    assert point["server"]["requests"] > 0
    assert f"wrote {out}" in done.stdout.replace("\n", "")
