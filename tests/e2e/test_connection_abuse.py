"""Connection-layer abuse against a real ``resserve serve`` (issue 30, findings 1 and 6): sockets that
never finish their request head, header floods that never end, and a connection flood that must not
starve the health probes. No API key is needed for any of these attacks, so the server runs with
keys set: the defence must hold before authentication."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from resserve.perf.server_process import server_process
from tests.server_harness import jpeg, write_model

KEY = "k" * 32


@pytest.fixture
def repo(model_onnx: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    return repo


def connect(url: str, timeout_s: float = 5.0) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes | None:
    """Everything the server sends until it closes the connection; None if it is still open after
    ``timeout_s``."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_heads_that_never_finish_are_answered_408_and_closed(repo: Path, tmp_path: Path, parser: str) -> None:
    env = {"RESSERVE_API_KEYS": KEY, "RESSERVE_HEADER_TIMEOUT_S": "1", "RESSERVE_HTTP_PARSER": parser}
    with server_process(repo, log_dir=tmp_path, env=env, kill=True) as server:
        silent = [connect(server.url) for _ in range(16)]
        partial = [connect(server.url) for _ in range(16)]
        for sock in partial:
            sock.sendall(b"POST /v2/models/r18/classify HTTP/1.1\r\nHost: x\r\nContent-Le")
        # A keep-alive connection that sent one request, then half of the next one.
        again = connect(server.url)
        again.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert again.recv(4096).startswith(b"HTTP/1.1 200")
        again.sendall(b"GET /v2/health/live HTTP/1.1\r\nHo")
        started = time.monotonic()
        for sock in silent:  # never a byte: closed without an answer
            assert read_until_closed(sock, 5.0) == b""
        for sock in [*partial, again]:  # half a head: 408, then closed
            answer = read_until_closed(sock, 5.0)
            assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
            assert b"connection: close" in answer.lower()
        assert time.monotonic() - started < 5.0
        for sock in [*silent, *partial, again]:
            sock.close()
        # A client that sends its head promptly is not cut: a body may take body_timeout_s.
        slow_body = connect(server.url)
        slow_body.sendall(b"POST /v2/models/r18/classify HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                          + b"\r\nContent-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n12345")
        time.sleep(1.6)
        slow_body.sendall(b"67890")
        slow_body.settimeout(10)
        answer = slow_body.recv(65536)
        assert answer.startswith(b"HTTP/1.1 4"), answer  # the app's answer to a bad image, not a 408
        assert not answer.startswith(b"HTTP/1.1 408")
        slow_body.close()


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_a_header_flood_is_refused_431_before_it_is_buffered(repo: Path, tmp_path: Path, parser: str) -> None:
    env = {"RESSERVE_API_KEYS": KEY, "RESSERVE_MAX_HEADER_BYTES": "8192", "RESSERVE_HTTP_PARSER": parser}
    with server_process(repo, log_dir=tmp_path, env=env, kill=True) as server:
        for flood in (b"X-API-Key: " + b"a" * 64 + b"\r\n",  # many headers
                      b"a" * 4096):  # one header that never ends
            sock = connect(server.url)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = 0
            answer = None
            while sent < 4 * 1024 * 1024:  # the server answers long before 4 MiB
                try:
                    sock.sendall(flood * 64)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(flood) * 64
                sock.settimeout(0.001)
                try:
                    answer = sock.recv(65536)
                    break
                except TimeoutError:
                    pass
            sock.settimeout(5)
            answer = answer or read_until_closed(sock, 5.0)
            assert answer is not None and answer.startswith(b"HTTP/1.1 431"), answer
            sock.close()
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200


def test_probes_answer_while_connections_are_over_the_limit(repo: Path, tmp_path: Path) -> None:
    env = {"RESSERVE_API_KEYS": KEY, "RESSERVE_MAX_CONNECTIONS": "8", "RESSERVE_HEADER_TIMEOUT_S": "30"}
    with server_process(repo, log_dir=tmp_path, env=env, kill=True) as server:
        held = [connect(server.url) for _ in range(24)]
        for sock in held[::2]:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Par")
        time.sleep(0.3)
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert httpx.get(f"{server.url}{path}", timeout=5).status_code == 200, path
        refused = httpx.post(f"{server.url}/v2/models/r18/classify", content=jpeg(),
                             headers={"content-type": "image/jpeg", "x-api-key": KEY}, timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while httpx.post(f"{server.url}/v2/models/r18/classify", content=jpeg(),
                         headers={"content-type": "image/jpeg", "x-api-key": KEY}, timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
