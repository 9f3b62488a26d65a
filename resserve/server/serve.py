"""Run the app under uvicorn with a drain that loses nothing.

On SIGTERM/SIGINT readiness turns false at once; after ``shutdown_delay_s`` (time for a load
balancer to notice) uvicorn stops accepting, finishes every request in flight (bounded by
``graceful_shutdown_s``), then the lifespan drains the batch queues and releases the engines.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType
from typing import Any

import uvicorn

from resserve.config import ServerSettings
from resserve.server.app import create_app
from resserve.server.connection_guard import GuardedConfig
from resserve.server.memory_plan import check, memory_limit, plan, process_rss
from resserve.engines.hardware import available_cores
from resserve.server.startup import BuildSource
from resserve.server.app_state import AppState

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that marks the app draining before it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, state: AppState, shutdown_delay_s: float) -> None:
        super().__init__(config)
        self.app_state = state
        self.shutdown_delay_s = shutdown_delay_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.app_state.draining or self.shutdown_delay_s <= 0:
            self.app_state.draining = True
            self._stop(sig, frame)  # a second signal stops at once
            return
        self.app_state.draining = True
        log.info("signal %d: not ready; stopping in %.1f s", sig, self.shutdown_delay_s)
        timer = threading.Timer(self.shutdown_delay_s, self._stop, args=(sig, frame))
        timer.daemon = True
        timer.start()


    def _stop(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its shutdown, so the process would die by SIGTERM;
        # a drain that lost nothing is a success: exit 0.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def uvicorn_config(app: Any, settings: ServerSettings, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for ``app``. ``graceful_shutdown_s`` bounds the wait for requests in
    flight, and 0 waits for none (never uvicorn's None, which waits for ever). The protocols are
    uvicorn's under :mod:`resserve.server.connection_guard` (head timeout and size, probes exempt
    from the connection limit)."""
    return GuardedConfig(
        app,
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,  # a float: 0.5 s is not rounded to "for ever"
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        http=settings.http_parser,
        access_log=False,  # metrics count requests; a log line per request costs CPU at 300 rps
        log_config=None,  # keep resserve's logging setup
    )


def run_server(settings: ServerSettings, log_level: str = "info", shutdown_delay_s: float = 0.0,
               builds: BuildSource | None = None) -> None:
    """Serve until a signal; returns after a clean drain. ``builds``: see :func:`create_app`."""
    app = create_app(settings, builds=builds)
    DrainingServer(uvicorn_config(app, settings, log_level), app.state.resserve, shutdown_delay_s).run()


def check_memory(settings: ServerSettings, workers: int) -> None:
    """Refuse to start when the request path's worst case is more than the process may use."""
    cores = available_cores()
    per_worker = max(1, cores // workers) if workers > 1 and settings.pin_workers else cores
    limit, source = memory_limit()
    check(plan(settings, workers, settings.preprocess_threads or per_worker, process_rss(), limit, source), settings)


def serve(settings: ServerSettings, log_level: str = "info", shutdown_delay_s: float = 0.0) -> int:
    """``resserve serve``: one process, or ``settings.workers`` processes on one socket (only worker 0
    builds); missing models build in a child process (``resserve build --events``) behind the open
    port, so the server answers at once and imports neither the build code nor torch. The exit code."""
    from resserve.server.startup import BuildProcess
    from resserve.server.supervisor import run_workers, worker_count

    count = worker_count(settings.workers)
    check_memory(settings, count)
    if count > 1:
        return run_workers(settings, count, log_level=log_level, shutdown_delay_s=shutdown_delay_s)
    builds = BuildProcess(settings.model_repo) if settings.build_missing else None
    run_server(settings, log_level=log_level, shutdown_delay_s=shutdown_delay_s, builds=builds)
    return 0
