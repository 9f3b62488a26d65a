"""Per model version counters in the shape of Triton's statistics extension.

What each stage means in resserve (Triton's names, resserve's stages):
- ``success`` / ``fail``: inference requests answered or failed after admission; ``ns`` is the
  time from the request's arrival to its outputs (or its failure), reading and decoding included.
- ``queue``, ``compute_input``, ``compute_infer``, ``compute_output`` count queued items: a tensor
  request is one, a request of n encoded images is n (each image is preprocessed and queued on its
  own, so the images of one request can ride in different batches).
- ``queue``: the time an item waited in the batch queue until its batch started.
- ``compute_input``: the server-side preprocessing of an image (decode, resize, crop, normalize),
  plus the item's share of concatenating the batch.
- ``compute_infer``: the engine run of the batch the item rode in (each item of a batch counts the
  batch's whole run, as Triton counts each request of a batch).
- ``compute_output``: the item's share of slicing the batch's outputs.
- ``batch_stats``: per engine batch size, the executions and their cumulative concat, run and
  slice times. ``inference_count`` counts images (rows), ``execution_count`` engine runs.

Updated from the event loop only (the engine thread's timings travel back with its result), so
no lock is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """A count and a cumulative duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(int(seconds * 1e9), 0)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class ModelStatistics:
    """Triton's ``model_stats`` entry for one served version."""

    name: str
    version: str
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    stages: dict[str, Duration] = field(default_factory=lambda: {s: Duration() for s in STAGES})
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def request_done(self, ok: bool, seconds: float, images: int) -> None:
        """One request answered (``ok``) or failed, ``seconds`` after it arrived."""
        self.stages["success" if ok else "fail"].add(seconds)
        if ok:
            self.inference_count += images
            self.last_inference_ms = int(time.time() * 1000)

    def preprocessed(self, seconds: float) -> None:
        """An image's preprocessing: counted in ``compute_input`` when its batch runs."""
        self.stages["compute_input"].add(seconds, count=0)

    def batch_done(self, sizes: list[int], queue_s: list[float], concat_s: float, infer_s: float,
                   output_s: float) -> None:
        """One engine batch of requests with ``sizes`` rows each, ``queue_s`` waited each."""
        self.execution_count += 1
        for waited in queue_s:
            self.stages["queue"].add(waited)
        total = sum(sizes) or 1
        for size in sizes:
            self.stages["compute_input"].add(concat_s * size / total)
            self.stages["compute_infer"].add(infer_s)
            self.stages["compute_output"].add(output_s * size / total)
        batch = self.batches.setdefault(sum(sizes), BatchStats())
        batch.compute_input.add(concat_s)
        batch.compute_infer.add(infer_s)
        batch.compute_output.add(output_s)

    def as_dict(self) -> dict[str, Any]:
        """Triton's JSON for this version (``cache_hit``/``cache_miss`` zero: resserve has no cache)."""
        stats = {name: duration.as_dict() for name, duration in self.stages.items()}
        stats |= {"cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}}
        return {
            "name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": stats,
            "batch_stats": [{"batch_size": size, "compute_input": b.compute_input.as_dict(),
                             "compute_infer": b.compute_infer.as_dict(), "compute_output": b.compute_output.as_dict()}
                            for size, b in sorted(self.batches.items())],
        }
