"""Repository control (Triton's model repository extension): index, load, unload.

Off unless a bearer token is configured (``RESSERVE_CONTROL_TOKEN``) or control is explicitly
allowed without one; the token is compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from resserve.errors import ConflictError, EngineError, ForbiddenError, ModelNotFoundError, ResserveError, UnauthorizedError
from resserve.redact import failure_reason
from resserve.server.state import AppState, get_state

router = APIRouter()


def check_control(state: AppState, authorization: str) -> None:
    """Raise unless an ``Authorization`` value (HTTP header or gRPC metadata) may use repository control."""
    token = state.settings.control_token
    if token is None:
        if not state.settings.allow_repository_control:
            raise ForbiddenError("repository control is disabled: set RESSERVE_CONTROL_TOKEN to enable it")
    else:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise UnauthorizedError("repository control needs 'Authorization: Bearer <token>'")


def refuse_with_workers(state: AppState) -> None:
    """Loads and unloads change one process; with workers they would reach only the one that
    answers, so they are refused (after authentication: only a caller allowed to control learns
    how the server runs)."""
    if state.worker is not None and state.worker.count > 1:
        raise ConflictError(f"repository control is not available with {state.worker.count} workers: a load "
                            "or unload would reach only the worker that answers; roll the deployment "
                            "(or run one worker) to change models")


def authorize(request: Request) -> AppState:
    """The app state, if this request may use the control endpoints."""
    state = get_state(request)
    check_control(state, request.headers.get("authorization", ""))
    return state


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
    return _json(await repository_index(authorize(request)))


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
    await load_model(authorize(request), name)
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
    await unload_model(authorize(request), name)
    return _json({})


async def unload_model(state: AppState, name: str) -> None:
    refuse_with_workers(state)
    await state.manager.unload(name)
