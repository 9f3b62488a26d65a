"""``GET /v2/models/{name}/canary``: how a model's shadow candidate compares with what serves,
and what was decided (``resserve canary status MODEL`` reads it)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from resserve.server.app_state import get_state
from resserve.server.model_operations import canary_status

router = APIRouter()


@router.get("/v2/models/{name}/canary")
async def canary(request: Request, name: str) -> Response:
    """Counts, top-1 agreement with its 95% interval, top-5 overlap, probability distance, p50/p99 of
    both sides, the decision and why."""
    return Response(orjson.dumps(canary_status(get_state(request), name)), media_type="application/json")
