"""OpenTelemetry spans from a real server on 127.0.0.1, exported in memory: the SERVER span joins
the client's W3C trace, each step is its child, and one engine batch links to every request it
served."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.utils import InferenceServerException

from resserve.perf.server_process import free_port
from resserve.config import ServerSettings
from resserve.logs import RequestContext, json_formatter
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory,
           exporter: InMemorySpanExporter) -> Iterator[RunningServer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "r18", model_onnx)
    # "pair" dispatches only once two rows wait (or after 10 s): two requests share a batch.
    write_model(repo, "pair", model_onnx, max_batch_size=2, dynamic_batching={"max_queue_delay_ms": 10_000, "default_timeout_ms": 60_000})
    write_model(repo, "flaky", model_onnx, fault_injection={"fail_every_n_batches": 1},
                dynamic_batching={"max_queue_delay_ms": 0})
    with serve_in_thread(ServerSettings(model_repo=repo, models=["r18", "pair", "flaky"], first_models=[],
                                        grpc_port=free_port()),
                         tracer_provider=provider) as running:
        yield running
    provider.shutdown()


def _server_spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The SERVER spans once ``count`` have ended (a span ends just after its response is sent)."""
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def _classify(server: RunningServer, model: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/classify", content=jpeg(320, 240), timeout=90,
                      headers={"content-type": "image/jpeg", **headers})


def test_a_request_joins_the_clients_trace_with_a_span_per_step(server: RunningServer,
                                                                 exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    answer = _classify(server, "r18", traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01", **{"x-request-id": "trace-me"})
    assert answer.status_code == 200
    [root] = _server_spans(exporter, 1)
    assert root.name == "POST /v2/models/{name}/classify"
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and f"{root.parent.span_id:016x}" == PARENT_ID
    assert root.attributes is not None
    assert root.attributes["request_id"] == "trace-me"
    assert root.attributes["model"] == "r18" and root.attributes["http.response.status_code"] == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    for step in ("read", "preprocess", "queue wait", "encode"):
        assert spans[step].parent is not None and spans[step].parent.span_id == root.context.span_id, step
    assert spans["decode"].parent is not None and spans["decode"].parent.span_id == spans["preprocess"].context.span_id
    assert spans["preprocess"].attributes is not None
    assert (spans["preprocess"].attributes["image_width"], spans["preprocess"].attributes["image_height"]) == (320, 240)
    batch = spans["engine batch"]
    assert batch.attributes is not None
    assert batch.attributes["model"] == "r18" and batch.attributes["batch_size"] == 1
    assert [link.context.span_id for link in batch.links] == [root.context.span_id]


def test_one_engine_batch_links_to_both_requests_it_served(server: RunningServer,
                                                          exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(_classify(server, "pair"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200]
    roots = _server_spans(exporter, 2)
    assert len(roots) == 2 and roots[0].context.trace_id != roots[1].context.trace_id
    [batch] = [s for s in exporter.get_finished_spans() if s.name == "engine batch"]
    assert batch.attributes is not None and batch.attributes["batch_size"] == 2
    assert {link.context.span_id for link in batch.links} == {r.context.span_id for r in roots}


def test_errors_are_traced_with_their_status(server: RunningServer, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    assert httpx.post(f"{server.url}/v2/models/nope/classify", content=b"x", timeout=30,
                      headers={"content-type": "image/jpeg"}).status_code == 404
    [root] = _server_spans(exporter, 1)
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 404


def test_a_grpc_call_joins_the_clients_trace_with_the_same_steps(server: RunningServer,
                                                                 exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    client = grpcclient.InferenceServerClient(server.grpc_target)
    image = grpcclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([jpeg(320, 240)], dtype=np.object_))
    client.infer("r18", [image], headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "x-request-id": "grpc-trace"})
    [root] = _server_spans(exporter, 1)
    assert root.name == "inference.GRPCInferenceService/ModelInfer"
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and f"{root.parent.span_id:016x}" == PARENT_ID
    assert root.attributes is not None
    assert root.attributes["request_id"] == "grpc-trace" and root.attributes["model"] == "r18"
    assert root.attributes["rpc.system"] == "grpc" and root.attributes["rpc.grpc.status_code"] == 0
    spans = {s.name: s for s in exporter.get_finished_spans()}
    for step in ("preprocess", "queue wait"):
        assert spans[step].parent is not None and spans[step].parent.span_id == root.context.span_id, step
    assert [link.context.span_id for link in spans["engine batch"].links] == [root.context.span_id]


def test_a_grpc_refusal_is_traced_with_its_code_and_is_not_a_server_error(server: RunningServer,
                                                                          exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    client = grpcclient.InferenceServerClient(server.grpc_target)
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("nope")
    assert refused.value.status() == "StatusCode.NOT_FOUND"
    [root] = _server_spans(exporter, 1)
    assert root.name == "inference.GRPCInferenceService/ModelMetadata"
    assert root.attributes is not None and root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert root.status.status_code == StatusCode.UNSET and not root.events  # the client's mistake, no exception


@contextlib.contextmanager
def _json_log(logger_name: str) -> Iterator[io.StringIO]:
    """JSON log lines of ``logger_name`` (INFO and up, with request and trace ids) while the block runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContext())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def test_the_access_line_names_the_requests_trace(server: RunningServer, exporter: InMemorySpanExporter) -> None:
    with _json_log("resserve.access") as stream:
        exporter.clear()
        assert _classify(server, "r18", **{"x-request-id": "traced-access"}).status_code == 200
        [root] = _server_spans(exporter, 1)
        deadline = time.monotonic() + 10
        while "traced-access" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    [line] = [json.loads(t) for t in stream.getvalue().splitlines() if "traced-access" in t]
    assert line["trace_id"] == f"{root.context.trace_id:032x}" and line["span_id"] == f"{root.context.span_id:016x}"


def test_an_engine_failure_is_logged_inside_its_batch_span(server: RunningServer,
                                                           exporter: InMemorySpanExporter) -> None:
    """The engine batch span is current while the engine runs, so the failure's log line leads to it."""
    with _json_log("resserve.serving.batching") as stream:
        exporter.clear()
        assert _classify(server, "flaky").status_code == 500
        _server_spans(exporter, 1)
    [line] = [json.loads(t) for t in stream.getvalue().splitlines() if "engine failed on a batch" in t]
    [batch] = [s for s in exporter.get_finished_spans() if s.name == "engine batch"]
    assert batch.attributes["model"] == "flaky"
    assert line["trace_id"] == f"{batch.context.trace_id:032x}" and line["span_id"] == f"{batch.context.span_id:016x}"
