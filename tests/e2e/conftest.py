"""A real ``resserve serve`` process on 127.0.0.1, polled until ready."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from server_harness import free_port

from resserve.export.to_onnx import export_onnx
from resserve.models.weights import load_model


@pytest.fixture(scope="session")
def model_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e_export") / "resnet18.onnx"
    export_onnx(load_model("resnet18", random_weights=True, seed=0), path)
    return path


class ServerProcess:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def server_process(repo: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None,
                   ready_timeout_s: float = 90.0) -> Iterator[ServerProcess]:
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    command = [sys.executable, "-m", "resserve.cli", "serve", "--model-repo", str(repo), "--host", "127.0.0.1",
               "--port", str(port), *extra]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    running = ServerProcess(process, url, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{running.output()}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout_s} s:\n{running.output()}")
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
