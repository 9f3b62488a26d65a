"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response

from resserve.server.error_responses import error_response
from resserve.server.app_state import get_state

router = APIRouter()
metrics_router = APIRouter()  # on the metrics port alone when ``metrics_port`` is set


@router.get("/v2/health/live")
async def live() -> Response:
    """The process answers: restart it only if this fails."""
    return Response(status_code=200)


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """Every configured model is loaded and the server is not draining. The reason names models
    and errors only to a caller with a valid API key (where keys are set): the probe is open."""
    state = get_state(request)
    if state.ready:
        return Response(status_code=200)
    detailed = state.access.identifies(request.headers.raw)
    return error_response(503, f"server not ready: {state.not_ready_reason(detailed)}")


@metrics_router.get("/metrics")
async def metrics(request: Request) -> Response:
    """This process's metrics; with workers, every worker's, summed (prometheus-client's
    multiprocess files), whichever worker answers the scrape."""
    state = get_state(request)
    registry = state.metrics.registry
    if state.worker is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
