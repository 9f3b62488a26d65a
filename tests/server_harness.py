"""Helpers to build a model repository and run a real uvicorn server on 127.0.0.1 in a thread.

A server in a subprocess: ``resserve.perf.server_process.server_process``, whose ready-wait this uses too."""

from __future__ import annotations

import functools
import http.server
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import yaml
from opentelemetry.trace import TracerProvider
from PIL import Image

from resserve.perf.server_process import free_port, wait_until_ready
from resserve.builder.build_pipeline import BuildPipeline
from resserve.config import ServerSettings
from resserve.metrics import Metrics
from resserve.repository import ModelRepository
from resserve.server.app import create_app
from resserve.server.startup import InProcessBuilds
from resserve.synthetic import synthetic_jpegs


def write_model(repo: Path, name: str, onnx_source: Path, **overrides: Any) -> Path:
    """A model folder whose source is an existing ONNX file (built by the folding pass: fast)."""
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "source": {"onnx": str(onnx_source)},
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_ms": 2, "max_queue_size": 64},
        "intra_op_threads": 2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def builder_for(settings: ServerSettings) -> InProcessBuilds | None:
    """What ``resserve serve`` passes to create_app (there a build child): builds when build_missing is on."""
    return InProcessBuilds(BuildPipeline(ModelRepository(settings.model_repo))) if settings.build_missing else None


class RunningServer:
    """A live server: its base URL, settings, metrics registry and app state."""

    def __init__(self, url: str, settings: ServerSettings, metrics: Metrics, app: Any) -> None:
        self.url = url
        self.settings = settings
        self.metrics = metrics
        self.app = app

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC server (``settings.grpc_port`` must be set)."""
        assert self.settings.grpc_port, "start the server with ServerSettings(grpc_port=free_port())"
        return f"127.0.0.1:{self.settings.grpc_port}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


@contextmanager
def serve_in_thread(settings: ServerSettings, start_timeout_s: float = 60.0,
                    wait_for: str = "/v2/health/ready", started: bool = True,
                    tracer_provider: TracerProvider | None = None) -> Iterator[RunningServer]:
    """Run create_app(settings) under uvicorn in a thread; yields once ``wait_for`` answers 200
    and (with ``started``) every model has been built and loaded or has failed; spans go to
    ``tracer_provider`` when given."""
    metrics = Metrics()
    app = create_app(settings, metrics, builder_for(settings), tracer_provider=tracer_provider)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            log_config=None, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, thread.is_alive, start_timeout_s, path=wait_for, poll_s=0.05)
        deadline = time.monotonic() + start_timeout_s
        while started and not app.state.resserve.started:  # models start behind the open port
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the models did not finish starting")
            time.sleep(0.05)
        yield RunningServer(url, settings, metrics, app)
    finally:
        server.should_exit = True
        thread.join(30)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return synthetic_jpegs(1, ((width, height),), seed)[0]


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float = 10.0, every_s: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something true or ``timeout_s`` has passed: its last
    value (assert on it, so a failure shows what was seen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


@contextmanager
def static_file_server(root: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving ``root`` (with folder listings); yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
