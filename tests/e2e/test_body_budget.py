"""The body budget against a real ``resserve serve`` (issue 30, finding 7): bodies in flight may hold
``max_body_memory_bytes`` with their parse copies, reserved before a byte of the body is read.
Before, nothing bounded the sum: 96 held 19 MiB bodies with a valid key grew the server by 1.95 GB."""

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

KEY = "k" * 32
MIB = 1024 * 1024


@pytest.fixture
def repo(model_onnx: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    return repo


def hold(url: str, length: int, headers: bytes) -> socket.socket:
    """A request whose head declares ``length`` body bytes, of which it sends 10."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"POST /v2/models/r18/infer HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
                 + headers + f"Content-Length: {length}\r\n\r\n".encode() + b"{" * 10)
    return sock


def binary_infer(url: str, batch: int = 1) -> httpx.Response:
    x = np.zeros((batch, 3, 224, 224), np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return httpx.post(f"{url}/v2/models/r18/infer", content=header + x.tobytes(), timeout=30,
                      headers={"Inference-Header-Content-Length": str(len(header)), "x-api-key": KEY})


def test_bodies_in_flight_are_held_to_the_budget_before_they_are_read(repo: Path, tmp_path: Path) -> None:
    # 2 MiB binary bodies count 3 times (6 MiB): six fill 36 MiB (the least the server accepts: one
    # JSON body of 2 MiB, counted 18 times).
    env = {"RESSERVE_API_KEYS": KEY, "RESSERVE_MAX_BODY_BYTES": str(2 * MIB),
           "RESSERVE_MAX_BODY_MEMORY_BYTES": str(36 * MIB), "RESSERVE_BODY_TIMEOUT_S": "30"}
    binary = b"Inference-Header-Content-Length: 100\r\n"
    with server_process(repo, log_dir=tmp_path, env=env, kill=True) as server:
        held = [hold(server.url, 2 * MIB, binary) for _ in range(6)]
        time.sleep(0.5)
        # The seventh is refused from its head: nothing of its body is read.
        refused = hold(server.url, 2 * MIB, binary)
        answer = refused.recv(4096)
        while b"}" not in answer:  # the JSON body may come in a second read
            answer += refused.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower(), answer
        assert b"max_body_memory_bytes" in answer
        busy = binary_infer(server.url)  # a real request: 503 too, and says why
        assert busy.status_code == 503 and "max_body_memory_bytes" in busy.json()["error"]
        # A JSON body of 1 MiB would parse into ~18 MiB.
        json_body = hold(server.url, MIB, b"Content-Type: application/json\r\n")
        assert json_body.recv(4096).startswith(b"HTTP/1.1 503")
        # Unauthenticated bodies reserve nothing: 401 first.
        anonymous = httpx.post(f"{server.url}/v2/models/r18/infer", content=b"{}", timeout=10)
        assert anonymous.status_code == 401
        # Probes and bodiless calls are never refused for memory.
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        for sock in [*held, refused, json_body]:
            sock.close()
        deadline = time.monotonic() + 10
        while (answer_after := binary_infer(server.url)).status_code != 200:
            assert answer_after.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.1)
        ok = httpx.post(f"{server.url}/v2/models/r18/classify", content=jpeg(), timeout=30,
                        headers={"content-type": "image/jpeg", "x-api-key": KEY})
        assert ok.status_code == 200


def deleted_files(pid: int) -> list[str]:
    """Files the process holds open that were unlinked (what ``du`` does not show)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).endswith("(deleted)"):
            found.append(str(target))
    return found


def test_held_multipart_uploads_spool_nothing_to_disk(repo: Path, tmp_path: Path) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {"RESSERVE_API_KEYS": KEY, "TMPDIR": str(spool), "RESSERVE_BODY_TIMEOUT_S": "30"}
    boundary = b"resserve-boundary"
    head = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n")
    with server_process(repo, log_dir=tmp_path, env=env, kill=True) as server:
        host, port = server.url.removeprefix("http://").split(":")
        held = []
        for _ in range(4):  # 3 MiB of a 4 MiB file part sent, the rest held back
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /v2/models/r18/classify HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                         + b"\r\nContent-Type: multipart/form-data; boundary=" + boundary
                         + f"\r\nContent-Length: {4 * MIB}\r\n\r\n".encode() + head + b"\xff" * (3 * MIB))
            held.append(sock)
        time.sleep(1.0)
        assert deleted_files(server.process.pid) == []
        for sock in held:
            sock.close()


def test_a_worst_case_over_the_memory_limit_is_refused_at_start(repo: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "RESSERVE_MAX_BODY_MEMORY_BYTES": str(1 << 50)}  # 1 PiB: more than any machine
    done = subprocess.run([sys.executable, "-m", "resserve", "serve", "--model-repo", str(repo), "--port", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    output = " ".join((done.stdout + done.stderr).split())
    assert "the request path may take more memory than this process may use" in output
    # Every connection's largest JSON body is less than that budget, and still more than the machine has.
    assert "bodies 184,320 MiB (512 connections x 20 MiB x 18 parse copies)" in output
    assert "before any model is loaded" in output
