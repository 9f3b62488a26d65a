"""Triton's statistics extension: ``GET /v2/models[/{name}[/versions/{version}]]/stats``, and the
same document for gRPC's ``ModelStatistics``. What each figure measures in resserve is in
:mod:`resserve.serving.statistics`; only loaded versions have statistics, as in Triton."""

from __future__ import annotations


import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from resserve.server.app_state import get_state
from resserve.server.model_operations import model_statistics

router = APIRouter()


@router.get("/v2/models/stats")
@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
async def stats(request: Request, name: str | None = None, version: str | None = None) -> Response:
    """Triton's statistics extension, for tritonclient's ``get_inference_statistics()``."""
    body = model_statistics(get_state(request), name, version)
    return Response(orjson.dumps(body), media_type="application/json")
