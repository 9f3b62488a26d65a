"""What a worker process knows of its peers: who it is, whether every worker is ready, and the
model builds that only worker 0 runs.

``resserve serve --workers N`` (:mod:`resserve.server.supervisor`) starts N processes on one
listening socket and gives each a :class:`WorkerIdentity` through the environment. They share a
folder and nothing else:

- ``ready/<index>``: a heartbeat each worker rewrites while it serves every model and is not
  draining. A probe that lands on any worker is ready only when every worker's heartbeat is
  fresh, so a worker that is still loading, draining, hung or dead takes the pod out of the
  Service as one process would.
- ``alive/<index>``: a beat each worker rewrites while its event loop runs, ready or not (loading
  and draining included). The supervisor kills a worker whose beat stopped changing; readiness
  alone cannot tell a stuck loop from a worker that is not ready on purpose.
- ``builds.jsonl``: worker 0 builds what is missing (one ``resserve build`` child, never N) and
  appends each build event; the other workers follow the file and load each model once it is
  built (:class:`resserve.server.startup.PeerBuilds`).
- ``metrics/``: prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

ENV_INDEX, ENV_COUNT, ENV_FOLDER = "RESSERVE_WORKER_INDEX", "RESSERVE_WORKER_COUNT", "RESSERVE_WORKER_DIR"
HEARTBEAT_S = 0.5
# A heartbeat older than this is a worker that stopped answering: three missed beats, and more
# than a full event-loop stall of a busy worker on a loaded machine.
STALE_AFTER_S = 5.0


class WorkerIdentity(BaseModel):
    """This process's place among the workers."""

    index: int = Field(ge=0)
    count: int = Field(ge=1)
    folder: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerIdentity | None:
        """The identity the supervisor gave this process, or None outside worker mode."""
        env = os.environ if environ is None else environ
        if ENV_INDEX not in env:
            return None
        return cls(index=int(env[ENV_INDEX]), count=int(env[ENV_COUNT]), folder=Path(env[ENV_FOLDER]))

    def env(self) -> dict[str, str]:
        return {ENV_INDEX: str(self.index), ENV_COUNT: str(self.count), ENV_FOLDER: str(self.folder)}

    @property
    def builds_models(self) -> bool:
        return self.index == 0

    def heartbeat(self, index: int | None = None) -> Path:
        return self.folder / "ready" / str(self.index if index is None else index)

    def alive(self, index: int | None = None) -> Path:
        return self.folder / "alive" / str(self.index if index is None else index)

    @property
    def build_log(self) -> Path:
        return self.folder / "builds.jsonl"


def prepare_folder(folder: Path) -> None:
    """The shared folder's layout, made by the supervisor before any worker starts."""
    for sub in ("ready", "alive", "metrics"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "builds.jsonl").touch()


def publish_ready(identity: WorkerIdentity, ready: bool) -> None:
    """Refresh (ready) or remove (not ready) this worker's heartbeat."""
    beat = identity.heartbeat()
    if ready:
        beat.touch()
    else:
        beat.unlink(missing_ok=True)


def publish_alive(identity: WorkerIdentity, beat: int) -> None:
    """This worker's event loop ran: its beat count, which the supervisor watches change (its own
    clock, so a wall-clock step neither kills a worker nor hides a stuck one)."""
    path = identity.alive()
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(str(beat))
    staged.replace(path)  # never a half-written beat


def read_alive(identity: WorkerIdentity, index: int) -> str | None:
    """A worker's last beat, or None before its first."""
    try:
        return identity.alive(index).read_text()
    except FileNotFoundError:
        return None


def forget(identity: WorkerIdentity, index: int) -> None:
    """A dead worker's heartbeat goes at once, not after it turns stale."""
    identity.heartbeat(index).unlink(missing_ok=True)
    identity.alive(index).unlink(missing_ok=True)


def peers_not_ready(identity: WorkerIdentity, now: float | None = None) -> list[int]:
    """The workers whose heartbeat is missing or stale (this one included)."""
    now = time.time() if now is None else now
    missing = []
    for index in range(identity.count):
        try:
            fresh = now - identity.heartbeat(index).stat().st_mtime <= STALE_AFTER_S
        except FileNotFoundError:
            fresh = False
        if not fresh:
            missing.append(index)
    return missing
