"""Where the time went, from the server's own ``/metrics``: deltas between two scrapes.

The client sees only end-to-end latency; the server's stage histograms say how much of it was
queueing, decoding, preprocessing and inference, and its batch-size histogram how well dynamic
batching worked under that load. Deltas of ``_sum``/``_count``/``_bucket`` over a measurement
window give means and the batch-size distribution for exactly the requests in that window.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

# Per-image stages, in the order a request meets them.
IMAGE_STAGES = {
    "preprocess_wait": "resserve_preprocess_wait_seconds",
    "decode": "resserve_preprocess_decode_seconds",
    "preprocess": "resserve_preprocess_transform_seconds",
    "queue": "resserve_batcher_queue_wait_seconds",
}
INFERENCE = "resserve_engine_inference_seconds"
BATCH_SIZE = "resserve_batcher_batch_size"
REQUEST = "resserve_http_request_duration_seconds"
SERIES = (*IMAGE_STAGES.values(), INFERENCE, BATCH_SIZE, REQUEST)


@dataclass(frozen=True)
class Snapshot:
    """Histogram samples of one model from one scrape: (sample name, le or '') -> value summed
    over the other labels (versions, endpoints, statuses)."""

    values: dict[tuple[str, str], float]

    def get(self, name: str, le: str = "") -> float:
        return self.values.get((name, le), 0.0)


def parse(text: str, model: str) -> Snapshot:
    """The histograms resserve exports for ``model``, from Prometheus text exposition."""
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in SERIES:
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if family.name == REQUEST and sample.labels.get("status") != "200":
                continue
            key = (sample.name, sample.labels.get("le", ""))
            values[key] = values.get(key, 0.0) + sample.value
    return Snapshot(values)


class ServerBreakdown(BaseModel):
    """Server-side view of a window: mean milliseconds per stage, batches and their sizes."""

    requests: int
    request_ms: float
    stage_ms: dict[str, float]
    inference_ms_per_batch: float
    batches: int
    mean_batch_size: float
    batch_size_counts: dict[str, int]

    @property
    def unaccounted_ms(self) -> float:
        """Request time outside the stages: HTTP parsing, routing, response encoding, waiting for the loop."""
        return max(self.request_ms - sum(self.stage_ms.values()), 0.0)


def _mean_ms(before: Snapshot, after: Snapshot, name: str) -> float:
    count = after.get(f"{name}_count") - before.get(f"{name}_count")
    total = after.get(f"{name}_sum") - before.get(f"{name}_sum")
    return 1000.0 * total / count if count > 0 else 0.0


def _bucket_counts(before: Snapshot, after: Snapshot, name: str) -> dict[str, int]:
    """Batches per size range: cumulative ``le`` buckets turned into plain counts."""
    bounds = sorted({le for (sample, le) in after.values if sample == f"{name}_bucket"},
                    key=lambda le: float("inf") if le == "+Inf" else float(le))
    counts, previous_cum, previous_le = {}, 0.0, 0.0
    for le in bounds:
        cumulative = after.get(f"{name}_bucket", le) - before.get(f"{name}_bucket", le)
        count = round(cumulative - previous_cum)
        upper = float("inf") if le == "+Inf" else float(le)
        if count:
            low = int(previous_le) + 1
            label = f">{int(previous_le)}" if upper == float("inf") else (
                str(int(upper)) if low >= upper else f"{low}-{int(upper)}")
            counts[label] = count
        previous_cum, previous_le = cumulative, upper if upper != float("inf") else previous_le
    return counts


def breakdown(before: Snapshot, after: Snapshot) -> ServerBreakdown:
    """What the server did between two scrapes of the same model."""
    batches = after.get(f"{BATCH_SIZE}_count") - before.get(f"{BATCH_SIZE}_count")
    rows = after.get(f"{BATCH_SIZE}_sum") - before.get(f"{BATCH_SIZE}_sum")
    stages = {stage: _mean_ms(before, after, name) for stage, name in IMAGE_STAGES.items()}
    inference = _mean_ms(before, after, INFERENCE)
    # A request waits for its whole batch: the batch's engine time is that request's inference stage.
    stages["inference"] = inference
    return ServerBreakdown(
        requests=int(after.get(f"{REQUEST}_count") - before.get(f"{REQUEST}_count")),
        request_ms=_mean_ms(before, after, REQUEST),
        stage_ms=stages,
        inference_ms_per_batch=inference,
        batches=int(batches),
        mean_batch_size=rows / batches if batches > 0 else 0.0,
        batch_size_counts=_bucket_counts(before, after, BATCH_SIZE),
    )
