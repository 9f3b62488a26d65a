"""The access policy at the HTTP door: a pure ASGI middleware, so a refused request costs a header
scan and a hash, before any route runs and before a byte of the body is read.

Which kind of endpoint a path is decides what it needs (:mod:`resserve.server.access_policy`): the
health probes, ``/metrics``, repository control under ``/v2/repository/`` (load and unload; the
read-only index is inference), and inference (every other path, so a route added later is covered
without anyone remembering to).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from resserve.errors import ForbiddenError, UnauthorizedError
from resserve.server.access_policy import AccessPolicy, Endpoint
from resserve.server.error_responses import response_for

HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"
CONTROL_PREFIX = "/v2/repository/"
# The index only reads: it needs what inference needs (a key where keys are set), not control.
INDEX_PATH = "/v2/repository/index"


def route_path(scope: Scope) -> str:
    """The path the router matches: ``scope["path"]`` without the ``root_path`` a proxy prefix or a
    ``Mount`` put in front (Starlette routes on this; classifying the raw path would let
    ``/prefix/v2/repository/...`` pass as inference and still reach the control routes)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def endpoint_of(path: str) -> Endpoint:
    if path in HEALTH_PATHS:
        return "health"
    if path == METRICS_PATH:
        return "metrics"
    if path.startswith(CONTROL_PREFIX) and path != INDEX_PATH:
        return "control"
    return "inference"


class AccessMiddleware:
    """Answer 401 (``WWW-Authenticate: Bearer``) or 403, JSON ``{"error": ...}``, unless the policy admits."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            self.policy.check(endpoint_of(route_path(scope)), scope["headers"])
        except (UnauthorizedError, ForbiddenError) as refused:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
                return
            await response_for(refused)(scope, receive, send)
            return
        await self.app(scope, receive, send)
