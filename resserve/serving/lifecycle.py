"""Every model's lifecycle, in one place: a :class:`ModelRecord` per (name, version).

A record goes PENDING -> BUILDING (with the build's step) -> LOADING -> READY -> UNLOADING, or
to FAILED with a path-free reason, and says since when and which :class:`ServedModel` it serves.
The model manager owns the records (:class:`Lifecycle`); readiness, the repository index,
metadata, gRPC and the ``resserve_model_ready`` gauge all read them, and nothing else keeps
lifecycle state. A version that is not known yet (a model waiting for its build) is recorded
under version "". Several versions of one name may have records at once: the one serving and
one loading (a reload), or a failed newer one beside the one still serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from resserve.errors import ModelNotFoundError, ModelNotReadyError
from resserve.metrics import Metrics

if TYPE_CHECKING:
    from resserve.serving.manager import ServedModel

log = logging.getLogger(__name__)

Phase = Literal["PENDING", "BUILDING", "LOADING", "READY", "UNLOADING", "FAILED"]
# The repository index speaks Triton's states: a phase, or UNAVAILABLE for a model the repository
# has that nothing serves (never loaded, unloaded) or whose engine does not answer (watchdog).
IndexState = Literal["PENDING", "BUILDING", "LOADING", "READY", "UNLOADING", "FAILED", "UNAVAILABLE"]
# How long a client should wait before asking again about a model that is not serving yet.
RETRY_AFTER_S: dict[str, float] = {"PENDING": 10.0, "BUILDING": 10.0, "LOADING": 2.0, "UNLOADING": 2.0,
                                   "FAILED": 30.0}
UNKNOWN_VERSION = ""


@dataclass
class ModelRecord:
    """One (name, version): its phase, the build's step or the failure's reason, since when, and
    the model it serves once READY (``reload_failure``: why a later load of it failed, while this
    one goes on serving)."""

    name: str
    version: str = UNKNOWN_VERSION
    phase: Phase = "PENDING"
    step: str = ""
    reason: str = ""
    reload_failure: str = ""
    since: float = field(default_factory=time.monotonic)
    served: ServedModel | None = None

    @property
    def serving(self) -> bool:
        """READY and its engine answers (the watchdog has not found every instance stuck)."""
        return self.phase == "READY" and self.served is not None and self.served.engine_healthy

    def describe(self) -> str:
        """One line for a 503 or the readiness answer."""
        waited = f"{time.monotonic() - self.since:.0f} s"
        if self.phase == "BUILDING":
            return f"building ({self.step or 'starting'}; {waited} so far)"
        if self.phase == "LOADING":
            return f"loading ({waited} so far)"
        if self.phase == "UNLOADING":
            return "unloading"
        if self.phase == "FAILED":
            return f"failed: {self.reason}"
        if self.phase == "PENDING":
            return "waiting for its turn to build or load"
        return "ready" if self.serving else "not answering (watchdog)"

    def index_entry(self) -> dict[str, str]:
        """The repository index's entry (Triton's model repository extension)."""
        entry = {"name": self.name, "version": self.version, "state": self.phase}
        if self.phase == "READY" and not self.serving:
            entry = unavailable_entry(self.name, self.version, "the engine is not answering (watchdog)")
        elif self.phase == "BUILDING" and self.step:
            entry["step"] = self.step
        elif self.phase == "FAILED":
            entry["reason"] = self.reason
        if self.reload_failure:
            entry["reason"] = f"loading the newest version failed: {self.reload_failure}"
        return entry


class Lifecycle:
    """The records of every model, and the ``resserve_model_ready`` gauge that mirrors them."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._records: dict[str, dict[str, ModelRecord]] = {}

    # --- reading -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [name for name, versions in self._records.items() if versions]

    def records(self, name: str) -> list[ModelRecord]:
        """Every record of ``name``, oldest first (created first: dicts keep insertion order, so the
        per-request lookup sorts nothing)."""
        return list(self._records.get(name, {}).values())

    def __iter__(self) -> Iterator[ModelRecord]:
        for name in list(self._records):
            yield from self.records(name)

    def current(self, name: str) -> ModelRecord | None:
        """What ``name`` is: the record that serves, else the newest one."""
        records = self.records(name)
        serving = [r for r in records if r.phase == "READY"]
        return serving[-1] if serving else (records[-1] if records else None)

    def served(self, name: str, version: str | None = None) -> ServedModel:
        """The model serving ``name`` (at ``version``), or the error a request gets: 404 for an
        unknown version, 503 with Retry-After and what the model is doing while it is not serving."""
        current = self.current(name)
        if current is None:
            raise ModelNotFoundError(f"Request for unknown model: '{name}' is not found")
        # Pending, building, or failed before a version was known: whichever version is asked
        # for, the model is not ready yet (503 with Retry-After), not unknown (404).
        if version is not None and version != current.version and current.version != UNKNOWN_VERSION:
            record = self._records.get(name, {}).get(version)
            if record is None or record.phase not in ("LOADING", "READY"):
                serving = f" (serving {current.version})" if current.phase == "READY" else ""
                raise ModelNotFoundError(f"Request for unknown model: '{name}' version {version} is not found"
                                         f"{serving}")
            current = record
        if current.phase != "READY" or current.served is None:
            which = "has no available versions" if current.version == UNKNOWN_VERSION \
                else f"version {current.version} is not at ready state"
            raise ModelNotReadyError(f"Request for unknown model: '{name}' {which}: it is {current.describe()}",
                                     retry_after_s=RETRY_AFTER_S.get(current.phase, 5.0))
        if not current.served.engine_healthy:
            raise current.served.watchdog.not_answering()
        return current.served

    def serving_models(self) -> list[ServedModel]:
        """Every model a READY record serves (watchdog-stuck ones included)."""
        return [r.served for r in self if r.phase == "READY" and r.served is not None]

    def pending(self) -> list[ModelRecord]:
        """Records on their way to READY: pending, building or loading."""
        return [r for r in self if r.phase in ("PENDING", "BUILDING", "LOADING")]

    def unserved_failures(self) -> dict[str, str]:
        """Models whose newest load failed and that serve no version, with the reason. A failed
        reload, which leaves the previous version serving, is not one (the index shows it)."""
        return {name: current.reason for name in self.names()
                if (current := self.current(name)) is not None and current.phase == "FAILED"}

    def all_serving(self) -> bool:
        """At least one model, and every recorded model serves; a model being unloaded on purpose
        (all its records UNLOADING) is not waited for, so unloading one does not take the pod out."""
        names = [n for n in self.names() if any(r.phase != "UNLOADING" for r in self.records(n))]
        return bool(names) and all((c := self.current(n)) is not None and c.serving for n in names)

    def not_answering(self) -> list[str]:
        """Why READY models do not serve (for the readiness answer)."""
        return [f"model {r.name}: the engine is not answering (watchdog)" for r in self
                if r.phase == "READY" and not r.serving]

    # --- transitions ---------------------------------------------------------------------------

    def expect(self, names: list[str]) -> None:
        """Models about to start, in order: PENDING until their build or load begins."""
        for name in names:
            if not self._records.get(name):
                self._set(ModelRecord(name))

    def building(self, name: str, step: str) -> ModelRecord:
        record = self._records.get(name, {}).get(UNKNOWN_VERSION) or ModelRecord(name)
        return self._move(record, "BUILDING", step=step)

    def loading(self, name: str, version: str) -> ModelRecord:
        """A load of ``version`` begins. A reload of the version that serves keeps that record
        READY, serving the old instance until the new one replaces it."""
        self._records.get(name, {}).pop(UNKNOWN_VERSION, None)
        existing = self._records.get(name, {}).get(version)
        if existing is not None and existing.phase == "READY":
            return existing
        return self._set(ModelRecord(name, version, "LOADING"))

    def ready(self, record: ModelRecord, served: ServedModel) -> ModelRecord:
        """``served`` answers for ``record`` from now on; earlier failures of the name are settled."""
        record.served, record.reload_failure, record.reason = served, "", ""
        for other in list(self._records.get(record.name, {}).values()):
            if other is not record and other.phase == "FAILED":
                del self._records[record.name][other.version]
        return self._move(record, "READY")

    def fail(self, name: str, reason: str, version: str = UNKNOWN_VERSION) -> ModelRecord:
        """A build or load of ``name`` failed. Where a version of it serves, that one goes on
        (a READY record of the same version keeps serving and carries the reason)."""
        versions = self._records.setdefault(name, {})
        if version != UNKNOWN_VERSION:
            versions.pop(UNKNOWN_VERSION, None)
        existing = versions.get(version)
        if existing is not None and existing.phase == "READY":
            existing.reload_failure = reason
            return existing
        serving = [r for r in versions.values() if r.phase == "READY"]
        record = self._move(existing or self._set(ModelRecord(name, version)), "FAILED", reason=reason)
        for other in serving:
            other.reload_failure = reason
        return record

    def unloading(self, record: ModelRecord) -> ModelRecord:
        return self._move(record, "UNLOADING")

    def forget(self, record: ModelRecord) -> None:
        """A record whose model is released (unloaded, or replaced by another version)."""
        versions = self._records.get(record.name, {})
        if versions.get(record.version) is record:
            del versions[record.version]

    def forget_failures(self, name: str) -> None:
        """Drop ``name``'s failed records (it was unloaded: nothing of it is wanted any more)."""
        for version, record in list(self._records.get(name, {}).items()):
            if record.phase == "FAILED":
                del self._records[name][version]
            else:
                record.reload_failure = ""

    def health_changed(self, record: ModelRecord) -> None:
        """The watchdog's verdict on a READY record's engine changed: the gauge follows."""
        self._publish(record)

    def _set(self, record: ModelRecord) -> ModelRecord:
        self._records.setdefault(record.name, {})[record.version] = record
        return record

    def _move(self, record: ModelRecord, phase: Phase, *, step: str = "", reason: str = "") -> ModelRecord:
        if phase != record.phase:
            record.since = time.monotonic()
        record.phase, record.step = phase, step
        if reason:
            record.reason = reason
        self._set(record)
        self._publish(record)
        return record

    def _publish(self, record: ModelRecord) -> None:
        if self.metrics is None or record.version == UNKNOWN_VERSION:
            return
        self.metrics.model_ready.labels(record.name, record.version).set(1 if record.serving else 0)


def unavailable_entry(name: str, version: str, reason: str) -> dict[str, str]:
    """The index entry of a model that is known but does not serve."""
    state: IndexState = "UNAVAILABLE"
    return {"name": name, "version": version, "state": state, "reason": reason}
