"""The metrics port (issue 30): ``/metrics`` and the probes on a listener of their own, no
``/metrics`` on the inference port, and probes there that a connection flood of the inference
port cannot reach."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from resserve.perf.server_process import free_port, server_process
from tests.server_harness import jpeg, write_model

KEY = "k" * 32


@pytest.fixture
def repo(model_onnx: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    return repo


def test_metrics_and_probes_on_their_own_port(repo: Path, tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {"RESSERVE_API_KEYS": KEY, "RESSERVE_METRICS_PORT": str(metrics_port), "RESSERVE_MAX_CONNECTIONS": "8",
           "RESSERVE_HEADER_TIMEOUT_S": "30"}
    side = f"http://127.0.0.1:{metrics_port}"
    with server_process(repo, log_dir=tmp_path, env=env, kill=True) as server:
        ok = httpx.post(f"{server.url}/v2/models/r18/classify", content=jpeg(),
                        headers={"content-type": "image/jpeg", "x-api-key": KEY}, timeout=30)
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/metrics", timeout=5).status_code == 404  # not on the inference port
        scrape = httpx.get(f"{side}/metrics", timeout=5)
        assert scrape.status_code == 200 and 'resserve_http_requests_total{' in scrape.text
        assert 'model="r18"' in scrape.text
        # Only the probes and the metrics: the side port serves no inference, keyed or not.
        assert httpx.post(f"{side}/v2/models/r18/classify", content=jpeg(),
                          headers={"content-type": "image/jpeg", "x-api-key": KEY}, timeout=5).status_code == 404
        host, port = server.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(32)]
        time.sleep(0.3)
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert httpx.get(f"{side}{path}", timeout=5).status_code == 200, path
        for sock in held:
            sock.close()
