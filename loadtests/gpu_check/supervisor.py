"""A stage's child: its environment, its own process group and time limit, its progress lines and result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from . import PACKAGE, ROOT

SITE_VARIABLE = "RESSERVE_GPU_CHECK_SITE"  # where the wheels went, for the environment table
PROGRESS = "gpu-check: "  # a child's lines with this prefix are echoed; all its lines go to the log
GRACE_S = 15  # a child's own deadline is its limit minus this, so it can write what it has


def say(message: str) -> None:
    """A progress line of a child, echoed by the parent."""
    print(PROGRESS + message, flush=True)


def child_env(site: str | None) -> dict[str, str]:
    """The children's environment: the installed wheels first, then the checkout, then the rest."""
    paths = [p for p in (site, str(ROOT), os.environ.get("PYTHONPATH")) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", SITE_VARIABLE: site or ""}


def run_child(stage: str, limit_s: float, argv: list[str], env: dict[str, str], log: TextIO) -> dict[str, Any]:
    """Run one stage in a child (its own process group, killed whole at ``limit_s``); its result."""
    fd, name = tempfile.mkstemp(prefix=f"gpu-check-{stage}-", suffix=".json")
    os.close(fd)
    result_path = Path(name)
    command = [sys.executable, str(PACKAGE), *argv, "--stage", stage, "--result", str(result_path),
               "--stage-budget-s", f"{max(limit_s - GRACE_S, 5.0):.0f}"]
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                               text=True, errors="replace", start_new_session=True)
    tail: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(f"[{stage}] {line}")
            tail[:] = [*tail[-19:], line.rstrip()]
            if line.startswith(PROGRESS):
                print(f"  [{stage}] {line[len(PROGRESS):]}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        returncode = process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)  # the stage's own process group: its server and pytest too
        returncode = process.wait()
    reader.join(timeout=5)
    try:
        result = json.loads(result_path.read_text() or "{}")
    except (OSError, ValueError):
        result = {}
    result_path.unlink(missing_ok=True)
    result["seconds"] = round(time.monotonic() - start, 1)
    if timed_out:
        result["status"] = "timeout"
        result["reason"] = f"stopped at its {limit_s:.0f} s limit"
    elif returncode != 0:
        result["status"] = "failed"
        result.setdefault("reason", f"exit {returncode}: " + next(
            (line for line in reversed(tail) if line.strip() and not line.startswith(PROGRESS)), "no output"))
    else:
        result.setdefault("status", "ok")
    return result
