"""Security of a real server on 127.0.0.1: API keys on the inference and metadata endpoints, blank
secrets refused at start, and answers that show no paths, no fault settings and no engine internals."""

from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from resserve.perf.server_process import free_port, serve_command
from resserve.config import ServerSettings
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test dependency")
from tritonclient.utils import InferenceServerException

OLD_KEY, NEW_KEY = "old-key-0123", "new-key-4567"
CONTROL_TOKEN = "control-s3cret"
SECRET_CALIBRATION = "/srv/secret-datasets/calibration"
JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def repo(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("secure_repo")
    write_model(root, "r18", model_onnx, calibration={"images": SECRET_CALIBRATION})
    write_model(root, "flaky", model_onnx, fault_injection={"fail_every_n_batches": 1},
                dynamic_batching={"max_queue_delay_ms": 0})
    return root


@pytest.fixture(scope="module")
def secured(repo: Path) -> Iterator[RunningServer]:
    settings = ServerSettings(model_repo=repo, api_keys=[OLD_KEY, NEW_KEY], control_token=CONTROL_TOKEN)
    with serve_in_thread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def default(repo: Path) -> Iterator[RunningServer]:
    """No API keys (the default): everything here answers anyone."""
    with serve_in_thread(ServerSettings(model_repo=repo)) as running:
        yield running


def infer_body() -> dict[str, Any]:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(jpeg()).decode()]}]}


def call(server: RunningServer, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    headers = dict(headers or {})
    if path.endswith("/classify"):
        return httpx.post(f"{server.url}{path}", content=jpeg(), headers={**JPEG, **headers}, timeout=30)
    if path.endswith("/infer"):
        return httpx.post(f"{server.url}{path}", json=infer_body(), headers=headers, timeout=30)
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30)


GUARDED = [
    ("GET", "/v2"),
    ("GET", "/v2/models/r18"),
    ("GET", "/v2/models/r18/versions/1"),
    ("GET", "/v2/models/r18/ready"),
    ("GET", "/v2/models/r18/config"),
    ("POST", "/v2/models/r18/infer"),
    ("POST", "/v2/models/r18/versions/1/infer"),
    ("POST", "/v2/models/r18/classify"),
    ("GET", "/v2/models/stats"),  # statistics say which models exist and how busy they are
    ("GET", "/v2/models/r18/stats"),
    ("GET", "/v2/models/r18/versions/1/stats"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
]


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_inference_and_metadata_need_a_key(secured: RunningServer, method: str, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"},
                    {"authorization": f"Bearer {CONTROL_TOKEN}"}, {"authorization": "Bearer"}):
        refused = call(secured, method, path, headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "API key" in refused.json()["error"]
    # Either key (rotation: old and new at once), in either header.
    for headers in ({"authorization": f"Bearer {OLD_KEY}"}, {"x-api-key": NEW_KEY}):
        answered = call(secured, method, path, headers)
        assert answered.status_code == 200, (headers, answered.text)


def test_unknown_models_do_not_answer_without_a_key(secured: RunningServer) -> None:
    assert call(secured, "GET", "/v2/models/nope").status_code == 401  # no oracle of which models exist
    assert call(secured, "GET", "/v2/models/nope", {"x-api-key": OLD_KEY}).status_code == 404


def test_probes_and_metrics_stay_open_and_control_keeps_its_token(secured: RunningServer) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(f"{secured.url}{path}").status_code == 200, path
    load = f"{secured.url}/v2/repository/models/nope/load"
    assert httpx.post(load, headers={"x-api-key": OLD_KEY}).status_code == 401  # a key is no control token
    denied = httpx.post(load, headers={"authorization": f"Bearer {OLD_KEY}"})
    assert denied.status_code == 401 and "repository control" in denied.json()["error"]
    assert httpx.post(load, headers={"authorization": f"Bearer {CONTROL_TOKEN}"}).status_code == 404  # let in
    # The index only reads: a key opens it, as it opens model metadata; none is refused.
    index = f"{secured.url}/v2/repository/index"
    assert httpx.post(index).status_code == 401
    assert httpx.post(index, headers={"x-api-key": OLD_KEY}).status_code == 200
    # Refusals are counted like any answer.
    assert call(secured, "POST", "/v2/models/r18/classify").status_code == 401
    assert secured.metric("resserve_http_requests_total", {"model": "", "endpoint": "classify", "status": "401"}) > 0


def test_refused_before_the_body_is_read(secured: RunningServer) -> None:
    """Headers announce a 1 MB body that never comes: the 401 arrives anyway."""
    port = int(secured.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v2/models/r18/classify HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_tritonclient_sends_the_key_as_a_header(secured: RunningServer) -> None:
    client = tritonclient_http.InferenceServerClient(secured.url.removeprefix("http://"))
    auth = {"Authorization": f"Bearer {NEW_KEY}"}
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    assert client.get_model_metadata("r18", headers=auth)["name"] == "r18"
    image = tritonclient_http.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([jpeg()], dtype=np.object_), binary_data=True)
    top = tritonclient_http.InferRequestedOutput("logits", class_count=2)
    assert client.infer("r18", [image], outputs=[top], headers=auth).as_numpy("logits").shape == (1, 2)
    with pytest.raises(InferenceServerException, match="API key"):
        client.infer("r18", [image], outputs=[top])
    with pytest.raises(InferenceServerException, match="API key"):
        client.get_model_metadata("r18")
    client.close()


# ---- What answers show ----------------------------------------------------------------------------


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def assert_no_paths(response: httpx.Response, *folders: Path | str) -> None:
    assert response.status_code == 200, response.text
    for text in strings(response.json()):
        assert not text.startswith(("/", "~")) and "\\" not in text, text
    for folder in folders:
        assert str(folder) not in response.text


def test_model_metadata_shows_no_filesystem_paths(default: RunningServer, repo: Path, model_onnx: Path) -> None:
    response = httpx.get(f"{default.url}/v2/models/r18")
    assert_no_paths(response, repo, model_onnx.parent)
    facts = response.json()["resserve"]
    assert facts["engine"]["engine"] == "onnxruntime" and facts["max_batch_size"] == 8
    assert "/" not in facts["engine"]["path"]  # the artifact by file name


def test_model_config_shows_no_paths_and_no_fault_injection(default: RunningServer, repo: Path,
                                                            model_onnx: Path) -> None:
    response = httpx.get(f"{default.url}/v2/models/r18/config")
    assert_no_paths(response, repo, model_onnx.parent, SECRET_CALIBRATION)
    config = response.json()
    own = config["resserve"]
    assert own["source"]["onnx"] == model_onnx.name
    assert "images" not in own["calibration"]
    # What a client needs is still there: Triton's fields, and resserve's own.
    assert config["name"] == "r18" and config["max_batch_size"] == 8 and config["platform"]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 64
    assert own["dynamic_batching"]["max_queue_size"] == 64 and own["engine"] == "onnxruntime"

    flaky = httpx.get(f"{default.url}/v2/models/flaky/config")
    assert_no_paths(flaky, repo, model_onnx.parent)
    assert "fault_injection" not in flaky.json() and "fail_every" not in flaky.text


def test_engine_failure_says_what_failed_but_not_the_engine_text(default: RunningServer,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="resserve")
    for response in (call(default, "POST", "/v2/models/flaky/classify"),
                     call(default, "POST", "/v2/models/flaky/infer")):
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert "flaky" in error and "engine failed" in error and "server log" in error
        assert "injected" not in error and "batch 1" not in error
    # The log keeps the detail.
    assert "injected engine failure" in caplog.text


# ---- Blank secrets refused at start ---------------------------------------------------------------


@pytest.mark.parametrize(("var", "value", "message"), [
    ("RESSERVE_CONTROL_TOKEN", "", "RESSERVE_CONTROL_TOKEN is set but blank"),
    ("RESSERVE_CONTROL_TOKEN", "   ", "RESSERVE_CONTROL_TOKEN is set but blank"),
    ("RESSERVE_API_KEYS", "", "blank keys are refused"),
    ("RESSERVE_API_KEYS", "k1,", "blank keys are refused"),
])
def test_serve_refuses_blank_secrets(tmp_path: Path, var: str, value: str, message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESSERVE_")}
    env[var] = value
    done = subprocess.run(serve_command(tmp_path, free_port()), env=env, capture_output=True, text=True,
                          timeout=120)
    output = " ".join((done.stdout + done.stderr).split())  # the console wraps long lines
    assert done.returncode != 0
    assert "bad server settings" in output and message in output, output[-2000:]
    assert "k1" not in output


@pytest.mark.parametrize(("settings", "status"), [
    ({}, 403),  # control disabled, no keys
    ({"api_keys": [OLD_KEY]}, 401),  # no key offered
    ({"control_token": CONTROL_TOKEN}, 401),  # no token offered
])
async def test_control_stays_closed_behind_a_root_path(tmp_path: Path, settings: dict[str, Any], status: int) -> None:
    """Behind a proxy prefix (uvicorn --root-path, a Mount) the router strips root_path; the access
    check must classify the same path, or /prefix/v2/repository/... would pass as inference."""
    from resserve.metrics import Metrics
    from resserve.server.app import create_app

    app = create_app(ServerSettings(model_repo=tmp_path, **settings), Metrics())
    transport = httpx.ASGITransport(app=app, root_path="/prefix")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/prefix/v2/repository/models/r18/load", "/prefix/v2/repository/models/r18/unload"):
            assert (await client.post(path)).status_code == status, path
        headers = {"authorization": f"Bearer {OLD_KEY}"}  # an API key never opens control with a token set
        if "control_token" in settings:
            assert (await client.post("/prefix/v2/repository/models/r18/load", headers=headers)).status_code == 401


async def test_a_header_flood_is_431_before_any_key_is_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack (issue 30): 4.5 million X-API-Key lines were each hashed (6.6 s) before the 431
    check, which sat inside the access middleware. The header limit is the outermost layer now."""
    from resserve.metrics import Metrics
    from resserve.server import access_policy
    from resserve.server.app import create_app

    def hashed(*_args: object) -> bool:
        raise AssertionError("a key was hashed before the header limit refused the request")

    monkeypatch.setattr(access_policy.ApiKeys, "_valid", hashed)
    app = create_app(ServerSettings(model_repo=tmp_path, api_keys=[OLD_KEY], max_header_bytes=16 * 1024), Metrics())
    headers = [("x-api-key", f"guess-{i:06d}") for i in range(2000)]  # about 36 kB of headers
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        refused = await client.post("/v2/models/r18/infer", headers=headers, content=b"{}")
    assert refused.status_code == 431 and "exceed the limit of 16384" in refused.json()["error"]


async def test_an_unauthenticated_traceparent_starts_no_trace(tmp_path: Path) -> None:
    """A client's traceparent with sampled=01 chose the trace id of an unauthenticated request and
    forced its export (issue 30): trace context is read only after the access check."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from resserve.metrics import Metrics
    from resserve.server.app import create_app

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(ServerSettings(model_repo=tmp_path, api_keys=[OLD_KEY]), Metrics(), tracer_provider=provider)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/v2", headers=parent)).status_code == 401
        assert not exporter.get_finished_spans()
        answered = await client.get("/v2", headers={**parent, "x-api-key": OLD_KEY})
    assert answered.status_code == 200
    assert [f"{s.context.trace_id:032x}" for s in exporter.get_finished_spans()] == [trace_id]
    provider.shutdown()
