"""Request ids and structured logs: the id is echoed or assigned on every answer, HTTP and gRPC, and
every log record written for the request carries it, as one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from resserve.perf.server_process import free_port, server_process
from resserve.config import ServerSettings
from resserve.logs import RequestContext, json_formatter
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "r18", model_onnx)
    with serve_in_thread(ServerSettings(model_repo=repo, grpc_port=free_port())) as running:
        yield running


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What resserve's loggers write, as JSON lines, while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContext())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _records_once_logged(stream: io.StringIO, *request_ids: str, within_s: float = 10.0) -> list[dict]:
    """The records, once each id's access line is written: the line follows the response's last
    byte, so a client can read its answer before the server's thread has logged it."""
    deadline = time.monotonic() + within_s
    while True:
        records = _records(stream)
        logged = {r.get("request_id") for r in records if r.get("logger") == "resserve.access"}
        if set(request_ids) <= logged or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def test_the_clients_id_is_echoed_and_logged(server: RunningServer, json_lines: io.StringIO) -> None:
    answer = httpx.post(f"{server.url}/v2/models/r18/classify", content=jpeg(), timeout=30,
                        headers={"content-type": "image/jpeg", "x-request-id": "order-42.a"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "order-42.a"
    refused = httpx.post(f"{server.url}/v2/models/nope/classify", content=jpeg(), timeout=30,
                         headers={"content-type": "image/jpeg", "x-request-id": "order-43"})
    assert refused.status_code == 404 and refused.headers["x-request-id"] == "order-43"
    records = _records_once_logged(json_lines, "order-42.a", "order-43")
    (line,) = [r for r in records if r.get("request_id") == "order-42.a" and r["logger"] == "resserve.access"]
    assert line["status"] == 200 and line["path"] == "/v2/models/r18/classify" and line["method"] == "POST"
    assert line["duration_ms"] > 0 and line["level"] == "INFO" and line["timestamp"].endswith("Z")
    assert any(r.get("request_id") == "order-43" and r.get("status") == 404 for r in records)
    assert not any(r.get("path") == "/v2/health/ready" for r in records)  # probes stay out of the log


@pytest.mark.parametrize("given", [None, "x" * 129, "two words", "back\\slash", '"quoted"'])
def test_a_missing_or_unsafe_id_is_replaced(server: RunningServer, given: str | None) -> None:
    headers = {} if given is None else {"x-request-id": given}
    answer = httpx.get(f"{server.url}/v2", headers=headers, timeout=10)
    assert answer.status_code == 200 and HEX_ID.fullmatch(answer.headers["x-request-id"])


def test_grpc_calls_carry_the_id_too(server: RunningServer, json_lines: io.StringIO) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ServerMetadata.with_call(service_pb2.ServerMetadataRequest(), timeout=10,
                                                metadata=(("x-request-id", "grpc-7"),))
        assert dict(call.initial_metadata())["x-request-id"] == "grpc-7"
        _, call = stub.ServerLive.with_call(service_pb2.ServerLiveRequest(), timeout=10)
        assert HEX_ID.fullmatch(dict(call.initial_metadata())["x-request-id"])


def test_serve_writes_one_json_object_per_line(model_onnx: Path, tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "r18", model_onnx)
    command = [sys.executable, "-m", "resserve.cli", "--log-format", "json", "serve", "--model-repo",
               str(tmp_path / "repo"), "--host", "127.0.0.1", "--port", "{port}"]
    with server_process(None, command=command, log_dir=tmp_path, kill=False) as server:
        httpx.post(f"{server.url}/v2/models/r18/classify", content=jpeg(), timeout=30,
                   headers={"content-type": "image/jpeg", "x-request-id": "e2e-1"})
    lines = [line for line in server.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    loggers = {r["logger"] for r in records}
    assert "uvicorn.error" in loggers and "resserve.access" in loggers  # uvicorn's own lines too
    assert any(r.get("request_id") == "e2e-1" and r.get("status") == 200 for r in records)
    # uvicorn's records carry a coloured copy of their message (color_message): never written
    assert any(r["logger"] == "uvicorn.error" and r["message"].startswith("Started server process") for r in records)
    assert all("color_message" not in r for r in records) and "\x1b[" not in server.output()
