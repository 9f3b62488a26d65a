"""Corrupt artifacts fail only their model; a stuck batch does not hold up a shutdown that may not wait.

Real builds, real ONNX Runtime sessions, a real uvicorn on 127.0.0.1: the artifacts are damaged
after a good build (so the build is not stale and nothing rebuilds them), as a bad disk, a
truncated copy or a hand edit would.
"""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import onnx

from resserve.perf.server_process import free_port, wait_until_ready
from resserve.builder.build_pipeline import BuildPipeline
from resserve.config import ServerSettings
from resserve.metrics import Metrics
from resserve.repository import ModelRepository
from resserve.server.app import create_app
from resserve.server.serve import DrainingServer, uvicorn_config
from tests.server_harness import builder_for, jpeg, serve_in_thread, write_model

JPEG = {"content-type": "image/jpeg"}


def classify(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/classify", content=jpeg(), headers=JPEG, timeout=30)


def index(url: str) -> dict[str, dict[str, str]]:
    response = httpx.post(f"{url}/v2/repository/index", timeout=30)
    assert response.status_code == 200, response.text
    # One entry per name: the one that serves (the index lists every version, oldest first).
    entries: dict[str, dict[str, str]] = {}
    for entry in response.json():
        if entry["name"] not in entries or entries[entry["name"]]["state"] != "READY":
            entries[entry["name"]] = entry
    return entries


def truncate(artifact: Path) -> None:
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 2])


def corrupt_metadata(artifact: Path) -> None:
    """The preprocessing contract the model records, no longer JSON."""
    model = onnx.load(str(artifact))
    [prop] = [p for p in model.metadata_props if p.key == "resserve.preprocess"]
    prop.value = '{"resize": '
    onnx.save(model, str(artifact))


def corrupt_weights(artifact: Path) -> None:
    """Parses, metadata intact, but ONNX Runtime refuses it: a weight with half its bytes."""
    model = onnx.load(str(artifact))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    weight.raw_data = weight.raw_data[: len(weight.raw_data) // 2]
    onnx.save(model, str(artifact))


def built_copies(root: Path, model_onnx: Path, names: list[str]) -> None:
    """``good`` built once; every other name gets the same built version (not stale: no rebuild)."""
    write_model(root, "good", model_onnx)
    BuildPipeline(ModelRepository(root)).build("good")
    for name in names:
        write_model(root, name, model_onnx)
        shutil.copytree(root / "good" / "1", root / name / "1")
    assert not any(BuildPipeline(ModelRepository(root)).is_stale(name) for name in names)


def test_corrupt_artifacts_fail_only_their_models(model_onnx: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    built_copies(root, model_onnx, ["truncated", "badmeta", "badweights"])
    truncate(root / "truncated" / "1" / "model.onnx")
    corrupt_metadata(root / "badmeta" / "1" / "model.onnx")
    corrupt_weights(root / "badweights" / "1" / "model.onnx")
    settings = ServerSettings(model_repo=root, allow_repository_control=True)
    with serve_in_thread(settings, wait_for="/v2/models/good/ready") as server:  # the startup survived
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503
        why = ready.json()["error"]
        assert "model truncated failed to load: DecodeError" in why
        assert "model badmeta failed to load: JSONDecodeError" in why
        assert "model badweights failed to load:" in why
        assert classify(server.url, "good").status_code == 200
        for broken in ("truncated", "badmeta", "badweights"):
            assert classify(server.url, broken).status_code == 503
        entries = index(server.url)
        assert entries["good"]["state"] == "READY" and "reason" not in entries["good"]
        for broken in ("truncated", "badmeta", "badweights"):
            assert entries[broken]["state"] == "FAILED"
            assert entries[broken]["reason"] == server.app.state.resserve.manager.lifecycle.current(broken).reason
        answers = ready.text + str(entries)
        assert str(tmp_path) not in answers and "/tmp" not in answers  # where the repository lives stays private


def test_readiness_names_models_only_to_a_caller_with_a_key(model_onnx: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    built_copies(root, model_onnx, ["secret-model"])
    truncate(root / "secret-model" / "1" / "model.onnx")
    settings = ServerSettings(model_repo=root, api_keys=["key-1"])
    with serve_in_thread(settings, wait_for="/v2/health/live") as server:
        anonymous = httpx.get(f"{server.url}/v2/health/ready")
        assert anonymous.status_code == 503
        assert anonymous.json()["error"] == "server not ready: 1 model(s) failed to load"
        wrong = httpx.get(f"{server.url}/v2/health/ready", headers={"x-api-key": "nope"})
        assert "secret-model" not in wrong.text and "DecodeError" not in wrong.text
        keyed = httpx.get(f"{server.url}/v2/health/ready", headers={"x-api-key": "key-1"})
        assert keyed.status_code == 503 and "model secret-model failed to load: DecodeError" in keyed.json()["error"]


def test_loading_a_corrupt_new_version_keeps_the_old_one_serving(model_onnx: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    built_copies(root, model_onnx, [])
    settings = ServerSettings(model_repo=root, allow_repository_control=True)
    with serve_in_thread(settings) as server:
        shutil.copytree(root / "good" / "1", root / "good" / "2")
        truncate(root / "good" / "2" / "model.onnx")
        response = httpx.post(f"{server.url}/v2/repository/models/good/load", timeout=60)
        assert response.status_code in (500, 503), response.text
        message = response.json()["error"]
        assert "model good failed to load: DecodeError" in message
        assert str(tmp_path) not in message and "/tmp" not in message
        assert classify(server.url, "good").status_code == 200  # version 1 answers
        assert server.app.state.resserve.manager.get("good").version == "1"
        entry = index(server.url)["good"]
        assert entry["state"] == "READY" and entry["version"] == "1" and "DecodeError" in entry["reason"]
        entries = httpx.post(f"{server.url}/v2/repository/index", timeout=30).json()
        failed = [e for e in entries if e["name"] == "good" and e["version"] == "2"]  # every version listed
        assert failed and failed[0]["state"] == "FAILED" and "DecodeError" in failed[0]["reason"]
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # the pod still serves


def test_graceful_shutdown_0_does_not_wait_for_a_stuck_batch(model_onnx: Path, tmp_path: Path) -> None:
    hang_s = 4.0
    write_model(tmp_path, "stuck", model_onnx, dynamic_batching={"max_queue_delay_ms": 0},
                fault_injection={"hang_every_n_batches": 1, "hang_s": hang_s})
    settings = ServerSettings(model_repo=tmp_path, port=free_port(), graceful_shutdown_s=0)
    app = create_app(settings, Metrics(), builder_for(settings))
    server = DrainingServer(uvicorn_config(app, settings, log_level="warning"), app.state.resserve, 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    wait_until_ready(url, thread.is_alive, 60, poll_s=0.05)
    engine = app.state.resserve.manager.get("stuck").engines[0]
    closed: list[tuple[float, str]] = []
    close = engine.close

    def recording_close() -> None:
        closed.append((time.monotonic(), threading.current_thread().name))
        close()

    engine.close = recording_close  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        request = pool.submit(classify, url, "stuck")
        time.sleep(0.5)  # in the engine, which sleeps hang_s before it runs the batch
        stopping = time.monotonic()
        server.should_exit = True
        thread.join(hang_s + 10)
        assert not thread.is_alive()
        assert time.monotonic() - stopping < hang_s / 2, "the shutdown waited for the stuck batch"
        try:
            answered = request.result(hang_s + 10).status_code
        except httpx.HTTPError:  # the connection was dropped: also an answer
            answered = 0
        assert answered != 200
    deadline = time.monotonic() + hang_s + 10
    while not closed:
        assert time.monotonic() < deadline, "the engine was never closed"
        time.sleep(0.05)
    [(closed_at, closed_on)] = closed
    assert closed_at >= sent + hang_s - 0.1  # not under the batch still running in the engine thread
    assert closed_on.startswith("engine-stuck")  # on the engine's own thread, not the event loop
