"""Triton's statistics extension: ``GET /v2/models[/{name}[/versions/{version}]]/stats``, and the
same document for gRPC's ``ModelStatistics``. What each figure measures in resserve is in
:mod:`resserve.serving.statistics`; only loaded versions have statistics, as in Triton."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from resserve.errors import ModelNotFoundError
from resserve.server.state import AppState, get_state

router = APIRouter()


def model_statistics(state: AppState, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """``{"model_stats": [...]}`` for every loaded model, or for ``name`` (and ``version``)."""
    loaded = sorted(state.manager.loaded(), key=lambda m: m.name)
    if name:
        loaded = [m for m in loaded if m.name == name]
        if not loaded:
            known = name in state.repository.names()
            raise ModelNotFoundError(f"model {name!r} is not loaded" if known else f"unknown model {name!r}")
        if version and loaded[0].version != version:
            raise ModelNotFoundError(f"model {name!r} has no loaded version {version!r} "
                                     f"(serving {loaded[0].version})")
    return {"model_stats": [m.statistics.as_dict() for m in loaded]}


@router.get("/v2/models/stats")
@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
async def stats(request: Request, name: str | None = None, version: str | None = None) -> Response:
    """Triton's statistics extension, for tritonclient's ``get_inference_statistics()``."""
    body = model_statistics(get_state(request), name, version)
    return Response(orjson.dumps(body), media_type="application/json")
