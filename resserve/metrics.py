"""Prometheus metrics, defined once against an injected registry (tests use a fresh one).

Names follow ``resserve_<subsystem>_<name>_<unit>``. The stage histograms (decode, preprocess,
queue wait, inference) break a request's latency down; for single-image requests their sums add
up to the request duration minus HTTP handling.

With workers (``resserve serve --workers N``) every process writes prometheus-client's
multiprocess files and ``/metrics`` sums them: counters and histograms are totals over workers,
live workers' gauges are summed (in flight, queue depth), or their largest (batch cap) or smallest
(model ready: 1 only when every worker serves it).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

# 0.5 ms to 10 s, about 1.5x apart: fine enough for p50/p99 estimates at every stage.
LATENCY_BUCKETS_S = (
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)


class SeriesCache:
    """Labelled series looked up once: ``labels()`` hashes and takes a lock on every call, several
    times per request on the hot path. A series is made on its first use, as ``labels()`` makes it;
    the labels must come from a bounded set (found models, versions, endpoints, statuses)."""

    def __init__(self) -> None:
        self._series: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def __call__(self, metric: MetricWrapperBase, *labels: str) -> Any:
        series = self._series.get((metric, labels))
        if series is None:
            series = self._series[metric, labels] = metric.labels(*labels)
        return series


class Metrics:
    """Every metric resserve exports; one instance per server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "resserve_http_request_duration_seconds", "HTTP request duration, receipt to response",
            ["model", "version", "endpoint", "status"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.requests = Counter(
            "resserve_http_requests_total", "HTTP requests by outcome",
            ["model", "endpoint", "status"], registry=r)
        self.images = Counter(
            "resserve_http_images_total", "Images classified or rejected over HTTP, by outcome",
            ["model", "status"], registry=r)
        self.grpc_images = Counter(
            "resserve_grpc_images_total", "Images (tensor rows) classified or rejected over gRPC, by outcome",
            ["model", "status"], registry=r)
        self.grpc_requests = Counter(
            "resserve_grpc_requests_total", "gRPC calls by method, model and status code",
            ["method", "model", "code"], registry=r)
        self.grpc_duration = Histogram(
            "resserve_grpc_request_duration_seconds", "gRPC call duration, receipt to answer",
            ["method", "model", "code"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.in_flight = Gauge(
            "resserve_http_in_flight_requests", "Requests received and not yet answered", registry=r,
            multiprocess_mode="livesum")
        self.decode = Histogram(
            "resserve_preprocess_decode_seconds", "Image decode time per image",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.preprocess = Histogram(
            "resserve_preprocess_transform_seconds", "Resize, crop and normalize time per image",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.preprocess_wait = Histogram(
            "resserve_preprocess_wait_seconds", "Time an image waited for a preprocessing thread",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram(
            "resserve_batcher_queue_wait_seconds", "Time a request waited in the batch queue",
            ["model", "version"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.inference = Histogram(
            "resserve_engine_inference_seconds", "Engine time per batch",
            ["model", "version"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "resserve_batcher_batch_size", "Rows per engine batch",
            ["model", "version"], buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_cap = Gauge(
            "resserve_batcher_batch_cap", "Adaptive batching: the largest batch the latency target allows now",
            ["model", "version"], registry=r, multiprocess_mode="livemax")
        self.planned_wait = Histogram(
            "resserve_batcher_planned_wait_seconds", "Adaptive batching: how long each batch was held for more rows",
            ["model", "version"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge(
            "resserve_batcher_queue_depth", "Requests waiting in the batch queue",
            ["model", "version"], registry=r, multiprocess_mode="livesum")
        self.engine_failures = Counter(
            "resserve_engine_failures_total", "Engine batches that raised",
            ["model", "version"], registry=r)
        self.engine_hangs = Counter(
            "resserve_engine_hangs_total", "Engine batches that outlived the watchdog (engine_timeout_s)",
            ["model", "version"], registry=r)
        self.expired = Counter(
            "resserve_batcher_expired_total", "Requests whose deadline passed before the engine ran them",
            ["model", "version"], registry=r)
        self.model_ready = Gauge(
            "resserve_model_ready", "1 when the model version answers requests",
            ["model", "version"], registry=r, multiprocess_mode="livemin")
        shadow = ["model", "primary", "candidate"]
        self.shadow_compared = Counter(
            "resserve_shadow_compared_total", "Images answered by the primary and by a shadowed candidate, compared",
            shadow, registry=r)
        self.shadow_top1_agreements = Counter(
            "resserve_shadow_top1_agreements_total", "Compared images whose top-1 class was the same on both",
            shadow, registry=r)
        self.shadow_top5_overlap = Histogram(
            "resserve_shadow_top5_overlap", "Classes shared by the primary's and the candidate's top 5, per image",
            shadow, buckets=(0, 1, 2, 3, 4, 5), registry=r)
        self.shadow_prob_l1 = Histogram(
            "resserve_shadow_prob_l1", "L1 distance between the primary's and the candidate's probabilities, per image",
            shadow, buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0), registry=r)
        self.shadow_dropped = Counter(
            "resserve_shadow_dropped_total", "Requests drawn for shadowing but not mirrored (saturated, candidate "
            "not serving, incompatible, failed)", [*shadow, "reason"], registry=r)
        self.shadow_latency = Histogram(
            "resserve_shadow_latency_seconds", "Queue and engine time of the same rows on the primary and on the "
            "candidate, under the version that ran them", [*shadow, "version"], buckets=LATENCY_BUCKETS_S, registry=r)
        # What serves, as far as it decides the answers (an info metric: the labels carry it, the value is 1).
        self.model_runtime = Gauge(
            "resserve_model_runtime_info", "What serves the model version: engine, instruction-set class, "
            "precision, what the runtime runs non-quantized layers in, int8 kernels",
            ["model", "version", "engine", "isa", "precision", "inference_precision", "int8_kernels"],
            registry=r, multiprocess_mode="livemax")
