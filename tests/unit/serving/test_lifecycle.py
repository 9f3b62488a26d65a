"""The lifecycle records: transitions, what a request is told, readiness, the index and the gauge."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from resserve.errors import ModelNotFoundError, ModelNotReadyError
from resserve.metrics import Metrics
from resserve.serving.lifecycle import Lifecycle


class FakeServed(SimpleNamespace):
    """What a record needs of a served model: its version, engine health and watchdog."""

    def __init__(self, version: str, healthy: bool = True) -> None:
        super().__init__(version=version, engine_healthy=healthy,
                         watchdog=SimpleNamespace(not_answering=lambda: ModelNotReadyError("stuck", retry_after_s=1)))


def ready_gauge(metrics: Metrics, name: str, version: str) -> float | None:
    return metrics.registry.get_sample_value("resserve_model_ready", {"model": name, "version": version})


def test_startup_phases_are_what_a_request_is_told() -> None:
    lifecycle = Lifecycle()
    lifecycle.expect(["a", "b"])
    with pytest.raises(ModelNotReadyError, match="waiting for its turn") as waiting:
        lifecycle.served("a")
    assert waiting.value.retry_after_s == 10.0
    lifecycle.building("a", "exporting")
    with pytest.raises(ModelNotReadyError, match=r"building \(exporting;"):
        lifecycle.served("a")
    record = lifecycle.loading("a", "1")
    assert [r.version for r in lifecycle.records("a")] == ["1"]  # the version-less record is gone
    with pytest.raises(ModelNotReadyError, match="loading") as loading:
        lifecycle.served("a")
    assert loading.value.retry_after_s == 2.0
    served = FakeServed("1")
    lifecycle.ready(record, served)
    assert lifecycle.served("a") is served and lifecycle.served("a", "1") is served
    with pytest.raises(ModelNotFoundError, match="Request for unknown model: 'a' version 2 is not found \\(serving 1\\)"):
        lifecycle.served("a", "2")
    with pytest.raises(ModelNotFoundError, match="Request for unknown model: 'zzz' is not found"):
        lifecycle.served("zzz")
    assert [r.name for r in lifecycle.pending()] == ["b"] and not lifecycle.all_serving()
    lifecycle.fail("b", "ExportError: no weights")
    assert lifecycle.unserved_failures() == {"b": "ExportError: no weights"}
    assert lifecycle.current("b").index_entry() == {"name": "b", "version": "", "state": "FAILED",
                                                   "reason": "ExportError: no weights"}


def test_a_failed_reload_leaves_the_serving_version_and_says_why() -> None:
    metrics = Metrics()
    lifecycle = Lifecycle(metrics)
    v1 = lifecycle.ready(lifecycle.loading("m", "1"), FakeServed("1"))
    assert ready_gauge(metrics, "m", "1") == 1
    lifecycle.loading("m", "2")
    lifecycle.fail("m", "DecodeError: truncated", "2")
    assert lifecycle.current("m") is v1 and lifecycle.all_serving() and not lifecycle.unserved_failures()
    assert lifecycle.current("m").index_entry() == {
        "name": "m", "version": "1", "state": "READY", "reason": "loading the newest version failed: DecodeError: truncated"}
    assert ready_gauge(metrics, "m", "2") == 0
    # A reload of the same version that fails: the serving record carries the reason.
    lifecycle.loading("m", "1")
    lifecycle.fail("m", "EngineError: boom", "1")
    assert v1.phase == "READY" and v1.reload_failure == "EngineError: boom"
    # A later successful load settles the failures.
    v2 = lifecycle.loading("m", "2")
    lifecycle.ready(v2, FakeServed("2"))
    assert {r.version: r.phase for r in lifecycle.records("m")} == {"1": "READY", "2": "READY"}
    assert v2.reload_failure == "" and lifecycle.current("m") is v2
    lifecycle.unloading(v1)
    lifecycle.forget(v1)
    assert [r.version for r in lifecycle.records("m")] == ["2"] and ready_gauge(metrics, "m", "1") == 0


def test_a_stuck_engine_is_not_serving_and_the_gauge_follows() -> None:
    metrics = Metrics()
    lifecycle = Lifecycle(metrics)
    served = FakeServed("1")
    record = lifecycle.ready(lifecycle.loading("m", "1"), served)
    served.engine_healthy = False
    lifecycle.health_changed(record)
    assert ready_gauge(metrics, "m", "1") == 0 and not lifecycle.all_serving()
    assert lifecycle.not_answering() == ["model m: the engine is not answering (watchdog)"]
    assert record.index_entry()["state"] == "UNAVAILABLE"
    with pytest.raises(ModelNotReadyError, match="stuck"):
        lifecycle.served("m")
    served.engine_healthy = True
    lifecycle.health_changed(record)
    assert ready_gauge(metrics, "m", "1") == 1 and lifecycle.all_serving()


def test_unload_forgets_failures_and_the_name_is_unknown_to_the_lifecycle() -> None:
    lifecycle = Lifecycle()
    record = lifecycle.ready(lifecycle.loading("m", "1"), FakeServed("1"))
    lifecycle.loading("m", "2")
    lifecycle.fail("m", "bad", "2")
    lifecycle.unloading(record)
    with pytest.raises(ModelNotReadyError, match="unloading|failed"):
        lifecycle.served("m")
    lifecycle.forget_failures("m")
    lifecycle.forget(record)
    assert lifecycle.current("m") is None and lifecycle.names() == []


def test_a_version_asked_for_while_the_model_starts_is_not_ready_not_unknown() -> None:
    lifecycle = Lifecycle()
    lifecycle.expect(["m"])
    with pytest.raises(ModelNotReadyError, match="waiting for its turn"):
        lifecycle.served("m", "1")
    lifecycle.fail("m", "ExportError: offline")
    with pytest.raises(ModelNotReadyError, match="failed: ExportError") as failed:
        lifecycle.served("m", "1")
    assert failed.value.retry_after_s == 30.0


def test_unloading_one_model_keeps_the_others_ready() -> None:
    lifecycle = Lifecycle()
    a = lifecycle.ready(lifecycle.loading("a", "1"), FakeServed("1"))
    lifecycle.ready(lifecycle.loading("b", "1"), FakeServed("1"))
    lifecycle.unloading(a)  # draining its queue for up to graceful_shutdown_s
    assert lifecycle.all_serving() and lifecycle.current("a").index_entry()["state"] == "UNLOADING"
    lifecycle.forget(a)
    assert lifecycle.all_serving() and lifecycle.names() == ["b"]
    only = Lifecycle()
    only.unloading(only.ready(only.loading("a", "1"), FakeServed("1")))
    assert not only.all_serving()  # nothing left to serve: not ready
