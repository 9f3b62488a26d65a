"""``resserve serve --workers N``: N server processes on one port.

One Python process is one event loop and one GIL for HTTP parsing, preprocessing hand-offs and
the batcher; workers multiply all three. The supervisor reserves the HTTP port and starts N
spawned workers; each runs the whole app (its own engines, batcher, preprocessing pool and gRPC
server) on its own listening socket bound to that port with ``SO_REUSEPORT``, so the kernel
spreads new connections evenly over the workers. (One socket shared by all was measured to hand
most keep-alive connections to whichever worker woke first: a load test's 16 connections often
all landed on one worker, leaving the other idle.) It answers no request itself:

- **cores**: with ``pin_workers`` each worker may run only on its share of the cores, so engine
  and preprocessing threads, which default to the cores a process may use, never add up to more
  than the machine has;
- **a worker that dies** is restarted (its requests in flight fail: their connections close, none
  hangs); its live gauges are dropped from ``/metrics``; five deaths in a row, each within
  ``CRASH_WINDOW_S`` of its start, stop the server (exit 1) rather than loop for ever;
- **SIGTERM / SIGINT** is passed to every worker, each drains as the single process does
  (readiness off, ``shutdown_delay_s``, requests in flight finished, queues drained), and the
  supervisor exits 0 once all have exited 0. A second signal is passed on too (stop at once).
  Each worker closes its socket as it stops accepting; once all have, new connections are refused.

Worker mode and its shared folder: :mod:`resserve.server.workers`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from resserve.config import ServerSettings
from resserve.engines.hardware import available_cores
from resserve.errors import ConfigError, ResserveError
from resserve.server.workers import WorkerIdentity, forget, prepare_folder, read_alive

log = logging.getLogger(__name__)

CRASH_WINDOW_S = 10.0
MAX_QUICK_DEATHS = 5
POLL_S = 0.2
# A worker's first beat may come this much later than worker_timeout_s: spawn and imports.
FIRST_BEAT_GRACE_S = 60.0


def worker_count(setting: int | str, cores: int | None = None) -> int:
    """``auto``: one worker per core the server may use."""
    if setting == "auto":
        return max(1, cores if cores is not None else available_cores())
    return int(setting)


def core_shares(cores: list[int], count: int) -> list[set[int]]:
    """Each worker's cores: the cores dealt round-robin, or one core each (shared) when there are
    more workers than cores."""
    if count <= len(cores):
        return [{c for j, c in enumerate(cores) if j % count == i} for i in range(count)]
    return [{cores[i % len(cores)]} for i in range(count)]


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker if the supervisor dies (SIGKILL, OOM), so no worker outlives it
    holding the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def port_is_free(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) when anything holds ``host:port``, another resserve's workers
    included: a bind without ``SO_REUSEPORT`` fails where a reuse-port group exists, where joining
    that group would succeed and the kernel would split connections between two unrelated servers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no owner
        probe.bind((host, port))


def listening_socket(host: str, port: int, listen: bool = True) -> socket.socket:
    """A TCP socket on ``host:port`` in the port's ``SO_REUSEPORT`` group: the workers' listening
    sockets, and the supervisor's reservation (bound, never listening, so it takes no connection)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


def worker_main(settings: ServerSettings, identity: WorkerIdentity, port: int, log_level: str,
                shutdown_delay_s: float, cores: set[int] | None) -> None:
    """One worker: the whole app on its own socket on the shared port (runs in a spawned process)."""
    _die_with_parent()
    os.environ.update(identity.env())
    from resserve.console import configure_logging

    configure_logging(log_level, os.environ.get("RESSERVE_LOG_FORMAT", "auto"))  # type: ignore[arg-type]
    if cores:
        os.sched_setaffinity(0, cores)
    from resserve.server.serve import DrainingServer, uvicorn_config
    from resserve.server.startup import BuildProcess, BuildSource, PeerBuilds, SharedBuilds

    builds: BuildSource | None = None
    if settings.build_missing:
        builds = (SharedBuilds(BuildProcess(settings.model_repo), identity) if identity.builds_models
                  else PeerBuilds(identity))
    from resserve.server.app import create_app

    app = create_app(settings, builds=builds, worker=identity)
    server = DrainingServer(uvicorn_config(app, settings, log_level), app.state.resserve, shutdown_delay_s)
    server.run(sockets=[listening_socket(settings.host, port)])


class Supervisor:
    """Start, watch, restart and stop the workers."""

    def __init__(self, settings: ServerSettings, count: int, log_level: str = "info",
                 shutdown_delay_s: float = 0.0) -> None:
        self.settings = settings
        self.count = count
        self.log_level = log_level
        self.shutdown_delay_s = shutdown_delay_s
        self.context = multiprocessing.get_context("spawn")  # no forked engine threads or event loop
        self.processes: list[BaseProcess | None] = [None] * count
        self.started_at = [0.0] * count
        self.last_beat: list[str | None] = [None] * count
        self.beat_seen_at = [0.0] * count
        self.quick_deaths = 0
        self.stopping = False
        self.signals = 0
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.shares: list[set[int] | None] = (list(core_shares(cores, count)) if settings.pin_workers and cores
                                              and count > 1 else [None] * count)

    def _start(self, index: int, identity: WorkerIdentity, port: int) -> None:
        worker = identity.model_copy(update={"index": index})
        process = self.context.Process(
            target=worker_main, name=f"resserve-worker-{index}", daemon=False,
            args=(self.settings, worker, port, self.log_level, self.shutdown_delay_s, self.shares[index]))
        process.start()
        self.processes[index] = process
        self.started_at[index] = time.monotonic()
        self.last_beat[index], self.beat_seen_at[index] = None, self.started_at[index]
        log.info("worker %d started (pid %s%s)", index, process.pid,
                 f", cores {sorted(self.shares[index])}" if self.shares[index] else "")  # type: ignore[arg-type]

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self.signals += 1
        for process in self.processes:
            if process is not None and process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        log.info("signal %d: passed to %d workers%s", sig, self.count, "" if self.signals == 1 else " (stop now)")

    def _kill_hung(self, identity: WorkerIdentity) -> None:
        """Kill a worker whose liveness beat stopped changing for ``worker_timeout_s`` (its event
        loop is stuck), measured on this process's monotonic clock; it is restarted as a dead one
        is. A worker that has not beaten yet gets ``FIRST_BEAT_GRACE_S`` more (spawn and imports)."""
        timeout_s = self.settings.worker_timeout_s
        now = time.monotonic()
        for index, process in enumerate(self.processes):
            if process is None or process.exitcode is not None:
                continue
            beat = read_alive(identity, index)
            if beat != self.last_beat[index]:
                self.last_beat[index], self.beat_seen_at[index] = beat, now
                continue
            allowed_s = timeout_s + (FIRST_BEAT_GRACE_S if beat is None else 0.0)
            silent_s = now - self.beat_seen_at[index]
            if silent_s > allowed_s:
                log.error("worker %d (pid %s) stopped answering: no heartbeat for %.0f s (worker_timeout_s); "
                          "killing it", index, process.pid, silent_s)
                process.kill()
                forget(identity, index)
                self.last_beat[index] = None
                self.beat_seen_at[index] = now

    def _reap(self, identity: WorkerIdentity, port: int) -> int | None:
        """Restart the workers that died; an exit code for the server when it must stop."""
        from prometheus_client import multiprocess

        for index, process in enumerate(self.processes):
            if process is None or process.exitcode is None:
                continue
            code, pid = process.exitcode, process.pid
            forget(identity, index)
            if pid is not None:
                multiprocess.mark_process_dead(pid, str(identity.folder / "metrics"))
            if self.stopping:
                continue
            quick = time.monotonic() - self.started_at[index] < CRASH_WINDOW_S
            self.quick_deaths = self.quick_deaths + 1 if quick else 0
            log.error("worker %d (pid %s) exited with code %s; restarting it", index, pid, code)
            if self.quick_deaths >= MAX_QUICK_DEATHS:
                log.error("%d workers died within %.0f s of starting, one after another: stopping",
                          self.quick_deaths, CRASH_WINDOW_S)
                return 1
            self._start(index, identity, port)
        return None

    def run(self) -> int:
        """Serve until a signal; 0 after every worker drained cleanly."""
        folder = Path(tempfile.mkdtemp(prefix="resserve-workers-"))
        prepare_folder(folder)
        saved_env = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")  # read by each worker at import
        identity = WorkerIdentity(index=0, count=self.count, folder=folder)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        # Held until the end: the port stays this server's while workers restart (and port 0
        # becomes one port for all).
        try:
            if self.settings.port:
                port_is_free(self.settings.host, self.settings.port)
            reserved = listening_socket(self.settings.host, self.settings.port, listen=False)
        except OSError as exc:
            raise ResserveError(f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}") from exc
        port = reserved.getsockname()[1]
        log.info("resserve: %d workers on http://%s:%d", self.count, self.settings.host, port)
        failed: int | None = None
        try:
            for index in range(self.count):
                self._start(index, identity, port)
            while not self.stopping:
                self._kill_hung(identity)
                failed = self._reap(identity, port)
                if failed is not None:
                    self._on_signal(signal.SIGTERM, None)
                    break
                time.sleep(POLL_S)
            drained = self._wait_all(identity, port)
            return drained if failed is None else failed
        finally:
            reserved.close()
            if saved_env is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved_env
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(folder, ignore_errors=True)

    def _wait_all(self, identity: WorkerIdentity, port: int) -> int:
        """Wait for every worker's drain; kill what outlives the drain's own bound."""
        bound = self.shutdown_delay_s + self.settings.graceful_shutdown_s + 60.0  # queues, engines
        deadline = time.monotonic() + bound
        codes = []
        for index, process in enumerate(self.processes):
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker %d did not stop within %.0f s: killing it", index, bound)
                process.kill()
                process.join(5)
            codes.append(process.exitcode)
        self._reap(identity, port)  # gauges and heartbeats of the exited
        if any(code != 0 for code in codes):
            log.error("workers exited with codes %s", codes)
            return 1
        log.info("every worker drained and exited")
        return 0


def run_workers(settings: ServerSettings, count: int, log_level: str = "info", shutdown_delay_s: float = 0.0) -> int:
    """Serve with ``count`` workers until a signal; the exit code."""
    if settings.grpc_port == 0:
        raise ConfigError("with workers, give gRPC a fixed port (grpc_port 0 would give each worker its own)")
    return Supervisor(settings, count, log_level, shutdown_delay_s).run()
