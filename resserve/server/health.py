"""Liveness, readiness, server metadata and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from resserve.server.errors import error_response
from resserve.server.state import get_state

router = APIRouter()


@router.get("/v2/health/live")
async def live() -> Response:
    """The process answers: restart it only if this fails."""
    return Response(status_code=200)


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """Every configured model is loaded and the server is not draining."""
    state = get_state(request)
    if state.ready:
        return Response(status_code=200)
    return error_response(503, f"server not ready: {state.not_ready_reason()}")


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(get_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
