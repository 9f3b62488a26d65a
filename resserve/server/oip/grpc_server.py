"""The gRPC server's life: started by the app's lifespan on the same event loop as HTTP (one batch
queue, one set of models), health kept in step with readiness, stopped with a grace period
before the models are released so calls in flight finish.

``grpc.health.v1.Health`` answers for the whole server ("") and for ``inference.GRPCInferenceService``:
SERVING while the server is ready, NOT_SERVING while it starts or drains (Kubernetes' gRPC probes).
``Check`` reads readiness when asked, so it never lags ServerReady; ``Watch`` streams follow it
within ``HEALTH_POLL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2, service_pb2_grpc

from resserve.server.oip.grpc_access import AccessInterceptor
from resserve.server.oip.grpc_limits import CallLimitInterceptor, server_options
from resserve.server.oip.grpc_servicer import InferenceServicer
from resserve.server.app_state import AppState

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
HEALTH_POLL_S = 0.5


class ReadinessHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health`` in step with the app's readiness."""

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.state = state

    async def follow(self) -> None:
        """Set both services from readiness now (ignored once shutdown has begun)."""
        status = (health_pb2.HealthCheckResponse.SERVING if self.state.ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE):
            await self.set(service, status)

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        await self.follow()
        return await super().Check(request, context)


class GrpcServer:
    """OIP v2 over gRPC on ``settings.grpc_host or host``:``grpc_port``; messages up to ``max_body_bytes``;
    the limits per call and per connection in :mod:`resserve.server.oip.grpc_limits`."""

    def __init__(self, state: AppState) -> None:
        settings = state.settings
        assert settings.grpc_port is not None
        self.state = state
        reuse_port = state.worker is not None and state.worker.count > 1
        self.server = grpc.aio.server(
            options=server_options(settings, reuse_port),
            # Both before a message is read: refusals cost no message; health is never counted.
            interceptors=[AccessInterceptor(state.access, state.metrics),
                          CallLimitInterceptor(settings.max_connections, settings.body_timeout_s, state.metrics,
                                               state.body_budget, settings.max_body_bytes)])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), self.server)
        self.health = ReadinessHealth(state)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # Server reflection: grpcurl and other tools list and describe the services unaided.
        reflection.enable_server_reflection(
            (service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.server)
        self.host = settings.grpc_host or settings.host
        self.port = self.server.add_insecure_port(f"{self.host}:{settings.grpc_port}")
        if self.port == 0:
            raise OSError(f"gRPC: cannot listen on {self.host}:{settings.grpc_port}")
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.health.follow()
        await self.server.start()
        self._watch = asyncio.create_task(self._follow_readiness(), name="grpc-health")
        log.info("gRPC (OIP v2) listening on %s:%d", self.host, self.port)

    async def _follow_readiness(self) -> None:
        while True:
            await self.health.follow()
            await asyncio.sleep(HEALTH_POLL_S)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let those in flight finish for up to ``grace_s``, then cancel the rest."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        log.info("gRPC stopped")
