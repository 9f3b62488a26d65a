"""Build events across the process boundary: one typed JSON line each, anything else ignored."""

from __future__ import annotations

from resserve.build_events import BuildEvent, failed


def test_events_round_trip_as_lines() -> None:
    for event in (BuildEvent(model="m", event="step", message="exporting"), BuildEvent(model="m", event="done"),
                  failed("m", ValueError("bad weights"))):
        line = event.line()
        assert line.endswith("\n") and line.count("\n") == 1
        assert BuildEvent.parse(line) == event
        assert BuildEvent.parse(line.encode()) == event
    assert failed("m", ValueError("bad weights")).reason == "ValueError: bad weights"


def test_what_is_not_an_event_is_none() -> None:
    for line in ("progress 10%", "{}", '{"model": "m"}', '{"model": "m", "event": "exploded"}', "[1, 2]", ""):
        assert BuildEvent.parse(line) is None
    # Fields a newer builder adds are ignored, not fatal.
    assert BuildEvent.parse('{"model": "m", "event": "done", "seconds": 3}') == BuildEvent(model="m", event="done")
