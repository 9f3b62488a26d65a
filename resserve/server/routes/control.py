"""Triton's model repository extension: the index, and control (load, unload).

The index only reads, so it needs what inference needs (an API key where keys are set) and is
always on, as Triton serves it whatever its model control mode. Load and unload are off unless a
bearer token is configured (``RESSERVE_CONTROL_TOKEN``) or control is explicitly allowed without
one: the access policy (:mod:`resserve.server.access_policy`) decides, for HTTP in its middleware
and for gRPC in an interceptor, before these run.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from resserve.server.app_state import get_state
from resserve.server.model_operations import load_model, repository_index, unload_model



def require_control(request: Request) -> None:
    """The access policy again, inside the routes: control must never be open because a path
    reached them in a way the middleware classified otherwise."""
    get_state(request).access.check("control", request.headers.raw)


router = APIRouter(dependencies=[Depends(require_control)])
index_router = APIRouter()


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@index_router.post("/v2/repository/index")
async def index(request: Request) -> Response:
    """Every model in the repository with its state."""
    return _json(await repository_index(get_state(request)))


@router.post("/v2/repository/models/{name}/load")
async def load(request: Request, name: str) -> Response:
    """Load or reload a model (its newest built version); in-flight requests are not lost."""
    await load_model(get_state(request), name)
    return _json({})


@router.post("/v2/repository/models/{name}/unload")
async def unload(request: Request, name: str) -> Response:
    """Stop serving a model after its queued requests finish."""
    await unload_model(get_state(request), name)
    return _json({})
