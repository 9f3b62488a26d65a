"""The observers resserve ships: Prometheus metrics, Triton's statistics extension, and spans.

Each records one model version's events in its own terms; :class:`~resserve.serving.observers.Observers`
calls them in turn and isolates their failures. The tracing sink is added only when tracing is on,
so a server without it pays nothing for spans.
"""

from __future__ import annotations

import io
import time
from contextlib import AbstractContextManager

from PIL import Image

from resserve.metrics import Metrics, SeriesCache
from resserve.serving.observers import BatchRun, Observer
from resserve.serving.statistics import ModelStatistics
from resserve.tracing import Tracing, now_ns


class PrometheusSink(Observer):
    """The ``resserve_*`` metrics of one model version (names and labels: docs/metrics.md); each
    series looked up once (:class:`~resserve.metrics.SeriesCache`)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.metrics = metrics
        self.labels = (model, version)
        self.series = SeriesCache()

    def queue_depth(self, rows: int) -> None:
        self.series(self.metrics.queue_depth, *self.labels).set(rows)

    def expired(self) -> None:
        self.series(self.metrics.expired, *self.labels).inc()

    def batch_planned(self, cap: int, held_s: float) -> None:
        self.series(self.metrics.batch_cap, *self.labels).set(cap)
        self.series(self.metrics.planned_wait, *self.labels).observe(held_s)

    def batch_started(self, batch: BatchRun) -> None:
        queue_wait = self.series(self.metrics.queue_wait, *self.labels)
        for waited in batch.waited_s:
            queue_wait.observe(waited)

    def batch_done(self, batch: BatchRun) -> None:
        self.series(self.metrics.inference, *self.labels).observe(batch.elapsed_s)
        self.series(self.metrics.batch_size, *self.labels).observe(batch.total_rows)

    def batch_failed(self, batch: BatchRun, hung: bool) -> None:
        if hung:
            self.series(self.metrics.engine_hangs, *self.labels).inc()
        self.series(self.metrics.engine_failures, *self.labels).inc()

    def image_preprocessed(self, image: bytes, wait_s: float, decode_s: float, transform_s: float,
                           started: float) -> None:
        model = self.labels[0]
        self.series(self.metrics.preprocess_wait, model).observe(wait_s)
        self.series(self.metrics.decode, model).observe(decode_s)
        self.series(self.metrics.preprocess, model).observe(transform_s)

    def request_done(self, ok: bool, seconds: float, images: int, protocol: str) -> None:
        if protocol == "shadow":  # no client's images: resserve_shadow_* counts them
            return
        counter = self.metrics.grpc_images if protocol == "grpc" else self.metrics.images
        self.series(counter, self.labels[0], "ok" if ok else "error").inc(images)


class StatisticsSink(Observer):
    """Triton's statistics extension for one model version (``/v2/models/{name}/stats``)."""

    def __init__(self, statistics: ModelStatistics) -> None:
        self.statistics = statistics

    def batch_done(self, batch: BatchRun) -> None:
        self.statistics.batch_done(list(batch.rows), list(batch.waited_s), batch.concat_s, batch.infer_s,
                                   batch.output_s)

    def image_preprocessed(self, image: bytes, wait_s: float, decode_s: float, transform_s: float,
                           started: float) -> None:
        self.statistics.preprocessed(decode_s + transform_s)

    def request_done(self, ok: bool, seconds: float, images: int, protocol: str) -> None:
        self.statistics.request_done(ok, seconds, images)


class TracingSink(Observer):
    """Spans: ``preprocess`` and ``decode`` (timed in a worker thread), ``queue wait`` per request
    (timed by the queue), and ``engine batch`` around the engine call."""

    def __init__(self, tracing: Tracing, model: str, version: str) -> None:
        self.tracing = tracing
        self.model = model
        self.version = version

    def image_preprocessed(self, image: bytes, wait_s: float, decode_s: float, transform_s: float,
                           started: float) -> None:
        if self.tracing.current() is None:  # an adapter without a request span
            return
        start_ns = now_ns() - int((time.perf_counter() - started) * 1e9)
        decoded_ns = start_ns + int(decode_s * 1e9)
        try:
            width, height = Image.open(io.BytesIO(image)).size  # reads the header only
        except Exception:  # it decoded already; a format Pillow cannot reopen is no reason to fail
            width = height = 0
        parent = self.tracing.record("preprocess", start_ns, decoded_ns + int(transform_s * 1e9), model=self.model,
                                     version=self.version, image_width=width, image_height=height)
        self.tracing.record("decode", start_ns, decoded_ns, parent, image_width=width, image_height=height)

    def batch_started(self, batch: BatchRun) -> None:
        for rows, waited, trace in zip(batch.rows, batch.waited_s, batch.traces, strict=True):
            if trace is not None:
                self.tracing.record("queue wait", batch.started_ns - int(waited * 1e9), batch.started_ns, trace,
                                    rows=rows)

    def batch_scope(self, batch: BatchRun) -> AbstractContextManager[object]:
        """``engine batch``, current while the engine runs: its own trace, linked to every request
        span it served; the batch's log lines (a failure, the watchdog) carry its trace id."""
        return self.tracing.batch_span([t for t in batch.traces if t is not None], model=self.model,
                                       version=self.version, batch_size=batch.total_rows, requests=len(batch.rows))
