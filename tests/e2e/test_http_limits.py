"""HTTP abuse against a real ``resserve serve`` process: oversize headers, idle and slow connections,
connection limits, multipart floods, NaN tensors and path tricks. The server answers 4xx/503 and
keeps serving."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from resserve.perf.server_process import server_process
from tests.server_harness import jpeg, write_model


@pytest.fixture
def repo(model_onnx: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    return repo


def raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def classify_ok(url: str) -> bool:
    r = httpx.post(f"{url}/v2/models/r18/classify", content=jpeg(), headers={"content-type": "image/jpeg"},
                   timeout=30)
    return r.status_code == 200


def test_limits_and_abuse(repo: Path, tmp_path: Path) -> None:
    env = {"RESSERVE_KEEP_ALIVE_TIMEOUT_S": "1", "RESSERVE_MAX_MULTIPART_FILES": "4",
           "RESSERVE_MAX_HEADER_BYTES": "8192"}
    with server_process(repo, log_dir=tmp_path, env=env, kill=True) as server:
        url = server.url
        # Headers over the limit: 431, and the server goes on.
        big = httpx.get(f"{url}/v2/health/live", headers={"x-padding": "a" * 20_000})
        assert big.status_code == 431 and "exceed the limit of 8192" in big.json()["error"]

        # A slow client that never finishes its headers does not hold anyone else up.
        slow = raw(url)
        slow.sendall(b"POST /v2/models/r18/classify HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert classify_ok(url)

        # An idle keep-alive connection is closed after keep_alive_timeout_s.
        idle = raw(url)
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(2.0)
        idle.settimeout(3)
        assert idle.recv(4096) == b""  # closed by the server
        idle.close()
        slow.close()

        # Too many multipart parts: 413 naming the limit (images are what cost).
        files = [("file", (f"{i}.jpg", jpeg(seed=i), "image/jpeg")) for i in range(5)]
        many = httpx.post(f"{url}/v2/models/r18/classify", files=files, timeout=30)
        assert many.status_code == 413 and "at most 4 parts (max_multipart_files)" in many.json()["error"]

        # NaN in a binary OIP tensor: 400, not NaN scores.
        x = np.zeros((1, 3, 224, 224), np.float32)
        x[0, 0, 0, 0] = np.nan
        header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                         "parameters": {"binary_data_size": x.nbytes}}]}).encode()
        nan = httpx.post(f"{url}/v2/models/r18/infer", content=header + x.tobytes(),
                         headers={"Inference-Header-Content-Length": str(len(header))}, timeout=30)
        assert nan.status_code == 400 and "must be finite" in nan.json()["error"]

        # Path tricks in model names and versions never reach the file system.
        for path in ("/v2/models/..%2F..%2Fetc%2Fpasswd/classify", "/v2/models/r18/versions/..%2F1/classify",
                     "/v2/models/%2e%2e/classify", "/v2/models/r18/versions/99/classify"):
            r = httpx.post(url + path, content=jpeg(), headers={"content-type": "image/jpeg"}, timeout=30)
            assert r.status_code == 404, (path, r.status_code, r.text)
        assert classify_ok(url)


def test_connection_limit_answers_503(repo: Path, tmp_path: Path) -> None:
    with server_process(repo, log_dir=tmp_path, env={"RESSERVE_MAX_CONNECTIONS": "3"}, kill=True) as server:
        held = []
        for _ in range(4):  # four slow clients hold requests open
            sock = raw(server.url)
            sock.sendall(b"POST /v2/models/r18/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 100000\r\n\r\n" + b"\xff" * 10)
            held.append(sock)
        time.sleep(0.5)
        assert not classify_ok(server.url)  # 503: at the limit
        assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200  # probes exempt
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while not classify_ok(server.url):
            assert time.monotonic() < deadline
            time.sleep(0.1)
