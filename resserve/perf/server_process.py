"""A resserve server in a subprocess on 127.0.0.1: start, wait until ready, stop with SIGTERM.

Benchmarks, load-test sweeps and end-to-end tests all need the same thing: a real server they do
not share an interpreter (or a GIL) with, whose log survives a failure for the error message.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

READY_PATH = "/v2/health/ready"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(base_url: str, alive: Callable[[], bool], timeout_s: float,
                     output: Callable[[], str] = lambda: "", path: str = READY_PATH, poll_s: float = 0.1,
                     headers: Mapping[str, str] | None = None) -> None:
    """Poll ``path`` of a server until it answers 200: a subprocess (``alive``: ``lambda:
    process.poll() is None``) or a server in a thread (``thread.is_alive``). RuntimeError, with
    ``output()`` (its log), once ``alive()`` is false or ``timeout_s`` has passed. ``headers``: a
    key, where health needs one."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not alive():
            raise RuntimeError(f"server stopped before it was ready:\n{output()}")
        try:
            if httpx.get(f"{base_url}{path}", timeout=1, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {timeout_s} s:\n{output()}")
        time.sleep(poll_s)


class ServerProcess:
    """A running server: its process, base URL and log file."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def output(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def report(self) -> str:
        """The exit code, once the process has exited, and :meth:`output`."""
        code = self.process.poll()
        return ("" if code is None else f"exit code {code}\n") + self.output()

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (the server drains), SIGKILL if it outlives ``timeout_s``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


def serve_command(model_repo: Path | str, port: int, *extra: str, log_level: str | None = None) -> list[str]:
    """The command line of ``resserve serve`` on 127.0.0.1:``port``."""
    level = ["--log-level", log_level] if log_level else []
    return [sys.executable, "-m", "resserve.cli", *level, "serve", "--model-repo", str(model_repo),
            "--host", "127.0.0.1", "--port", str(port), *extra]


@contextmanager
def server_process(model_repo: Path | str | None, *extra: str, log_dir: Path | None = None,
                   env: dict[str, str] | None = None, ready_timeout_s: float = 120.0,
                   command: Sequence[str] | None = None, ready_path: str = READY_PATH,
                   kill: bool = False, log_level: str | None = None,
                   ready_headers: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """Run ``resserve serve`` (or ``command``, formatted with ``{port}``) until the block ends.

    The log goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server.
    On exit the server gets SIGTERM and drains (``kill=True``: SIGKILL, for tests that do not care).
    """
    port = free_port()
    own_dir = None if log_dir is not None else tempfile.TemporaryDirectory(prefix="resserve-server-")
    folder = Path(log_dir) if log_dir is not None else Path(own_dir.name)  # type: ignore[union-attr]
    log = folder / f"server-{port}.log"
    if command:
        argv = [part.format(port=port) for part in command]
    elif model_repo is not None:
        argv = serve_command(model_repo, port, *extra, log_level=log_level)
    else:
        raise ValueError("server_process needs a model repository or a command")
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    running = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_until_ready(running.url, running.alive, ready_timeout_s, running.report, ready_path,
                         headers=ready_headers)
        yield running
    finally:
        if kill and process.poll() is None:
            process.kill()
            process.wait(10)
        running.stop()
        if own_dir is not None:
            own_dir.cleanup()
