"""The pieces of worker mode that need no server: core shares, worker counts, heartbeats and the
build log worker 0 writes and the others follow."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from resserve.build_events import BuildEvent
from resserve.build_events import failed as build_failed
from resserve.server.startup import PeerBuilds, SharedBuilds
from resserve.server.supervisor import core_shares, worker_count
from resserve.server.workers import (
    STALE_AFTER_S,
    WorkerIdentity,
    forget,
    peers_not_ready,
    prepare_folder,
    publish_ready,
)


def test_cores_are_dealt_without_overlap_and_shared_only_when_short() -> None:
    assert core_shares([0, 1, 2, 3], 2) == [{0, 2}, {1, 3}]
    assert core_shares([0, 1], 2) == [{0}, {1}]
    assert core_shares([4, 5, 6], 3) == [{4}, {5}, {6}]
    assert core_shares([0, 1], 3) == [{0}, {1}, {0}]  # more workers than cores: one core each, shared
    assert worker_count("auto", cores=16) == 16 and worker_count(3) == 3 and worker_count("auto", cores=0) == 1


@pytest.fixture
def identity(tmp_path: Path) -> WorkerIdentity:
    prepare_folder(tmp_path)
    return WorkerIdentity(index=0, count=3, folder=tmp_path)


def test_identity_round_trips_through_the_environment(identity: WorkerIdentity) -> None:
    assert WorkerIdentity.from_env(identity.env()) == identity
    assert WorkerIdentity.from_env({}) is None


def test_a_worker_is_ready_only_with_a_fresh_heartbeat(identity: WorkerIdentity) -> None:
    assert peers_not_ready(identity) == [0, 1, 2]
    for index in range(3):
        publish_ready(identity.model_copy(update={"index": index}), True)
    assert peers_not_ready(identity) == []
    stale = time.time() - STALE_AFTER_S - 1
    os.utime(identity.heartbeat(1), (stale, stale))  # hung: stopped beating
    assert peers_not_ready(identity) == [1]
    forget(identity, 2)  # died
    publish_ready(identity, False)  # draining
    assert peers_not_ready(identity) == [0, 1, 2]


class ListedBuilds:
    """A build source that reports a fixed list of events (worker 0's builder stands behind it)."""

    def __init__(self, events: list[BuildEvent]) -> None:
        self.listed = events
        self.stopped = False

    async def events(self, names: list[str]) -> AsyncIterator[BuildEvent]:
        for event in self.listed:
            yield event

    def stop(self) -> None:
        self.stopped = True


async def test_peers_load_what_worker_zero_built_and_fail_what_it_could_not(identity: WorkerIdentity) -> None:
    built = [BuildEvent(model="a", event="step", message="building"), BuildEvent(model="a", event="done"),
             build_failed("b", RuntimeError("bad weights"))]
    shared = SharedBuilds(ListedBuilds(built), identity)
    assert [e async for e in shared.events(["a", "b"])] == built  # worker 0 sees its own events unchanged
    lines = [json.loads(line) for line in identity.build_log.read_text().splitlines()]
    assert [(e["model"], e["event"]) for e in lines] == [("a", "step"), ("a", "done"), ("b", "failed")]
    peer = PeerBuilds(identity.model_copy(update={"index": 1}), poll_s=0.01)
    seen = [e async for e in peer.events(["a", "b"])]
    assert [(e.model, e.event) for e in seen] == [("a", "step"), ("a", "done"), ("b", "failed")]
    assert seen[2].reason == "worker 0's build failed: RuntimeError: bad weights"
    shared.stop()
    assert shared.inner.stopped  # type: ignore[attr-defined]


async def test_a_peer_waits_for_lines_still_being_written(identity: WorkerIdentity) -> None:
    peer = PeerBuilds(identity, poll_s=0.01)
    events = peer.events(["a"])
    with identity.build_log.open("a") as log:
        log.write('{"model": "a", "event": "do')  # half a line: not read yet
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.05)
    assert not first.done()
    with identity.build_log.open("a") as log:
        log.write('ne", "message": "", "reason": ""}\n')
    assert (await asyncio.wait_for(first, 5)).event == "done"
    with pytest.raises(StopAsyncIteration):
        await anext(events)  # every model settled: the peer stops following


async def test_models_the_build_process_left_unsettled_fail_for_every_worker(identity: WorkerIdentity) -> None:
    """The build child died after one step (issue 30): worker 1 used to follow the log for ever."""
    shared = SharedBuilds(ListedBuilds([BuildEvent(model="a", event="step", message="building")]), identity)
    seen = [(e.model, e.event) async for e in shared.events(["a", "b"])]
    assert seen == [("a", "step"), ("a", "failed"), ("b", "failed")]
    peer = PeerBuilds(identity.model_copy(update={"index": 1}), poll_s=0.01)
    followed = await asyncio.wait_for(_collect(peer.events(["a", "b"])), 5)  # ends: every model settled
    assert [(e.model, e.event) for e in followed] == seen
    assert "the build process ended before building this model" in followed[-1].reason


async def _collect(events: AsyncIterator[BuildEvent]) -> list[BuildEvent]:
    return [event async for event in events]


def test_the_supervisor_kills_a_worker_whose_beat_stops_changing_ready_or_not(tmp_path: Path) -> None:
    """Liveness is the beat, not readiness: a worker that is not ready (loading, draining) but
    beating lives; one whose beat stops is killed, whether or not its readiness file is there (a
    worker stopped between removing its readiness and its next beat was never killed before)."""
    import multiprocessing

    from resserve.config import ServerSettings
    from resserve.server.supervisor import Supervisor
    from resserve.server.workers import publish_alive, read_alive

    prepare_folder(tmp_path)
    identity = WorkerIdentity(index=0, count=2, folder=tmp_path)
    supervisor = Supervisor(ServerSettings(model_repo=tmp_path, worker_timeout_s=0.3), count=2)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=time.sleep, args=(60,), daemon=True) for _ in range(2)]
    try:
        for index, process in enumerate(processes):
            process.start()
            supervisor.processes[index] = process
            supervisor.beat_seen_at[index] = time.monotonic()
        workers = [identity.model_copy(update={"index": i}) for i in range(2)]
        publish_ready(workers[1], True)  # worker 1 ready, worker 0 not (loading): both beat
        deadline = time.monotonic() + 1.0
        beat = 0
        while time.monotonic() < deadline:
            beat += 1
            publish_alive(workers[0], beat)
            publish_alive(workers[1], beat)
            supervisor._kill_hung(identity)
            time.sleep(0.05)
        assert all(p.is_alive() for p in processes)
        # Worker 1 (ready file still there) stops beating; worker 0 goes on.
        deadline = time.monotonic() + 2.0
        while processes[1].is_alive() and time.monotonic() < deadline:
            beat += 1
            publish_alive(workers[0], beat)
            supervisor._kill_hung(identity)
            time.sleep(0.05)
        processes[1].join(5)
        assert processes[1].exitcode == -9 and processes[0].is_alive()
        assert read_alive(identity, 1) is None and not identity.heartbeat(1).exists()  # forgotten
        # Worker 0, not ready, stops beating too: killed all the same.
        deadline = time.monotonic() + 2.0
        while processes[0].is_alive() and time.monotonic() < deadline:
            supervisor._kill_hung(identity)
            time.sleep(0.05)
        processes[0].join(5)
        assert processes[0].exitcode == -9
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
