"""What each configured model is doing while the server starts: pending, building, loading, ready
or failed, with the build step, so that readiness, the repository index and a 503 can say why.

The server answers from its first second; models build and load behind it (``startup.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["PENDING", "BUILDING", "LOADING", "READY", "FAILED"]

# How long a client should wait before asking again about a model that is not serving yet.
RETRY_AFTER_S: dict[str, float] = {"PENDING": 10.0, "BUILDING": 10.0, "LOADING": 2.0, "FAILED": 30.0}


@dataclass
class ModelState:
    """One model's startup state; ``step`` is the build's latest message, ``reason`` a failure's."""

    phase: Phase = "PENDING"
    step: str = ""
    reason: str = ""
    since: float = field(default_factory=time.monotonic)

    def describe(self) -> str:
        """One line for a 503 or the readiness answer."""
        waited = f"{time.monotonic() - self.since:.0f} s"
        if self.phase == "BUILDING":
            return f"building ({self.step or 'starting'}; {waited} so far)"
        if self.phase == "LOADING":
            return f"loading ({waited} so far)"
        if self.phase == "FAILED":
            return f"failed: {self.reason}"
        if self.phase == "PENDING":
            return "waiting for its turn to build or load"
        return "ready"

    def as_dict(self) -> dict[str, object]:
        entry: dict[str, object] = {"state": self.phase}
        if self.step and self.phase == "BUILDING":
            entry["step"] = self.step
        if self.reason:
            entry["reason"] = self.reason
        return entry


class ModelStates:
    """Every configured model's :class:`ModelState`, by name."""

    def __init__(self, names: list[str]) -> None:
        self._states = {name: ModelState() for name in names}

    def get(self, name: str) -> ModelState | None:
        return self._states.get(name)

    def names(self) -> list[str]:
        return list(self._states)

    def set(self, name: str, phase: Phase, *, step: str = "", reason: str = "") -> ModelState:
        state = self._states.setdefault(name, ModelState())
        if phase != state.phase:
            state.since = time.monotonic()
        state.phase, state.step, state.reason = phase, step, reason
        return state

    def pending(self) -> list[str]:
        """Models not yet serving and not failed."""
        return [n for n, s in self._states.items() if s.phase not in ("READY", "FAILED")]
