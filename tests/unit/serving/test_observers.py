"""Observers: every sink hears each event once; one that raises disturbs neither the others nor the request."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from resserve.serving.batching import BatchQueue
from resserve.serving.observers import BatchRun, Observer, Observers


class Recording(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def queue_depth(self, rows: int) -> None:
        self.events.append(("depth", rows))

    def batch_done(self, batch: BatchRun) -> None:
        self.events.append(("done", batch.rows))


class Broken(Observer):
    def queue_depth(self, rows: int) -> None:
        raise RuntimeError("sink down")

    def batch_done(self, batch: BatchRun) -> None:
        raise RuntimeError("sink down")


def test_a_failing_sink_is_logged_at_powers_of_ten_and_the_next_sink_still_hears(
        caplog: pytest.LogCaptureFixture) -> None:
    recording = Recording()
    observers = Observers([Broken(), recording])
    with caplog.at_level(logging.ERROR, logger="resserve.serving.observers"):
        for rows in range(12):
            observers.queue_depth(rows)
    assert [rows for _, rows in recording.events] == list(range(12))
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "1 times" in logged[0] and "10 times" in logged[1]
    assert all("Broken failed in queue_depth" in m for m in logged)


async def test_the_queue_answers_although_a_sink_raises_on_every_event() -> None:
    recording = Recording()
    queue = BatchQueue([lambda batch: batch * 2], max_batch_size=4, max_queue_delay_ms=0, max_queue_size=16,
                       observer=Observers([Broken(), recording]))
    await queue.start()
    out = await queue.submit(np.ones((2, 1), np.float32), time.monotonic() + 5)
    await queue.close()
    assert out.tolist() == [[2.0], [2.0]]
    assert ("done", (2,)) in recording.events and ("depth", 2) in recording.events
