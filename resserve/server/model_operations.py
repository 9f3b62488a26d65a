"""What a client may ask of the server's models, whatever protocol carried it: the repository
index, load, unload (Triton's model repository extension) and statistics. The HTTP routes
(:mod:`resserve.server.routes`) and the gRPC servicer both call these; who may call them is the
access policy's decision, made before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from resserve.errors import (
    ConflictError,
    EngineError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    ResserveError,
)
from resserve.redact import failure_reason
from resserve.server.app_state import AppState
from resserve.serving.lifecycle import unavailable_entry


def refuse_with_workers(state: AppState) -> None:
    """Loads and unloads change one process; with workers they would reach only the one that
    answers, so they are refused (after authentication: only a caller allowed to control learns
    how the server runs)."""
    if state.worker is not None and state.worker.count > 1:
        raise ConflictError(f"repository control is not available with {state.worker.count} workers: a load "
                            "or unload would reach only the worker that answers; roll the deployment "
                            "(or run one worker) to change models")


def _load_error(exc: Exception, message: str) -> ResserveError:
    """What a failed load answers: the error's own kind (404, 422, 503, ...), else an engine error
    (500), with a message that shows no server paths."""
    if isinstance(exc, ResserveError):
        try:
            return type(exc)(message)
        except TypeError:  # a subclass that wants more than a message
            pass
    return EngineError(message)


async def repository_index(state: AppState) -> list[dict[str, str]]:
    """Every model of the repository: name, version, state and, where not ready, the reason."""
    lifecycle = state.manager.lifecycle
    entries = []
    # The names as last read (at start and by load/unload): the index is open to any caller
    # inference admits, so it must not make each of them glob the repository folder.
    for name in state.repository.names():
        record = lifecycle.current(name)
        if record is not None and record.version:  # every version it has, as Triton lists them
            versions = sorted((r for r in lifecycle.records(name) if r.version), key=lambda r: int(r.version))
            roles = state.manager.releases[name].roles() if name in state.manager.releases else {}
            for version_record in versions:
                entry = version_record.index_entry()
                if (role := roles.get(version_record.version)) is not None:
                    entry["release"] = role  # promoted, rejected, candidate, passed or failed
                entries.append(entry)
            continue
        versions = await asyncio.to_thread(state.repository.versions, name)
        if record is not None:  # still building, or failed before a version was known
            entries.append({**record.index_entry(), "version": versions[-1] if versions else ""})
            continue
        entries.append(unavailable_entry(name, versions[-1] if versions else "",
                                         "not loaded" if versions else "not built"))
    return entries


async def load_model(state: AppState, name: str) -> None:
    """Load or reload ``name``; a failure is recorded and raised as its own kind of error."""
    refuse_with_workers(state)
    state.repository.refresh()  # a model added to the folder since start can be loaded
    if not state.repository.has(name):
        raise ModelNotFoundError(f"no model {name!r} in the repository")
    try:
        await state.manager.load(name)
    except Exception as exc:  # the previous version, if any, keeps serving; the manager recorded why
        reason = failure_reason(exc, state.repository.root)
        raise _load_error(exc, f"model {name} failed to load: {reason}") from exc


async def unload_model(state: AppState, name: str) -> None:
    refuse_with_workers(state)
    await state.manager.unload(name)


def model_statistics(state: AppState, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """``{"model_stats": [...]}`` for every loaded model, or for ``name`` (and ``version``)."""
    loaded = sorted(state.manager.loaded(), key=lambda m: m.name)
    if name:
        loaded = [m for m in loaded if m.name == name]
        if not loaded:  # Triton's words; a client's mistake, 400 as Triton answers
            known = state.repository.has(name)
            raise InvalidRequestError(f"requested model '{name}' is not available"
                                      + (" (it is not loaded)" if known else ""))
        if version:
            served = [m.version for m in loaded]
            loaded = [m for m in loaded if m.version == version]
            if not loaded:
                raise InvalidRequestError(f"requested model version is not available for model '{name}' "
                                          f"(version {version} asked, {', '.join(served)} served)")
    return {"model_stats": [m.statistics.as_dict() for m in sorted(loaded, key=lambda m: (m.name, int(m.version)))]}


def canary_status(state: AppState, name: str) -> dict[str, Any]:
    """The model's release: versions serving, traffic, shadow comparisons and decisions."""
    release = state.manager.releases.get(name)
    if release is None:
        if state.repository.has(name):
            raise ModelNotReadyError(f"model {name!r} is not loaded yet: no canary to report", retry_after_s=5.0)
        raise ModelNotFoundError(f"Request for unknown model: '{name}' is not found")
    return release.status(state.manager.serving_versions(name))
