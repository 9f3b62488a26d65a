"""Engine faults injected through a model's configuration, against the real server on 127.0.0.1.

Only the requests of a failing batch fail; failures are counted; a hung engine trips the watchdog,
which takes the model out of readiness until the engine answers again.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from resserve.config import ServerSettings
from tests.server_harness import jpeg, serve_in_thread, write_model


def classify(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/classify", content=jpeg(), headers={"content-type": "image/jpeg"},
                      timeout=30)


def test_failing_batches_fail_only_their_requests(model_onnx: Path, tmp_path: Path) -> None:
    write_model(tmp_path, "flaky", model_onnx, fault_injection={"fail_every_n_batches": 3},
                dynamic_batching={"max_queue_delay_ms": 0})
    with serve_in_thread(ServerSettings(model_repo=tmp_path)) as server:
        # One client: one request per batch, so exactly every third request meets the fault.
        statuses = [classify(server.url, "flaky").status_code for _ in range(9)]
        assert statuses == [200, 200, 500] * 3
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # failures do not unready it
        labels = {"model": "flaky", "version": "1"}
        assert server.metric("resserve_engine_failures_total", labels) == 3
        assert server.metric("resserve_http_requests_total",
                             {"model": "flaky", "endpoint": "classify", "status": "500"}) == 3


def test_hung_engine_trips_the_watchdog_and_the_model_recovers(model_onnx: Path, tmp_path: Path) -> None:
    write_model(tmp_path, "stuck", model_onnx, engine_timeout_s=0.3,
                fault_injection={"hang_every_n_batches": 2, "hang_s": 2.0},
                dynamic_batching={"max_queue_delay_ms": 0})
    with serve_in_thread(ServerSettings(model_repo=tmp_path)) as server:
        assert classify(server.url, "stuck").status_code == 200
        started = time.monotonic()
        hung = classify(server.url, "stuck")  # batch 2 sleeps 2 s: the watchdog answers after 0.3 s
        assert hung.status_code == 500 and "did not answer within 0.3 s" in hung.json()["error"]
        assert time.monotonic() - started < 1.5
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503 and "watchdog" in ready.json()["error"]
        rejected = classify(server.url, "stuck")
        assert rejected.status_code == 503 and int(rejected.headers["retry-after"]) >= 1
        labels = {"model": "stuck", "version": "1"}
        assert server.metric("resserve_engine_hangs_total", labels) == 1
        assert server.metric("resserve_model_ready", labels) == 0
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the model did not come back after the engine answered"
            time.sleep(0.1)
        assert server.metric("resserve_model_ready", labels) == 1
        assert classify(server.url, "stuck").status_code == 200  # batch 3: served again
