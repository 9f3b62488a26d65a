"""``resserve tune`` end to end on a model whose int8 build changes its answers: interrupted by
Ctrl-C (no server left, what was measured kept), resumed by the same command, a winner that is
never the refused precision, written as a model folder, and confirmed by a separate
``resserve loadtest run`` against a server of that folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from resserve.perf.images import generate, write_folder
from resserve.perf.server_process import server_process
from tests.model_repo_fixtures import near_tie_classifier
from tests.server_harness import wait_for, write_model

P99_MS = 300


def measured(state_file: Path) -> list[dict]:
    try:
        return json.loads(state_file.read_text())["measured"]
    except (OSError, ValueError, KeyError):
        return []


def foreground_job() -> None:
    """A session of its own with SIGINT at its default, as a terminal's foreground job has it: a
    suite started in the background by a shell (``cmd &``) runs with SIGINT ignored, and children
    inherit that."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tune_interrupted_resumed_written_and_confirmed_by_a_separate_loadtest(tmp_path: Path) -> None:
    repo, images, out = tmp_path / "repo", tmp_path / "images", tmp_path / "out"
    write_model(repo, "m", near_tie_classifier(tmp_path / "near_tie.onnx"),
                calibration={"count": 8, "held_out": 8, "check_images": 0})
    write_folder(images, generate(((320, 240), (500, 375)), per_size=6))
    command = [sys.executable, "-m", "resserve.cli", "--log-format", "text", "tune", str(repo), "--model", "m",
               "--p99-ms", str(P99_MS), "--images", str(images), "--budget-minutes", "1.2", "--engines",
               "onnxruntime", "--batch-sizes", "1,4", "--first-seconds", "3", "--out", str(out), "--work",
               str(tmp_path / "work")]
    log = tmp_path / "first.log"
    with log.open("wb") as sink:  # its own process group, as a terminal's foreground job
        first = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=foreground_job)
    try:
        # Ctrl-C once a measurement is kept and the next one's server is up.
        assert wait_for(lambda: len(measured(out / "tune.json")) >= 1 or first.poll() is not None, 180, 0.2)
        time.sleep(2)
        assert first.poll() is None, log.read_text()
        os.killpg(first.pid, signal.SIGINT)  # what the terminal sends the whole group
        assert first.wait(120) == 130, log.read_text()
        assert wait_for(lambda: not group_alive(first.pid), 30, 0.2), "a server outlived the interrupted tuner"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    state = json.loads((out / "tune.json").read_text())
    kept = [(m["candidate"], m["seconds"]) for m in state["measured"]]
    assert kept and state["stopped_by"] == "interrupt"
    assert "interrupted" in log.read_text() and (out / "README.md").exists()

    second = subprocess.run([*command, "--write", "tuned"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming {out / 'tune.json'}: {len(kept)} server runs kept" in second.stdout
    state = json.loads((out / "tune.json").read_text())
    runs = [(_name(m["candidate"]), m["seconds"]) for m in state["measured"]]
    assert len(runs) == len(set(runs)), "a kept measurement was measured again"
    assert [(m["candidate"], m["seconds"]) for m in state["measured"][:len(kept)]] == kept

    # The gate refused int8 (it answers class 0 where fp32 answers 1): never measured, never chosen.
    int8 = next(g for g in state["gate"] if (g["engine"], g["precision"], g["fast_preprocess"], g["uint8_input"])
                == ("onnxruntime", "int8", False, False))
    assert not int8["passed"] and int8["why"].startswith("accuracy: top-1 agreement"), int8
    assert state["measured"] and all(m["candidate"]["precision"] == "fp32" for m in state["measured"])
    winner = next(m for m in reversed(state["measured"]) if state["winner"] and m["score"]["goodput_rps"] > 0
                  and _name(m["candidate"]) == state["winner"])
    assert winner["candidate"]["precision"] == "fp32"
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking[0]["candidate"] == state["winner"] and ranking[0]["why_lost"] == "winner"
    assert (out / "pareto.png").stat().st_size > 0
    assert "onnxruntime-int8" in (out / "README.md").read_text()

    written = yaml.safe_load((repo / "tuned" / "config.yaml").read_text())
    assert written["precision"] == "fp32" and written["max_batch_size"] == winner["candidate"]["max_batch_size"]
    assert written["instance_count"] == winner["candidate"]["instances"]

    # A separate load test of the written folder: a rate below the tuned goodput meets the budget, no
    # error. Half of it: the tuner's first-rung probes are 2 s, too short to see a tiny model's queue
    # fill at a few hundred req/s, so its goodput can read high (fresh-clone CI runs at 0.8x read
    # 9-283 answers 503, overload, in 2,500).
    rate = max(1.0, 0.5 * winner["score"]["goodput_rps"])
    workers = str(winner["candidate"]["workers"])
    points = []
    with server_process(repo, "--model", "tuned", "--workers", workers, log_dir=tmp_path) as server:
        # A second try only where the first saw an error: this 2-core VM's speed drifts by up to 1.5x
        # within minutes.
        for attempt in range(2):
            result = tmp_path / f"confirm-{attempt}.json"
            run = subprocess.run([sys.executable, "-m", "resserve.cli", "--log-format", "text", "loadtest", "run",
                                  server.url, "--model", "tuned", "--mode", "open", "--rates", f"{rate:.1f}",
                                  "--images", str(images), "--warmup-s", "1", "--window-s", "3",
                                  "--max-windows", "3", "--json", str(result)],
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stdout + run.stderr
            points.append(json.loads(result.read_text())[0])
            if set(points[-1]["statuses"]) == {"200"}:
                break
    point = points[-1]
    assert set(point["statuses"]) == {"200"}, [p["statuses"] for p in points]
    assert point["latency_ms"]["p99_ms"] <= P99_MS, point["latency_ms"]


def _name(candidate: dict) -> str:
    from resserve.perf.tune_space import Candidate

    return Candidate.model_validate(candidate).name
