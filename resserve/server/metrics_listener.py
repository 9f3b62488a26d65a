"""The metrics port (Triton's 8002): ``/metrics`` and the health probes on a listener of their own.

With ``metrics_port`` set, Prometheus and the kubelet talk to this port and the inference port no
longer serves ``/metrics`` (which names models, versions and error types): the inference port can
face clients while this one stays inside the cluster. A flood of the inference port cannot reach
the probes here either: this listener has its own connections and limit, on the same event loop
(so a probe still fails when the server itself is stuck). The access policy is the same one.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from uvicorn.server import ServerState

from resserve.server.access_policy import AccessPolicy
from resserve.server.app_state import AppState
from resserve.server.connection_guard import GuardedConfig
from resserve.server.middleware.access import AccessMiddleware
from resserve.server.routes import health

log = logging.getLogger(__name__)

CONNECTIONS = 64  # scrapes and probes: a handful at a time


def metrics_app(state: AppState, policy: AccessPolicy) -> FastAPI:
    """Live, ready and metrics, behind the access policy; nothing else."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.resserve = state
    app.include_router(health.router)
    app.include_router(health.metrics_router)
    app.add_middleware(AccessMiddleware, policy=policy)
    return app


class MetricsListener:
    """``settings.host``:``settings.metrics_port`` under the guarded HTTP protocol."""

    def __init__(self, state: AppState, reuse_port: bool = False) -> None:
        settings = state.settings
        assert settings.metrics_port is not None
        self.host, self.port = settings.host, settings.metrics_port
        self.reuse_port = reuse_port
        self.config = GuardedConfig(
            metrics_app(state, state.access), header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes, http=settings.http_parser, lifespan="off",
            limit_concurrency=CONNECTIONS, timeout_keep_alive=settings.keep_alive_timeout_s,
            access_log=False, log_config=None)
        self.config.load()
        self.server_state = ServerState()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        def protocol() -> asyncio.Protocol:
            return self.config.http_protocol_class(  # type: ignore[call-arg]
                config=self.config, server_state=self.server_state, app_state={})

        self.server = await asyncio.get_running_loop().create_server(
            protocol, host=self.host, port=self.port, reuse_port=self.reuse_port or None)
        log.info("metrics and health probes on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await self.server.wait_closed()
