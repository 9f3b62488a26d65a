"""What happens to requests and batches, told once to every sink that records it.

The request pipeline and the batch queue each call one :class:`Observer` per event; Prometheus,
the statistics extension and tracing are sinks behind it (:mod:`resserve.serving.sinks`), none
woven into the batch loop. :class:`Observers` calls every sink and keeps one that raises from
disturbing the others or the request: an observer's failure is logged, never answered.

Example::

    observers = Observers([PrometheusSink(metrics, "resnet50", "1"), StatisticsSink(statistics)])
    observers.batch_done(BatchRun(rows=(1, 1), waited_s=(0.002, 0.001), traces=(None, None), ...))
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from opentelemetry.trace import SpanContext

log = logging.getLogger(__name__)
_NULL: AbstractContextManager[object] = contextlib.nullcontext()


@dataclass(frozen=True)
class BatchRun:
    """One engine batch: its requests' rows, waits and trace contexts, and what the engine took."""

    rows: tuple[int, ...]  # per request
    waited_s: tuple[float, ...]  # per request: enqueued until the batch started
    traces: tuple[SpanContext | None, ...]  # per request: its span, which the batch's span links to
    started_ns: int  # wall clock, for spans
    elapsed_s: float = 0.0  # batch start to outputs (or failure)
    concat_s: float = 0.0
    infer_s: float = 0.0
    output_s: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


class Observer:
    """Hooks per event, each a no-op here: a sink overrides the ones it records."""

    def queue_depth(self, rows: int) -> None:
        """Rows now waiting in the batch queue."""

    def expired(self) -> None:
        """A queued request's deadline passed before the engine ran it."""

    def batch_planned(self, cap: int, held_s: float) -> None:
        """A reporting policy (``reports``: the SLO-aware one) let a batch go: at most ``cap`` rows,
        after holding ``held_s``."""

    def batch_started(self, batch: BatchRun) -> None:
        """A batch left the queue for the engine."""

    def batch_scope(self, batch: BatchRun) -> AbstractContextManager[object]:
        """Entered around the engine call (a span that is current meanwhile, so the batch's log
        lines carry its trace id, and that ends however the call ends)."""
        return contextlib.nullcontext()

    def batch_done(self, batch: BatchRun) -> None:
        """The engine answered a batch (timings filled in)."""

    def batch_failed(self, batch: BatchRun, hung: bool) -> None:
        """The engine raised on a batch, or (``hung``) outlived the watchdog's limit."""

    def image_preprocessed(self, image: bytes, wait_s: float, decode_s: float, transform_s: float,
                           started: float) -> None:
        """One image decoded and transformed (``started``: perf_counter when its thread took it)."""

    def request_done(self, ok: bool, seconds: float, images: int, protocol: str) -> None:
        """A request admitted on the model answered (``ok``) or failed, ``seconds`` after arrival."""


HOOKS = ("queue_depth", "expired", "batch_planned", "batch_started", "batch_scope", "batch_done", "batch_failed",
         "image_preprocessed", "request_done")


class Observers(Observer):
    """Every sink, each called in turn; a sink that raises is logged (at its 1st, 10th, 100th...
    failure of that hook, with the traceback) and the rest still run."""

    def __init__(self, sinks: Sequence[Observer] = ()) -> None:
        self.sinks = list(sinks)
        self._failures: Counter[tuple[str, str]] = Counter()
        # Per hook, the sinks that record it, bound once: an event costs a call per interested sink.
        self._calls: dict[str, list[tuple[Observer, Callable[..., object]]]] = {
            hook: [(sink, getattr(sink, hook)) for sink in self.sinks
                   if getattr(type(sink), hook) is not getattr(Observer, hook)]
            for hook in HOOKS}

    def _each(self, hook: str, *args: object) -> None:
        for sink, call in self._calls[hook]:
            try:
                call(*args)
            except Exception:
                self._failed(sink, hook)

    def _failed(self, sink: Observer, hook: str) -> None:
        key = (type(sink).__name__, hook)
        self._failures[key] += 1
        count = self._failures[key]
        if str(count).strip("0") == "1":  # 1, 10, 100, ...
            log.exception("observer %s failed in %s (%d times so far); requests are unaffected",
                          key[0], hook, count)

    def queue_depth(self, rows: int) -> None:
        self._each("queue_depth", rows)

    def expired(self) -> None:
        self._each("expired")

    def batch_planned(self, cap: int, held_s: float) -> None:
        self._each("batch_planned", cap, held_s)

    def batch_started(self, batch: BatchRun) -> None:
        self._each("batch_started", batch)

    def batch_scope(self, batch: BatchRun) -> AbstractContextManager[object]:
        return self._scoped(batch) if self._calls["batch_scope"] else _NULL  # tracing off: nothing to enter

    @contextlib.contextmanager
    def _scoped(self, batch: BatchRun) -> Iterator[object]:
        with contextlib.ExitStack() as stack:
            for sink, scope in self._calls["batch_scope"]:
                try:
                    stack.enter_context(scope(batch))  # type: ignore[arg-type]
                except Exception:
                    self._failed(sink, "batch_scope")
            yield None

    def batch_done(self, batch: BatchRun) -> None:
        self._each("batch_done", batch)

    def batch_failed(self, batch: BatchRun, hung: bool) -> None:
        self._each("batch_failed", batch, hung)

    def image_preprocessed(self, image: bytes, wait_s: float, decode_s: float, transform_s: float,
                           started: float) -> None:
        self._each("image_preprocessed", image, wait_s, decode_s, transform_s, started)

    def request_done(self, ok: bool, seconds: float, images: int, protocol: str) -> None:
        self._each("request_done", ok, seconds, images, protocol)


NO_OBSERVER = Observers()
