"""Schema-driven fuzzing of the live HTTP API: schemathesis reads the server's own OpenAPI document
(which describes the image and OIP request bodies) and sends valid and invalid requests to every
operation. Property: no 5xx other than 503/504, and the server is alive and ready afterwards.

Bounded: ``RESSERVE_SCHEMA_EXAMPLES`` examples per operation and mode (CI: 40), loopback only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from resserve.config import ServerSettings
from tests.server_harness import RunningServer, serve_in_thread, write_model

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test dependency")
from schemathesis import GenerationMode

EXAMPLES = int(os.environ.get("RESSERVE_SCHEMA_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "r18", model_onnx)
    # Control endpoints enabled, so the fuzzer reaches their code too (load/unload of any name).
    with serve_in_thread(ServerSettings(model_repo=repo, allow_repository_control=True)) as running:
        yield running


def operations(url: str) -> list:  # type: ignore[type-arg]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    # Unloading the one model would turn the rest of the run into 503s: fuzz it last.
    return sorted(found, key=lambda op: "unload" in op.path)


def test_openapi_describes_the_request_bodies(server: RunningServer) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    classify = doc["paths"]["/v2/models/{name}/classify"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "multipart/form-data", "application/octet-stream"} <= set(classify)
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert infer["application/json"]["schema"]["required"] == ["inputs"]


def fuzzer(url: str, operation, mode: GenerationMode, codes: set[int]):  # type: ignore[no-untyped-def]
    """A hypothesis test of one operation: each example sent to the live server."""
    label = f"{operation.method.upper()} {operation.path}"

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        if "name" in (case.path_parameters or {}) and case.path_parameters["name"] != "r18" \
                and operation.path.endswith(("/infer", "/classify")):
            case.path_parameters["name"] = "r18"  # most examples should reach the model's pipeline
        if operation.path.endswith(("/load", "/unload")):
            case.path_parameters["name"] = "no-such-model"  # keep r18 loaded for the rest
        response = case.call(base_url=url, timeout=30)
        codes.add(response.status_code)
        # 503 (overload, Retry-After) and 504 (a 1 ms deadline) are answers, not failures.
        assert response.status_code < 500 or response.status_code in (503, 504), (
            f"{label}: {response.status_code} {response.text[:300]} for {case.as_curl_command()}")

    return fuzz


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_from_any_operation(server: RunningServer, mode: GenerationMode) -> None:
    seen: dict[str, set[int]] = {}
    for operation in operations(server.url):
        label = f"{operation.method.upper()} {operation.path}"
        try:
            fuzzer(server.url, operation, mode, seen.setdefault(label, set()))()
        except Unsatisfiable:  # nothing to make invalid (a GET without parameters): nothing to send
            assert mode is GenerationMode.NEGATIVE, label
    # The bodies were reached: some infer and classify requests got past parsing to a model answer.
    assert 200 in seen["POST /v2/models/{name}/classify"] | seen["POST /v2/models/{name}/infer"] \
        or mode is GenerationMode.NEGATIVE
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
