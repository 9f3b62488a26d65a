"""``resserve serve`` answers at once and builds behind the open port (issue 15): liveness first,
each model served as soon as it is built and loaded, the others answering 503 with Retry-After
and their state, a broken one FAILED with its reason, the first model first."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from resserve.perf.server_process import server_process
from tests.server_harness import jpeg, write_model


def index(url: str) -> dict[str, dict]:
    return {e["name"]: e for e in httpx.post(f"{url}/v2/repository/index", timeout=10).json()}


def test_the_port_opens_first_and_models_follow(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "alpha", model_onnx)
    write_model(repo, "omega", model_onnx)
    (repo / "broken").mkdir()
    (repo / "broken" / "config.yaml").write_text("source: {onnx: missing.onnx}\n")
    env = {"RESSERVE_ALLOW_REPOSITORY_CONTROL": "true", "RESSERVE_FIRST_MODELS": '["omega"]'}
    started = time.monotonic()
    with server_process(repo, log_dir=tmp_path, env=env, ready_path="/v2/health/live") as server:
        live_s = time.monotonic() - started
        url = server.url
        early = index(url)
        steps = []
        assert {e["state"] for e in early.values()} <= {"PENDING", "BUILDING", "LOADING", "READY", "FAILED"}
        assert any(e["state"] != "READY" for e in early.values()), early  # the port opened before the models
        ready = httpx.get(f"{url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503 and "starting" in ready.json()["error"]

        # A model not serving yet: 503 with Retry-After and what it is doing, never a hang.
        refused = httpx.post(f"{url}/v2/models/alpha/classify", content=jpeg(), timeout=10,
                             headers={"content-type": "image/jpeg"})
        if refused.status_code == 503:
            assert int(refused.headers["retry-after"]) >= 1
            assert any(word in refused.json()["error"] for word in ("building", "loading", "waiting"))

        became_ready: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            entries = index(url)
            for name, entry in entries.items():
                steps.append(entry.get("step", ""))
                if entry["state"] == "READY":
                    became_ready.setdefault(name, time.monotonic())
            if {"alpha", "omega"} <= set(became_ready) and entries["broken"]["state"] == "FAILED":
                break
            time.sleep(0.1)
        assert {"alpha", "omega"} <= set(became_ready), index(url)
        assert became_ready["omega"] <= became_ready["alpha"]  # first_models first
        assert "reason" in entries["broken"] and "missing.onnx" in entries["broken"]["reason"]
        assert str(tmp_path) not in str(entries) + str(steps)  # steps and reasons name no paths
        for name in ("alpha", "omega"):
            r = httpx.post(f"{url}/v2/models/{name}/classify", content=jpeg(), timeout=30,
                           headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
        broken = httpx.post(f"{url}/v2/models/broken/classify", content=jpeg(), timeout=10,
                            headers={"content-type": "image/jpeg"})
        assert broken.status_code == 503 and "failed" in broken.json()["error"]
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 503  # strict: broken is configured
        code = server.stop()
    assert code == 0
    print(f"\nlive after {live_s:.1f} s; ready after", {k: round(v - started, 1) for k, v in became_ready.items()})
