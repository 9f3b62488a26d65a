"""The one request pipeline that every protocol adapter calls.

An adapter (``classify``, OIP ``infer`` over HTTP or gRPC) turns its wire format into encoded images or
a tensor, and turns the outputs back. Everything between is here, written once: admission by
images, the per-request image limit, deadlines, preprocessing image by image, the batch queue
and the image counters.

Every adapter opens the same way (:meth:`RequestPipeline.request`: arrival time, model lookup,
admission) and records nothing itself: the model's observers hear of every image and request.

Example::

    with pipeline.request(name, version, "http") as ticket:
        images = ...  # read and parse the body
        outputs = await pipeline.run_images(ticket, images, timeout_ms)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from resserve.config import ServerSettings
from resserve.engines.hardware import available_cores
from resserve.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotReadyError,
    QueueFullError,
    TooManyImagesError,
)
from resserve.metrics import Metrics
from resserve.preprocess import preprocess_small, preprocess_timed
from resserve.server.shadow import Shadow
from resserve.serving.manager import ModelManager, ServedModel
from resserve.threads import PREPROCESS_PREFIX, set_os_thread_name
from resserve.tracing import OFF, Tracing

# A request may ask for a longer deadline than the model's default, but not an unbounded one:
# float("1e400") is inf, and a deadline of inf keeps an entry alive for ever.
MAX_TIMEOUT_MS = 3_600_000.0
T = TypeVar("T")


@dataclass
class Ticket:
    """A request admitted on ``served``: it holds ``images`` units of the model's admission budget."""

    served: ServedModel
    received: float  # time.monotonic() when the request arrived: the adaptive batcher ages from here
    protocol: str = "http"  # which adapter carried it ("http" or "grpc"): the image counters tell them apart
    images: int = 0
    pinned: bool = False  # the request named its version: that version answers, or an error, never another


class RequestPipeline:
    """Admission, preprocessing (a thread pool) and batching for every protocol.

    Decoding and resizing run in a pool of threads (Pillow and numpy release the GIL) while the
    engine thread runs the previous batch: on 2 cores that overlap decides throughput.
    """

    def __init__(self, settings: ServerSettings, metrics: Metrics, manager: ModelManager,
                 tracing: Tracing = OFF) -> None:
        self.settings = settings
        self.metrics = metrics
        self.manager = manager
        self.tracing = tracing
        self.threads = settings.preprocess_threads or available_cores()
        self.shadow = Shadow(manager, metrics)
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="preprocess",
                                       initializer=set_os_thread_name, initargs=(PREPROCESS_PREFIX,))
        self.parse_slots = asyncio.Semaphore(self.threads)

    def close(self) -> None:
        self.shadow.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def parse(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a request's parsing (JSON, base64, framing) on a worker thread, at most ``threads``
        parses at once: costly bodies queue behind each other here and never hold every thread of
        asyncio's default executor, which also loads models and inflates bodies (six 40,000-output
        bodies once made another client's infer wait 47 s). The default executor's threads, not a
        pool of their own: a new pool's threads each took a fresh malloc arena (+20 to 30 MiB peak
        RSS on the worst requests, measured and reverted)."""
        async with self.parse_slots:
            return await asyncio.to_thread(function, *args, **kwargs)

    def max_images(self, served: ServedModel) -> int:
        """Images (or tensor rows) one request may carry: the setting, never above the queue."""
        return min(self.settings.max_images_per_request, served.config.dynamic_batching.max_queue_size)


    @contextlib.contextmanager
    def request(self, name: str, version: str | None, protocol: str,
                found: Callable[[ServedModel], None] | None = None) -> Iterator[Ticket]:
        """Every adapter's preamble: note the arrival, find the model (404, or 503 while it is not
        ready), tell ``found`` (an adapter's labels for its own metrics), and admit the request."""
        received = time.monotonic()
        served = self.manager.get(name, version)
        if found is not None:
            found(served)
        with self.admit(served, received, protocol) as ticket:
            ticket.pinned = version is not None
            yield ticket

    @contextlib.contextmanager
    def admit(self, served: ServedModel, received: float, protocol: str = "http") -> Iterator[Ticket]:
        """Admission control: a model with no room is refused before the body is read (a cheap 503,
        no read, no decode). Places are taken by :meth:`reserve` once the body has been read and
        says how many images it carries, so a client that uploads slowly holds none."""
        self._check_room(served, 1)
        ticket = Ticket(served, received, protocol)
        served.requests += 1
        try:
            yield ticket
        finally:
            ticket.served.admitted -= ticket.images  # a successor took the places over, if one answered
            served.requests -= 1

    def reserve(self, ticket: Ticket, count: int) -> None:
        """Grow (or shrink) the ticket to ``count`` images: 413 beyond the per-request limit, 503
        when the model has no room for them now. Call before decoding anything."""
        served = ticket.served
        if count > (limit := self.max_images(served)):
            raise TooManyImagesError(
                f"the request carries {count} images; at most {limit} per request (max_images_per_request)")
        if count > ticket.images:
            self._check_room(served, count - ticket.images)
        served.admitted += count - ticket.images
        ticket.images = count

    def _check_room(self, served: ServedModel, count: int) -> None:
        if served.admitted + count > (capacity := served.capacity):
            raise QueueFullError(
                f"model {served.name}: queue full ({served.admitted} of {capacity} images in progress)",
                retry_after_s=served.queue.retry_after_s())

    def deadline(self, ticket: Ticket, timeout_ms: float | None) -> float:
        """Monotonic deadline: the request's own timeout, else the model's default; from arrival."""
        if timeout_ms is not None and not (0 < timeout_ms <= MAX_TIMEOUT_MS):
            raise InvalidRequestError(f"timeout must be in (0, {MAX_TIMEOUT_MS:.0f}] ms, got {timeout_ms:g} ms")
        ms = timeout_ms if timeout_ms is not None else ticket.served.config.dynamic_batching.default_timeout_ms
        return ticket.received + ms / 1000.0

    async def run_images(self, ticket: Ticket, images: Sequence[bytes], timeout_ms: float | None) -> np.ndarray:
        """Raw model outputs for encoded images, one row per image.

        Each image is preprocessed and queued on its own, so the images of one request and of
        concurrent requests batch together freely; at most ``threads`` images of a request are
        being decoded at once, and the first failure cancels the rest.
        """
        if not images:
            raise InvalidRequestError("the request holds no images")
        self.reserve(ticket, len(images))
        deadline = self.deadline(ticket, timeout_ms)
        served = ticket.served
        # The preprocessed rows outlive their batch only for a model with a shadow to feed.
        rows: list[np.ndarray] | None = [np.empty(0)] * len(images) if self.shadow.wanted(served) else None
        submitted: list[float] = []

        async def one(index: int, data: bytes) -> np.ndarray:
            tensor = await self._preprocess(served, data, deadline)
            if rows is not None:
                rows[index] = tensor[np.newaxis]
                submitted.append(time.monotonic())
            return await self._submit(ticket, tensor[np.newaxis], deadline)

        async def every() -> np.ndarray:
            if len(images) == 1:  # the common request: no window, no task group, no copy
                return await one(0, images[0])
            window = asyncio.Semaphore(self.threads)

            async def windowed(index: int, data: bytes) -> np.ndarray:
                async with window:
                    return await one(index, data)

            return np.concatenate(await _all_or_first_error([windowed(i, data) for i, data in enumerate(images)]))

        outputs = await self._observed(ticket, len(images), every())
        if rows is not None:
            self.shadow.mirror(ticket.served, lambda: np.concatenate(rows), outputs, time.monotonic() - min(submitted))
        return outputs

    async def run_tensor(self, ticket: Ticket, batch: np.ndarray, timeout_ms: float | None) -> np.ndarray:
        """Raw model outputs for a preprocessed batch: its rows count as images everywhere."""
        self.reserve(ticket, batch.shape[0])
        deadline = self.deadline(ticket, timeout_ms)
        submitted = time.monotonic()
        outputs = await self._observed(ticket, batch.shape[0], self._submit(ticket, batch, deadline))
        self.shadow.mirror(ticket.served, lambda: batch, outputs, time.monotonic() - submitted)
        return outputs

    @staticmethod
    async def _observed(ticket: Ticket, images: int, work: Awaitable[np.ndarray]) -> np.ndarray:
        """Await the request's work and tell the model's observers how it ended (cancelled: failed)."""
        ok = False
        try:
            outputs = await work
            ok = True
            return outputs
        finally:
            ticket.served.observers.request_done(ok, time.monotonic() - ticket.received, images, ticket.protocol)

    async def _preprocess(self, served: ServedModel, data: bytes, deadline: float) -> np.ndarray:
        """One encoded image to the model's input tensor (no batch axis), with stage metrics.

        The deadline bounds the wait as well as the decode: an image whose deadline passes while it
        waits for a preprocessing thread is answered 504 then and never decoded, and one whose
        decode outlives it is answered at the deadline (the thread finishes it for nobody). A small
        JPEG (``inline_preprocess_max_pixels``, :func:`~resserve.preprocess.preprocess_small`) is
        decoded here, on the event loop: handing it to a thread and back costs more CPU (thread
        wake-ups, the GIL passed back and forth) than its decode.
        """
        queued = time.perf_counter()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(f"model {served.name}: deadline passed before the image was decoded")
        inline_max = self.settings.inline_preprocess_max_pixels
        if len(data) <= inline_max and served.gpu_decoder is None:
            # At most as many bytes as pixels allowed: a small JPEG, unless its header says otherwise.
            small = preprocess_small(data, served.contract, served.decode_options, inline_max)
            if small is not None:
                tensor, decode_s, transform_s = small
                served.observers.image_preprocessed(data, 0.0, decode_s, transform_s, queued)
                return tensor
        work = asyncio.get_running_loop().run_in_executor(self.pool, _timed, data, served, deadline)
        try:
            tensor, decode_s, transform_s, started = await asyncio.wait_for(work, remaining)
        except TimeoutError:
            raise DeadlineExceededError(f"model {served.name}: deadline passed while the image was "
                                        "waiting for or in preprocessing") from None
        served.observers.image_preprocessed(data, started - queued, decode_s, transform_s, started)
        return tensor

    async def _submit(self, ticket: Ticket, rows: np.ndarray, deadline: float) -> np.ndarray:
        """Queue rows on the ticket's model, or on its successor if a reload (or a version leaving
        the policy) retired it meanwhile: for a request that named its version, only a reload of it."""
        trace = self.tracing.current()
        served = ticket.served
        try:
            return await served.queue.submit(rows, deadline, ticket.received, trace)
        except ModelNotReadyError:
            if ticket.served is served:  # the first of its images to find the queue closed moves the request
                successor = self.manager.successor(served, pinned=ticket.pinned)
                if successor is None:
                    raise
                # The request's places move with it (its other images then go straight there).
                served.admitted -= ticket.images
                successor.admitted += ticket.images
                ticket.served = successor
            return await ticket.served.queue.submit(rows, deadline, ticket.received, trace)


async def _all_or_first_error(coroutines: list) -> list[np.ndarray]:  # type: ignore[type-arg]
    """Run every coroutine; on the first failure cancel the others and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as group_error:
        raise _first(group_error) from None
    return [task.result() for task in tasks]


def _first(group_error: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    first = group_error.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _timed(data: bytes, served: ServedModel, deadline: float) -> tuple[np.ndarray, float, float, float]:
    if time.monotonic() >= deadline:  # it waited in the pool past its deadline: no decode for nobody
        raise DeadlineExceededError(f"model {served.name}: deadline passed before the image was decoded")
    started = time.perf_counter()
    if served.gpu_decoder is not None and (on_gpu := served.gpu_decoder(data)) is not None:
        return (*on_gpu, started)
    tensor, decode_s, transform_s = preprocess_timed(data, served.contract, served.decode_options)
    return tensor, decode_s, transform_s, started

