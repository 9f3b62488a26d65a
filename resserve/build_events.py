"""What a build reports while it runs, typed: one JSON line per event across a process boundary.

``resserve build --events`` writes them on stdout, the server's start-up reads them (directly,
from the build child, or, in the other workers, from worker 0's shared log), and an in-process
build yields the same objects. A leaf: pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError


class BuildEvent(BaseModel):
    """``step`` (with the build's ``message``), ``done``, or ``failed`` (with its ``reason``:
    ``Type: message``, paths as the builder wrote them; the server shortens and redacts it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str
    event: Literal["step", "done", "failed"]
    message: str = ""
    reason: str = ""

    def line(self) -> str:
        return self.model_dump_json() + "\n"

    @classmethod
    def parse(cls, line: bytes | str) -> BuildEvent | None:
        """The event on ``line``, or None for anything else (a library printing to stdout)."""
        try:
            return cls.model_validate_json(line)
        except ValidationError:
            return None


def failed(model: str, exc: BaseException) -> BuildEvent:
    return BuildEvent(model=model, event="failed", reason=f"{type(exc).__name__}: {exc}")
