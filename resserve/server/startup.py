"""Serve from the first second: the port opens at once, and the repository's models build and
load behind it, one after another, each served as soon as it is ready.

``/v2/health/live`` answers while models build; readiness, per-model readiness, the repository
index and a request's 503 say what each model is doing (:mod:`resserve.serving.lifecycle`). Order:
``first_models`` (the default model), then fp32 models, then the reduced-precision variants built
from them (calibration and accuracy reports take longest), each in repository order.

Builds come from a :class:`BuildSource`, the one protocol, reporting typed
:class:`~resserve.build_events.BuildEvent` objects: ``resserve serve`` runs ``resserve build
--events`` in a child process (:class:`BuildProcess`), so the server imports no build code or
torch, shares no GIL with an export, and stops at once on SIGTERM; tests and embedders wrap an
in-process :class:`ModelBuilder` in :class:`InProcessBuilds`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from resserve.repository import ModelRepository
from resserve.build_events import BuildEvent
from resserve.build_events import failed as build_failed
from resserve.redact import without_paths_under
from resserve.server.app_state import AppState
from resserve.server.workers import WorkerIdentity

log = logging.getLogger(__name__)

class ModelBuilder(Protocol):
    """Builds a model's missing or stale version in this process
    (:class:`resserve.builder.build_pipeline.BuildPipeline` is one; serving never imports it)."""

    def is_stale(self, name: str) -> bool:
        """Whether ``name`` has no built version or one built from other inputs."""
        ...

    def build(self, name: str) -> Path:
        """Build ``name``'s newest version; returns its folder."""
        ...


class BuildSource(Protocol):
    """Builds what is missing or stale, reporting as it goes; ``stop`` abandons what is left."""

    def events(self, names: list[str]) -> AsyncIterator[BuildEvent]: ...

    def stop(self) -> None: ...


class InProcessBuilds:
    """A :class:`ModelBuilder` run in a worker thread, model by model."""

    def __init__(self, builder: ModelBuilder) -> None:
        self.builder = builder

    async def events(self, names: list[str]) -> AsyncIterator[BuildEvent]:
        for name in names:
            try:
                if await asyncio.to_thread(self.builder.is_stale, name):
                    yield BuildEvent(model=name, event="step", message="building")
                    await asyncio.to_thread(self.builder.build, name)
            except Exception as exc:  # one model's failure is its own
                log.error("model %s: build failed: %s", name, exc, exc_info=exc)
                yield build_failed(name, exc)
                continue
            yield BuildEvent(model=name, event="done")

    def stop(self) -> None:
        """A build in a thread cannot be interrupted; it ends on its own (staged, never half-written)."""


class BuildProcess:
    """``resserve build --events`` in a child process, over every model in order, in one go."""

    def __init__(self, model_repo: Path) -> None:
        self.model_repo = model_repo
        self.process: asyncio.subprocess.Process | None = None

    async def events(self, names: list[str]) -> AsyncIterator[BuildEvent]:
        command = [sys.executable, "-m", "resserve", "build", str(self.model_repo), "--events",
                   *(f"--model={name}" for name in names)]
        # stdout carries the events; stderr (the child's progress display and log) is the server's.
        self.process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                            stdin=asyncio.subprocess.DEVNULL)
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            event = BuildEvent.parse(line)
            if event is not None:  # else not an event (a library printing to stdout)
                yield event
        code = await self.process.wait()
        if code != 0:
            log.warning("the build process exited with code %d", code)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM (the child removes its staging folder and exits), SIGKILL after ``grace_s`` if it
        is inside a call that does not return (a kill leaves the staging folder to the next build)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        if not _exits_within(process.pid, grace_s):  # asyncio's child watcher reaps it either way
            process.kill()


class SharedBuilds:
    """Worker 0's builds: every event of ``inner`` is also appended to the shared build log."""

    def __init__(self, inner: BuildSource, identity: WorkerIdentity) -> None:
        self.inner = inner
        self.identity = identity

    async def events(self, names: list[str]) -> AsyncIterator[BuildEvent]:
        """The inner events; then a ``failed`` for every model the builder left without an outcome
        (its process died first), so the other workers, which follow the log until every model is
        settled, stop waiting and agree with this one."""
        settled: set[str] = set()
        try:
            async for event in self.inner.events(names):
                self._append(event)
                if event.event in ("done", "failed"):
                    settled.add(event.model)
                yield event
        except Exception as exc:  # the builder itself broke: what it did not settle fails below
            log.error("the build source failed: %s", exc, exc_info=exc)
        for name in names:
            if name not in settled:
                event = build_failed(name, RuntimeError("the build process ended before building this model"))
                self._append(event)
                yield event

    def _append(self, event: BuildEvent) -> None:
        with self.identity.build_log.open("a") as shared_log:
            shared_log.write(event.line())

    def stop(self) -> None:
        self.inner.stop()


class PeerBuilds:
    """The other workers: worker 0's build events, read from the shared log as they come, until
    every model has an outcome."""

    def __init__(self, identity: WorkerIdentity, poll_s: float = 0.2) -> None:
        self.identity = identity
        self.poll_s = poll_s

    async def events(self, names: list[str]) -> AsyncIterator[BuildEvent]:
        settled: set[str] = set()
        offset = 0
        while not settled.issuperset(names):
            with self.identity.build_log.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
            offset += len(complete)
            for line in complete.splitlines():
                event = BuildEvent.parse(line)
                if event is None:
                    continue
                if event.model in names and event.event in ("done", "failed"):
                    settled.add(event.model)
                if event.event == "failed":
                    event = event.model_copy(update={"reason": f"worker 0's build failed: {event.reason}"})
                yield event
            if not settled.issuperset(names):
                await asyncio.sleep(self.poll_s)

    def stop(self) -> None:
        """Nothing runs here to stop."""


def startup_order(repository: ModelRepository, names: list[str], first: list[str]) -> list[str]:
    """``first`` (in its order), then fp32 models, then reduced precision, each in repository order."""

    def key(item: tuple[int, str]) -> tuple[int, int, int]:
        index, name = item
        if name in first:
            return (0, first.index(name), index)
        try:
            reduced = repository.config(name).precision != "fp32"
        except Exception:  # a bad config fails when its turn comes, with its reason
            reduced = True
        return (1 + int(reduced), 0, index)

    return [name for _, name in sorted(enumerate(names), key=key)]


async def _load(state: AppState, name: str) -> None:
    try:
        await state.manager.load(name)
    except Exception:  # not CancelledError: shutdown stops the start. The manager recorded why.
        return


def _build_failed(state: AppState, name: str, why: str) -> None:
    reason = without_paths_under(why, state.repository.root)
    log.error("model %s not built: %s", name, reason)
    state.manager.lifecycle.fail(name, reason)


async def start_models(state: AppState, names: list[str], builds: BuildSource | None) -> None:
    """Build (when ``builds`` is given) and load every model in ``names``, in that order."""
    lifecycle = state.manager.lifecycle
    try:
        if state.remote is not None:  # the remote's faults are logged inside; the mirror serves what it has
            try:
                await asyncio.to_thread(state.remote.sync)
            except Exception:
                log.exception("remote repository: the sync failed; loading what the mirror holds")
            state.repository.refresh()
        if builds is None:
            for name in names:
                await _load(state, name)
            return
        async for event in builds.events(names):
            name = event.model
            if name not in names:
                continue
            if event.event == "step":
                record = lifecycle.building(name, without_paths_under(event.message, state.repository.root))
                log.info("build: %s", record.step)
            elif event.event == "done":
                await _load(state, name)
            else:
                _build_failed(state, name, event.reason or "the build failed")
            if not [r for r in lifecycle.pending() if r.name in names]:
                state.started = True  # all settled: ready now, not once the build process has exited
        for record in [r for r in lifecycle.pending() if r.name in names]:
            _build_failed(state, record.name, "RuntimeError: the build process ended before building this model")
    finally:
        state.started = True
        # What exists now (modules, engines, labels) lives as long as the process: frozen, the
        # cyclic collector stops rescanning it on every full collection of request garbage.
        gc.freeze()
        ready = [n for n in names if (r := lifecycle.current(n)) is not None and r.serving]
        failed = list(lifecycle.unserved_failures())
        log.info("startup finished: %s ready%s", ", ".join(ready) or "no model",
                 f"; failed: {', '.join(failed)}" if failed else "")


def _exits_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` (a child) has exited within ``seconds``, without reaping it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        time.sleep(0.05)
    return False
