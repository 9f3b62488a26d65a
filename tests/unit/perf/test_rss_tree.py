"""Server memory in load-test reports counts the whole process tree (issue 30): with workers the
server is a supervisor holding almost nothing and workers holding the models."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from resserve.perf.overload import rss_mib


def test_rss_counts_the_children_of_the_process() -> None:
    # A child that holds 200 MiB, touched so that it is resident.
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(200 << 20); "
                              "b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ok"
        own = rss_mib(child.pid)
        assert own is not None and own > 200
        mine_alone = _own_rss_mib()
        tree = rss_mib(os.getpid())
        assert tree is not None and tree >= mine_alone + own * 0.95
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    time.sleep(0.05)
    assert (rss_mib(os.getpid()) or 0) < (tree or 0) - 150  # gone with the child


def _own_rss_mib() -> float:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
