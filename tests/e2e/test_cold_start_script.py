"""loadtests/cold_start.py against a real ``resserve serve`` on a repository with nothing built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from resserve.perf.server_process import free_port
from tests.server_harness import write_model

LOADTESTS = Path(__file__).parents[2] / "loadtests"


def test_cold_start_times_liveness_first_classify_and_every_model(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "resnet50", model_onnx)
    write_model(repo, "other", model_onnx)
    out = tmp_path / "cold.json"
    subprocess.run([sys.executable, str(LOADTESTS / "cold_start.py"), "--model-repo", str(repo),
                    "--port", str(free_port()), "--timeout-s", "120", "--log", str(tmp_path / "server.log"),
                    "--json", str(out)], check=True, timeout=180, capture_output=True)
    result = json.loads(out.read_text())
    assert not result.get("timed_out"), result
    assert 0 < result["live_s"] <= result["first_classify_s"] <= result["all_settled_s"]
    assert {name: state for name, (_, state) in result["models"].items()} == {"resnet50": "READY", "other": "READY"}
    assert result["ready_status"] == 200
