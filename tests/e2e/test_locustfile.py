"""loadtests/locustfile.py drives a real server headless (skipped where Locust is not installed)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resserve.perf.server_process import server_process
from tests.server_harness import write_model

LOCUSTFILE = Path(__file__).parents[2] / "loadtests" / "locustfile.py"


@pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                    reason="locust is not installed (pip install locust, or the `locust` extra)")
def test_locustfile_classifies_against_a_real_server(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    with server_process(repo, "--build-missing", log_dir=tmp_path, kill=True) as server:
        done = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2", "-r", "2", "-t", "4s", "--host", server.url,
             "--csv", str(tmp_path / "run"), "--only-summary"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "RESSERVE_MODEL": "r18"})
    assert done.returncode == 0, done.stdout + done.stderr
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0
    assert any("[320x240]" in name or "[500x375]" in name for name in rows)
