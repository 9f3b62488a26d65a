"""``create_app()``: the FastAPI application with its lifespan (build, load, warm, drain).

Building is passed in (``builder``), never imported: the server package imports no build code
and no torch, so the runtime image needs neither.

Example::

    app = create_app(ServerSettings(model_repo=Path("model_repo")))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from resserve import __version__
from resserve.config import ServerSettings
from resserve.errors import ResserveError
from resserve.metrics import Metrics
from resserve.repository import ModelRepository
from resserve.server import classify, control, health, oip_routes
from resserve.server.auth import ApiKeyMiddleware
from resserve.server.errors import install_error_handlers
from resserve.server.failures import record_load_failure
from resserve.server.middleware import BodyLimitMiddleware, MetricsMiddleware
from resserve.server.pipeline import RequestPipeline
from resserve.server.state import AppState
from resserve.serving.manager import ModelBuilder, ModelManager

log = logging.getLogger(__name__)


async def start_models(state: AppState) -> None:
    """Build what is missing or stale (if allowed and a builder was given), then load and warm
    every configured model."""
    repository, settings, builder = state.repository, state.settings, state.builder
    names = settings.models or repository.names()
    if not names:
        raise ResserveError(f"model repository {repository.root} has no models (no */config.yaml)")
    for name in names:
        try:
            if settings.build_missing and builder is not None and await asyncio.to_thread(builder.is_stale, name):
                await asyncio.to_thread(builder.build, name)
            await state.manager.load(name)
        except Exception as exc:  # not CancelledError or KeyboardInterrupt: those stop the server
            # One broken model (a bad config, a truncated or corrupt artifact, an engine that will
            # not open it) must not keep the others from serving; readiness stays false and says why.
            record_load_failure(state, name, exc)
    state.started = True


def create_app(settings: ServerSettings | None = None, metrics: Metrics | None = None,
               builder: ModelBuilder | None = None) -> FastAPI:
    """The resserve application; tests pass their own settings and a fresh metrics registry.

    ``builder`` builds missing or stale models at start when ``settings.build_missing`` is on
    (``resserve serve`` passes :class:`resserve.build.pipeline.BuildPipeline`); without one,
    only built versions load.
    """
    settings = settings or ServerSettings()
    metrics = metrics or Metrics()
    repository = ModelRepository(settings.model_repo)
    manager = ModelManager(repository, settings, metrics)
    state = AppState(
        settings=settings,
        metrics=metrics,
        repository=repository,
        manager=manager,
        pipeline=RequestPipeline(settings, metrics, manager),
        builder=builder,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await start_models(state)
        # What exists now (modules, engines, labels) lives as long as the process: frozen, the
        # cyclic collector stops rescanning it on every full collection of request garbage.
        gc.freeze()
        log.info("resserve %s ready: %s", __version__, ", ".join(m.name for m in state.manager.loaded()) or "no models")
        try:
            yield
        finally:
            state.draining = True
            await state.manager.close()
            state.pipeline.close()

    app = FastAPI(title="resserve", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.resserve = state
    install_error_handlers(app)
    for module in (health, classify, oip_routes, control):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s,
                       max_header_bytes=settings.max_header_bytes)
    if settings.api_keys:  # inside the metrics middleware: 401s are counted too
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys, auth_health=settings.auth_health,
                           auth_metrics=settings.auth_metrics, control_has_token=settings.control_token is not None)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
