"""Repository control (Triton's model repository extension): index, load, unload.

Off unless a bearer token is configured (``RESSERVE_CONTROL_TOKEN``) or control is explicitly
allowed without one: the access policy (:mod:`resserve.server.access`) decides, for HTTP in its
middleware and for gRPC in the servicer, before these run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from resserve.errors import ConflictError, EngineError, ModelNotFoundError, ResserveError
from resserve.redact import failure_reason
from resserve.server.state import AppState, get_state

router = APIRouter()


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


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post("/v2/repository/index")
async def index(request: Request) -> Response:
    """Every model in the repository with its state."""
    return _json(await repository_index(get_state(request)))


async def repository_index(state: AppState) -> list[dict[str, str]]:
    """Every model of the repository: name, version, state and, where not ready, the reason."""
    lifecycle = state.manager.lifecycle
    entries = []
    for name in state.repository.names():
        record = lifecycle.current(name)
        if record is not None and record.version:
            entries.append(record.index_entry())
            continue
        versions = await asyncio.to_thread(state.repository.versions, name)
        if record is not None:  # still building, or failed before a version was known
            entries.append({**record.index_entry(), "version": versions[-1] if versions else ""})
            continue
        entries.append({"name": name, "version": versions[-1] if versions else "", "state": "UNAVAILABLE",
                        "reason": "not loaded" if versions else "not built"})
    return entries


@router.post("/v2/repository/models/{name}/load")
async def load(request: Request, name: str) -> Response:
    """Load or reload a model (its newest built version); in-flight requests are not lost."""
    await load_model(get_state(request), name)
    return _json({})


async def load_model(state: AppState, name: str) -> None:
    """Load or reload ``name``; a failure is recorded and raised as its own kind of error."""
    refuse_with_workers(state)
    if name not in state.repository.names():
        raise ModelNotFoundError(f"no model {name!r} in the repository")
    try:
        await state.manager.load(name)
    except Exception as exc:  # the previous version, if any, keeps serving; the manager recorded why
        reason = failure_reason(exc, state.repository.root)
        raise _load_error(exc, f"model {name} failed to load: {reason}") from exc


@router.post("/v2/repository/models/{name}/unload")
async def unload(request: Request, name: str) -> Response:
    """Stop serving a model after its queued requests finish."""
    await unload_model(get_state(request), name)
    return _json({})


async def unload_model(state: AppState, name: str) -> None:
    refuse_with_workers(state)
    await state.manager.unload(name)
