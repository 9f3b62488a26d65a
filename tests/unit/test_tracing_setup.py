"""Tracing is off unless OTEL_TRACES_EXPORTER asks for it; then the SDK's resource variables apply."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import TracerProvider

from resserve.config import ServerSettings
from resserve.server.app import create_app
from resserve.server.middleware.request_spans import TracingMiddleware
from resserve.tracing import OFF, tracer_provider_from_env


@pytest.mark.parametrize("environ", [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " "}])
def test_off_without_an_exporter(environ: dict[str, str]) -> None:
    assert tracer_provider_from_env(environ) is None


def test_off_costs_nothing_per_request(tmp_path: object) -> None:
    assert not OFF.enabled and OFF.current() is None
    with OFF.span("read") as span:
        assert span is None
    app = create_app(ServerSettings(model_repo=tmp_path))
    assert TracingMiddleware not in [m.cls for m in app.user_middleware]


def test_console_exporter_and_the_default_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes[SERVICE_NAME] == "resserve"
    provider.shutdown()


def test_otlp_exporter_and_the_sdks_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "resserve-canary")  # read by the SDK's Resource.create
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "resserve-canary"})
    assert provider is not None and provider.resource.attributes[SERVICE_NAME] == "resserve-canary"
    provider.shutdown()


def test_an_unknown_exporter_is_refused() -> None:
    with pytest.raises(ValueError, match="otlp, console and none"):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_log_records_carry_the_active_span() -> None:
    import io
    import json
    import logging

    from resserve.logs import RequestContext, json_formatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContext())
    logger = logging.getLogger("resserve.test_tracing")
    logger.addHandler(handler)
    logger.propagate = False
    provider = TracerProvider()
    try:
        logger.warning("outside")
        with provider.get_tracer("test").start_as_current_span("inside") as span:
            logger.warning("inside")
        context = span.get_span_context()
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert (inside["trace_id"], inside["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
