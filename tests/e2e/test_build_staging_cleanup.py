"""A real server stopped, or killed outright, in the middle of a build leaves no staging folder
(issue 30: the server SIGKILLed its build child at shutdown and a killed server's child went on,
so `.NAME-build-*` folders, 118 MiB in one test, piled up in a container's /tmp)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resserve.perf.server_process import free_port
from tests.server_harness import wait_for

pytest.importorskip("torch", reason="a build from PyTorch weights (the export extra) takes long enough to stop")


def staging(folder: Path) -> list[Path]:
    return sorted(folder.glob(".big-build-*"))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["server-stopped", "server-killed"])
def test_no_staging_is_left_when_the_server_stops_mid_build(stop: signal.Signals, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    folder = repo / "big"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("source: {arch: resnet18, random_weights: true, seed: 0}\n"
                                        "max_batch_size: 4\n")
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "resserve", "serve", "--model-repo", str(repo), "--host", "127.0.0.1",
         "--port", str(free_port())], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "RESSERVE_GRACEFUL_SHUTDOWN_S": "0"})
    try:
        assert wait_for(lambda: bool(staging(folder)), 120), (tmp_path / "server.log").read_text()[-3000:]
        server.send_signal(stop)
        server.wait(60)
        # Stopped: the server SIGTERMs its build child, whose cleanup removes the folder. Killed: the
        # kernel sends the child SIGTERM (parent-death signal) and the same cleanup runs.
        assert wait_for(lambda: not staging(folder), 30), (staging(folder), (tmp_path / "server.log").read_text()[-3000:])
        assert not (folder / "1").exists()  # the build was stopped, not finished
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        log.close()
