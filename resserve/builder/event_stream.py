"""``resserve build --events``: how a server's build child reports, one typed event per line.

The server (``resserve serve``) builds missing models in a child process so that it imports no
build code or torch itself; this is the child's side of that pipe. Every model is built in turn,
each one's failure its own, and the child stops itself when the server that started it is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from resserve.build_events import BuildEvent, failed
from resserve.builder.build_pipeline import BuildPipeline

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def exit_with_parent(poll_s: float = 1.0) -> None:
    """A server killed outright (SIGKILL) cannot stop its build process: the build stops itself
    when its parent is gone, as if stopped (SIGTERM), so its staging folder goes with it."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):  # Linux: SIGTERM the moment the parent dies
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def watch() -> None:  # and a poll, for a parent that died before the prctl (or another OS)
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)  # as if stopped: the build removes its staging folder

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def stop_on_sigterm() -> None:
    """SIGTERM (the server stopping it, or its parent gone) ends the build through Python's own
    exit, so every ``finally`` runs: the staging folder of the model being built is removed."""

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)


def build_with_events(builder: BuildPipeline, names: Sequence[str], force: bool) -> int:
    """Build every model in turn, one event per step, ``done`` or ``failed``; 1 if any failed.

    The events go to the real stdout, whatever redirects ``sys.stdout`` (Rich's live displays do);
    the server logs one line per step, so its terminal shows no spinner drawn over its log lines.
    """
    stop_on_sigterm()
    exit_with_parent()
    events_out = sys.__stdout__
    assert events_out is not None

    def emit(event: BuildEvent) -> None:
        events_out.write(event.line())
        events_out.flush()

    failures = 0
    for name in names:
        def step(message: str, name: str = name) -> None:
            emit(BuildEvent(model=name, event="step", message=message))

        try:
            builder.build(name, force=force, progress=step)
        except Exception as exc:  # one model's failure is its own; the server says why
            log.error("model %s: build failed: %s", name, exc, exc_info=exc)
            emit(failed(name, exc))
            failures += 1
            continue
        emit(BuildEvent(model=name, event="done"))
    return 1 if failures else 0
