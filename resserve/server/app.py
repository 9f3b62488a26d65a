"""``create_app()``: the FastAPI application with its lifespan (start models behind the open
port, drain).

Building is passed in (``builds``), never imported: the server package imports no build code
and no torch, so the runtime image needs neither.

Example::

    app = create_app(ServerSettings(model_repo=Path("model_repo")))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.trace import TracerProvider
from starlette.types import ASGIApp

from resserve import __version__
from resserve.config import ServerSettings
from resserve.errors import ResserveError
from resserve.metrics import Metrics
from resserve.remote_repository import RemoteRepository
from resserve.repository import ModelRepository
from resserve.server.oip import http_routes as oip_routes
from resserve.server.routes import canary, classify, control, health, statistics_route
from resserve.server.access_policy import AccessPolicy
from resserve.server.body_budget import BodyBudget
from resserve.server.direct_routes import DirectRoutes
from resserve.server.middleware.access import AccessMiddleware
from resserve.server.error_responses import install_error_handlers
from resserve.server.middleware.body_limits import BodyLimitMiddleware, HeaderLimitMiddleware
from resserve.server.middleware.request_metrics import MetricsMiddleware
from resserve.server.request_pipeline import RequestPipeline
from resserve.server.middleware.request_id import RequestIdMiddleware
from resserve.server.startup import BuildSource, start_models, startup_order
from resserve.server.app_state import AppState
from resserve.server.middleware.request_spans import TracingMiddleware
from resserve.server.repository_poller import RepositoryPoller
from resserve.server.workers import HEARTBEAT_S, WorkerIdentity, publish_alive, publish_ready
from resserve.serving.manager import ModelManager
from resserve.tracing import Tracing, tracer_provider_from_env

log = logging.getLogger(__name__)


async def _heartbeat(state: AppState) -> None:
    """This worker's own readiness, for its peers' probes, and its liveness, for the supervisor,
    every ``HEARTBEAT_S`` while the event loop runs (through loading and draining too)."""
    assert state.worker is not None
    for beat in itertools.count():
        publish_ready(state.worker, state.serving_everything)
        publish_alive(state.worker, beat)
        await asyncio.sleep(HEARTBEAT_S)


class ResserveApp(FastAPI):
    """FastAPI whose added middleware wraps FastAPI's own layers (its error, telemetry and body-size
    middleware, exception handlers, router) instead of sitting inside them. resserve's middleware
    answers its own refusals, and the innermost, :class:`DirectRoutes`, handles classify and infer
    with their errors, so those requests never pass FastAPI's layers; a 500 from FastAPI's error
    middleware now passes resserve's and carries a request id and a metric."""

    def build_middleware_stack(self) -> ASGIApp:
        edge, self.user_middleware = self.user_middleware, []
        try:
            app = super().build_middleware_stack()
        finally:
            self.user_middleware = edge
        for cls, args, kwargs in reversed(edge):
            app = cls(app, *args, **kwargs)
        return app


def create_app(settings: ServerSettings | None = None, metrics: Metrics | None = None,
               builds: BuildSource | None = None,
               tracer_provider: TracerProvider | None = None, worker: WorkerIdentity | None = None) -> FastAPI:
    """The resserve application; tests pass their own settings and a fresh metrics registry.

    ``builds`` builds missing or stale models behind the open port when ``settings.build_missing``
    is on: a :class:`~resserve.server.startup.BuildProcess` (what ``resserve serve`` passes), or
    :class:`~resserve.server.startup.InProcessBuilds` around a builder such as
    :class:`resserve.builder.build_pipeline.BuildPipeline`; without one, only built versions load.

    ``tracer_provider``: traces go there (tests pass one with an in-memory exporter); without one,
    tracing is on only where ``OTEL_TRACES_EXPORTER`` asks for it (:mod:`resserve.tracing`).

    ``worker``: this process is one of ``resserve serve --workers N`` (:mod:`resserve.server.workers`).
    """
    settings = settings or ServerSettings()
    metrics = metrics or Metrics()
    remote = None
    if settings.model_repo_url is not None:  # mirrored into settings.model_repo, which this creates
        remote = RemoteRepository(settings.model_repo_url, settings.model_repo, settings.model_repo_options)
    repository = ModelRepository(settings.model_repo)
    owned_provider = None if tracer_provider is not None else tracer_provider_from_env()
    tracing = Tracing(tracer_provider or owned_provider)
    manager = ModelManager(repository, settings, metrics, tracing)
    state = AppState(
        settings=settings,
        metrics=metrics,
        repository=repository,
        manager=manager,
        pipeline=RequestPipeline(settings, metrics, manager, tracing),
        access=AccessPolicy.from_settings(settings),
        body_budget=BodyBudget(settings.max_body_memory_bytes),
        worker=worker,
        remote=remote,
    )
    if not settings.build_missing:
        builds = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # A worker beats from its first moment: a slow remote sync is no hung worker.
        heartbeat = asyncio.create_task(_heartbeat(state), name="worker-heartbeat") if worker else None
        if remote is not None:  # the configs now (small); the versions behind the open port
            await asyncio.to_thread(remote.sync, True)
            repository.refresh()
        names = settings.models or repository.names()
        if not names:
            if heartbeat is not None:
                heartbeat.cancel()
            where = f"{remote.shown} (mirrored in {repository.root})" if remote is not None else str(repository.root)
            raise ResserveError(f"model repository {where} has no models (no */config.yaml)")
        order = startup_order(repository, names, settings.first_models)
        manager.lifecycle.expect(order)
        # The port opens now; models build and load behind it, each served once ready.
        starting = asyncio.create_task(start_models(state, order, builds), name="start-models")
        log.info("resserve %s listening; starting %s", __version__, ", ".join(order))
        grpc_server = metrics_listener = None
        poller = RepositoryPoller(state, settings.models) if settings.repository_poll_s is not None else None
        polling = (asyncio.create_task(poller.run(settings.repository_poll_s), name="repository-poll")
                   if poller is not None and settings.repository_poll_s is not None else None)
        try:  # a port that cannot be bound still releases what started above
            if settings.metrics_port is not None:
                from resserve.server.metrics_listener import MetricsListener

                metrics_listener = MetricsListener(state, reuse_port=worker is not None and worker.count > 1)
                await metrics_listener.start()
            if settings.grpc_port is not None:
                from resserve.server.oip.grpc_server import GrpcServer  # grpcio only where gRPC is on

                grpc_server = GrpcServer(state)
                await grpc_server.start()
            yield
        finally:
            state.draining = True
            if remote is not None:  # a download in progress stops between chunks
                remote.stop()
            if poller is not None and polling is not None:  # a load or drain in progress ends first
                poller.stop()
                await asyncio.wait({polling}, timeout=settings.graceful_shutdown_s)
                polling.cancel()
            if worker is not None:  # out of every probe now; the beat goes on while the drain runs
                publish_ready(worker, False)
            if grpc_server is not None:  # its calls in flight finish before the queues drain
                await grpc_server.stop(settings.graceful_shutdown_s)
            if metrics_listener is not None:  # probes and scrapes end with the server
                await metrics_listener.stop()
            if builds is not None:
                builds.stop()
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            state.pipeline.shadow.cancel()  # shadows give way: the drain's time is for clients
            await state.manager.close()
            state.pipeline.close()
            if owned_provider is not None:  # flush the spans still in the batch processor
                owned_provider.shutdown()
            if heartbeat is not None:
                heartbeat.cancel()

    app = ResserveApp(title="resserve", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.resserve = state
    install_error_handlers(app)
    # statistics first: /v2/models/stats would otherwise be model "stats"'s metadata.
    for module in (health, classify, statistics_route, canary, oip_routes, control):
        app.include_router(module.router)
    app.include_router(control.index_router)
    if settings.metrics_port is None:
        app.include_router(health.metrics_router)
    # Innermost: classify and infer reach their handlers without FastAPI's router (same handlers).
    app.add_middleware(DirectRoutes, routes=[*classify.router.routes, *oip_routes.router.routes])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s,
                       budget=state.body_budget)
    if tracing.enabled:  # off: not installed, no cost per request
        # Inside the access check: an unauthenticated request neither joins the trace its
        # traceparent names nor forces one to be exported.
        app.add_middleware(TracingMiddleware, tracing=tracing)
    app.add_middleware(AccessMiddleware, policy=state.access)  # inside the metrics middleware: 401s are counted too
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware, access_log=settings.access_log)  # every answer past the header check has an id
    app.add_middleware(HeaderLimitMiddleware, max_header_bytes=settings.max_header_bytes)  # outermost: before any header is read
    return app
