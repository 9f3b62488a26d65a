"""The request path shared by every endpoint: preprocess in a thread pool, batch, score.

Decoding and resizing run in a pool of threads (Pillow and numpy release the GIL) while the
engine thread runs the previous batch: on 2 cores that overlap decides throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from resserve.config import ServerSettings
from resserve.engines.onnxruntime import available_cores
from resserve.errors import InvalidRequestError, ModelNotReadyError, QueueFullError
from resserve.metrics import Metrics
from resserve.preprocess import preprocess_timed
from resserve.runtime import ModelManager, ServedModel


class InferenceService:
    """Preprocessing pool plus helpers to run images or tensors through a served model."""

    def __init__(self, settings: ServerSettings, metrics: Metrics, manager: ModelManager) -> None:
        self.settings = settings
        self.metrics = metrics
        self.manager = manager
        self.threads = settings.preprocess_threads or available_cores()
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="preprocess")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    @contextlib.contextmanager
    def admit(self, served: ServedModel) -> Iterator[None]:
        """Admission control, before the body is read: per model, at most ``max_queue_size`` requests
        plus one running batch per engine instance are being read, preprocessed, queued or run.
        Overload is refused with a cheap 503 instead of costing a decode first, and memory stays
        bounded whatever the offered load."""
        config = served.config
        limit = config.dynamic_batching.max_queue_size + config.max_batch_size * config.instance_count
        if served.admitted >= limit:
            raise QueueFullError(f"model {served.name}: queue full ({served.admitted} requests in progress)",
                                 retry_after_s=served.queue.retry_after_s())
        served.admitted += 1
        try:
            yield
        finally:
            served.admitted -= 1

    def deadline(self, served: ServedModel, timeout_ms: float | None) -> float:
        """Monotonic deadline: the request's own timeout, else the model's default."""
        if timeout_ms is not None and timeout_ms <= 0:
            raise InvalidRequestError(f"timeout must be positive, got {timeout_ms} ms")
        ms = timeout_ms if timeout_ms is not None else served.config.dynamic_batching.default_timeout_ms
        return time.monotonic() + ms / 1000.0

    async def preprocess(self, served: ServedModel, data: bytes) -> np.ndarray:
        """One encoded image to the model's input tensor (no batch axis), with stage metrics."""
        loop = asyncio.get_running_loop()
        queued = time.perf_counter()
        tensor, decode_s, transform_s, started = await loop.run_in_executor(self.pool, _timed, data, served)
        self.metrics.preprocess_wait.labels(served.name).observe(started - queued)
        self.metrics.decode.labels(served.name).observe(decode_s)
        self.metrics.preprocess.labels(served.name).observe(transform_s)
        return tensor

    async def submit(self, served: ServedModel, rows: np.ndarray, deadline: float,
                     received: float | None = None) -> np.ndarray:
        """Queue rows on ``served``, or on its successor if a reload retired it meanwhile."""
        try:
            return await served.queue.submit(rows, deadline, received)
        except ModelNotReadyError:
            successor = self.manager.successor(served)
            if successor is None:
                raise
            return await successor.queue.submit(rows, deadline, received)

    async def infer_images(self, served: ServedModel, images: list[bytes], deadline: float,
                           received: float | None = None) -> np.ndarray:
        """Raw model outputs for encoded images, one row per image.

        Each image is its own batch-queue entry, so the images of one request and of concurrent
        requests batch together freely.
        """
        tensors = await asyncio.gather(*(self.preprocess(served, data) for data in images))
        outputs = await asyncio.gather(*(self.submit(served, t[np.newaxis], deadline, received) for t in tensors))
        return np.concatenate(outputs)

    async def infer_tensor(self, served: ServedModel, batch: np.ndarray, deadline: float,
                           received: float | None = None) -> np.ndarray:
        """Raw model outputs for an already preprocessed batch."""
        return await self.submit(served, batch, deadline, received)

    @staticmethod
    def scores(served: ServedModel, outputs: np.ndarray) -> np.ndarray:
        """Softmax probabilities, unless the model already ends in softmax."""
        if served.config.softmax_in_model or served.metadata.softmax:
            return outputs.astype(np.float32, copy=False)
        return softmax(outputs)


def _timed(data: bytes, served: ServedModel) -> tuple[np.ndarray, float, float, float]:
    started = time.perf_counter()
    tensor, decode_s, transform_s = preprocess_timed(data, served.contract, served.decode_options)
    return tensor, decode_s, transform_s, started


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stability, returned as float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def top_k(scores: np.ndarray, k: int, labels: list[str]) -> list[list[dict[str, object]]]:
    """Per row the ``k`` best classes as ``{index, label, score}``, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    results = []
    for row, candidates in zip(scores, part, strict=True):
        best = candidates[np.argsort(-row[candidates], kind="stable")]
        results.append([{"index": int(i), "label": labels[i], "score": float(row[i])} for i in best])
    return results
