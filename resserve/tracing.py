"""OpenTelemetry tracing: off unless ``OTEL_TRACES_EXPORTER`` is set or a test passes a provider.

A leaf that serving and server both use. :class:`Tracing` wraps one tracer; when off, every
helper returns a shared null context, so a request costs an attribute check and nothing more
(no span objects, no context attach). The provider is passed down explicitly rather than set
globally: OpenTelemetry's global provider can be set only once per process, and tests need one
each.

Span names: the SERVER span ``POST /v2/models/{name}/infer`` (the route template) or
``inference.GRPCInferenceService/ModelInfer`` (the RPC), then ``read``,
``decode``, ``preprocess`` (one per image), ``queue wait``, ``engine batch`` (one per batch, with
links to the requests it served) and ``encode``.

Example::

    tracing = Tracing(tracer_provider_from_env())
    with tracing.span("read"):
        body = await read_body(request)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind

log = logging.getLogger(__name__)

_NULL: AbstractContextManager[None] = contextlib.nullcontext()


def _exporter(name: str) -> SpanExporter:
    """The exporter ``OTEL_TRACES_EXPORTER`` names; OTLP packages imported only when asked for.
    Each reads its own ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout)."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                  os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            return HttpExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: resserve knows otlp, console and none")


def tracer_provider_from_env(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """A provider with a batch processor per exporter in ``OTEL_TRACES_EXPORTER`` (comma-separated),
    or None when it is unset or ``none``. The resource comes from the SDK's own variables
    (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``); the service name defaults to resserve."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    defaults = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "resserve"}
    provider = TracerProvider(resource=Resource.create(defaults))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    log.info("tracing on: exporting spans with %s", ", ".join(names))
    return provider


class Tracing:
    """One tracer, or none; the helpers below do nothing when there is none."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("resserve") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def server_span(self, name: str, headers: list[tuple[bytes, bytes]],
                    attributes: dict[str, Any]) -> AbstractContextManager[Span | None]:
        """The SERVER span of one request, child of the client's W3C ``traceparent`` if any."""
        if self.tracer is None:
            return _NULL
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in (b"traceparent", b"tracestate")}
        parent: Context | None = extract(carrier) if carrier else None
        return self.tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        """A child of the current span (a request step: read, encode)."""
        if self.tracer is None:
            return _NULL
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def current(self) -> SpanContext | None:
        """The current span's context, to carry with a queued item (None when off or outside a span)."""
        if self.tracer is None:
            return None
        context = trace.get_current_span().get_span_context()
        return context if context.is_valid else None

    def record(self, name: str, start_ns: int, end_ns: int, parent: SpanContext | None = None,
               **attributes: Any) -> SpanContext | None:
        """A finished step measured elsewhere (a thread, the queue): a span with those times, child
        of ``parent`` or of the current span; returns its context, a parent for its own steps."""
        if self.tracer is None:
            return None
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
        span = self.tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes)
        span.end(end_time=end_ns)
        return span.get_span_context()

    @contextlib.contextmanager
    def batch_span(self, links: list[SpanContext], **attributes: Any) -> Iterator[Span | None]:
        """``engine batch``: its own trace, linked to every request span it served."""
        if self.tracer is None or not links:
            yield None
            return
        with self.tracer.start_as_current_span("engine batch", context=Context(), links=[Link(c) for c in links],
                                               attributes=attributes) as span:
            yield span


OFF = Tracing()


def now_ns() -> int:
    """Wall-clock nanoseconds, the unit OpenTelemetry span times take."""
    return time.time_ns()

