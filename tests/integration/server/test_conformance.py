"""Conformance with the Open Inference Protocol v2 as Triton and KServe implement it (issue 31),
over HTTP and gRPC against one real server, with Triton's own clients where they apply.

Each check names the behaviour it follows: the OIP v2 spec (kserve.github.io, "Open Inference
Protocol"), its binary tensor and classification extensions, Triton's server (http_server.cc,
grpc infer_handler.cc, core infer_request.cc, classification.cc; r25/r26) and perf_analyzer's
calls (model_parser.cc, inference_profiler.cc), or KServe's server (python/kserve). Error texts
are Triton's, with resserve's detail after them: scripts match on Triton's words.
Where resserve differs on purpose, docs/serving-and-protocols.md ("Differences from Triton") says
why; those cases are checked here as resserve answers them.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from resserve.config import ServerSettings
from resserve.perf.server_process import free_port
from tests.model_repo_fixtures import NUM_CLASSES
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test dependency")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is a dependency")
from tritonclient.utils import InferenceServerException

ROW = (1, 3, 224, 224)
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "tiny", tiny_onnx)
    settings = ServerSettings(model_repo=repo, grpc_port=free_port(), max_images_per_request=8)
    with serve_in_thread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def session(tiny_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def row(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(ROW).astype(np.float32)


def infer(server: RunningServer, body: dict[str, Any] | bytes, model: str = "tiny", **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=content, headers=headers, timeout=30)


def binary_body(x: np.ndarray, outputs: list[dict[str, Any]] | None = None, **parameters: Any) -> tuple[bytes, str]:
    header: dict[str, Any] = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                          "parameters": {"binary_data_size": x.nbytes}}]}
    if outputs is not None:
        header["outputs"] = outputs
    if parameters:
        header["parameters"] = parameters
    text = json.dumps(header).encode()
    return text + x.tobytes(), str(len(text))


def tensor_request(x: np.ndarray, model: str = "tiny") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def refused(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    return info.value


def error(response: httpx.Response) -> str:
    return str(response.json()["error"])


# 1. Classification extension: the output's own value ------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classification_reports_the_outputs_value_with_six_decimals(
        protocol: str, server: RunningServer, session: ort.InferenceSession) -> None:
    """Triton classification.cc: ``std::to_string(value) + ":" + index [+ ":" + label]``, the raw
    output value (a logit), top k best first; an index without a label: ``value:index``."""
    x = row(1)
    (logits,) = session.run(None, {"input": x})
    if protocol == "http":
        client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
        tensor = tritonclient_http.InferInput("input", list(ROW), "FP32")
        tensor.set_data_from_numpy(x)
        out = tritonclient_http.InferRequestedOutput("logits", class_count=3)
    else:
        client = grpcclient.InferenceServerClient(server.grpc_target)
        tensor = grpcclient.InferInput("input", list(ROW), "FP32")
        tensor.set_data_from_numpy(x)
        out = grpcclient.InferRequestedOutput("logits", class_count=3)
    got = client.infer("tiny", [tensor], outputs=[out]).as_numpy("logits")
    client.close()
    assert got.shape == (1, 3)
    best = np.argsort(-logits[0], kind="stable")[:3]
    for text, index in zip(got[0], best, strict=True):
        value, position, *label = text.decode().split(":", 2)
        assert int(position) == int(index) and re.fullmatch(r"-?\d+\.\d{6}", value), text
        assert float(value) == pytest.approx(float(logits[0, index]), abs=2e-6)  # the logit, not a probability
        assert len(label) <= 1 and all(label)  # ":label" only where the index has one


# 2. Model configuration, and perf_analyzer's calls -------------------------------------------
def test_model_config_over_grpc_is_httpss_triton_fields(server: RunningServer, stub: Any) -> None:
    """Triton grpc_service.proto ModelConfig: the same document as HTTP's config (its Triton
    fields); perf_analyzer stops with "failed to get model config" without it."""
    answer = stub.ModelConfig(service_pb2.ModelConfigRequest(name="tiny"), timeout=10)
    config = json_format.MessageToDict(answer.config, preserving_proto_field_name=True)
    http = httpx.get(f"{server.url}/v2/models/tiny/config", timeout=10).json()
    assert config["name"] == http["name"] == "tiny"
    assert config["max_batch_size"] == http["max_batch_size"] == 8
    assert config["input"][0]["name"] == http["input"][0]["name"] == "input"
    assert config["input"][0]["data_type"] == http["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["input"][0]["dims"]] == http["input"][0]["dims"] == [3, 224, 224]
    assert [int(d) for d in config["output"][0]["dims"]] == http["output"][0]["dims"] == [NUM_CLASSES]
    assert "dynamic_batching" in config and "sequence_batching" not in config
    assert http["resserve"]["engine"] == "onnxruntime"  # resserve's own configuration beside Triton's
    with pytest.raises(grpc.RpcError) as unknown:
        stub.ModelConfig(service_pb2.ModelConfigRequest(name="nope"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_perf_analyzers_call_sequence(server: RunningServer, stub: Any) -> None:
    """perf_analyzer (model_parser.cc, inference_profiler.cc): ModelMetadata, ModelConfig,
    ServerMetadata ("statistics" among the extensions), then per window ModelStatistics, ModelInfer
    calls, ModelStatistics; with no version asked it takes the version whose
    ``inference_stats.queue.count`` went up."""
    metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="tiny"), timeout=10)
    config = stub.ModelConfig(service_pb2.ModelConfigRequest(name="tiny", version=""), timeout=10).config
    assert config.max_batch_size > 0 and list(metadata.inputs[0].shape)[1:] == list(config.input[0].dims)
    assert {i.name for i in config.input} <= {i.name for i in metadata.inputs}  # "no metadata found for input"
    assert "statistics" in stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=10).extensions

    def queue_counts() -> dict[str, int]:
        stats = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="tiny", version=""), timeout=10)
        return {s.version: s.inference_stats.queue.count for s in stats.model_stats}

    before = queue_counts()
    x = np.zeros((1, *config.input[0].dims), np.float32)
    for _ in range(4):
        stub.ModelInfer(tensor_request(x), timeout=30)
    after = queue_counts()
    grew = [version for version, count in after.items() if count > before.get(version, 0)]
    assert grew == ["1"] and int(grew[0]) == 1  # perf_analyzer parses it with stoll


# 3. and 4. gRPC input rules, duplicates ---------------------------------------------------------
def test_grpc_refuses_contents_with_raw_input_contents(stub: Any) -> None:
    """Triton infer_handler.cc InferGRPCToInput, KServe validate_grpc_request: INVALID_ARGUMENT."""
    request = tensor_request(row())
    request.inputs[0].contents.fp32_contents.extend([0.0] * int(np.prod(ROW)))
    exc = refused(stub.ModelInfer, request)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents field must not be specified when using raw_input_contents for 'input' for model 'tiny'" \
        in exc.details()


@pytest.mark.parametrize("kind", ["input", "output"])
def test_duplicates_are_refused_on_both_protocols(kind: str, server: RunningServer, stub: Any) -> None:
    """Triton core AddOriginalInput / AddOriginalRequestedOutput: "<kind> '<name>' already exists
    in request", INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT)."""
    x = np.zeros(ROW, np.float32)
    data = x.ravel().tolist()
    tensor = {"name": "input", "shape": list(ROW), "datatype": "FP32", "data": data}
    body: dict[str, Any] = {"inputs": [tensor, tensor] if kind == "input" else [tensor]}
    request = tensor_request(x)
    if kind == "input":
        request.inputs.add(name="input", datatype="FP32", shape=list(ROW))
        request.raw_input_contents.append(x.tobytes())
    else:
        body["outputs"] = [{"name": "logits"}, {"name": "logits"}]
        request.outputs.add(name="logits")
        request.outputs.add(name="logits")
    http = infer(server, body)
    assert http.status_code == 400 and f"{kind} '{kind if kind == 'input' else 'logits'}' already exists in request" \
        in error(http)
    exc = refused(stub.ModelInfer, request)
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "already exists in request" in exc.details()


# 5. and 6. Binary tensor data extension ----------------------------------------------------------
def test_a_raw_binary_request_is_the_models_one_input(server: RunningServer, session: ort.InferenceSession) -> None:
    """Triton http_server.cc EVBufferToRawInput and core Normalize: with
    ``Inference-Header-Content-Length: 0`` the body is the one input, shape ``[1] + dims``, and every
    output comes back binary."""
    x = row(2)
    answer = infer(server, x.tobytes(), **{HEADER: "0", "content-type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    length = int(answer.headers[HEADER])
    header = json.loads(answer.content[:length])
    (output,) = header["outputs"]
    assert output["name"] == "logits" and output["parameters"]["binary_data_size"] == 4 * NUM_CLASSES
    logits = np.frombuffer(answer.content[length:], np.float32).reshape(output["shape"])
    (want,) = session.run(None, {"input": x})
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
    short = infer(server, x.tobytes()[:-4], **{HEADER: "0"})
    assert short.status_code == 400 and "input byte size mismatch for input 'input'" in error(short)


@pytest.mark.parametrize(("output", "binary"), [({"name": "logits"}, False),
                                                ({"name": "logits", "parameters": {"binary_data": False}}, False),
                                                ({"name": "logits", "parameters": {"binary_data": True}}, True)])
def test_a_listed_outputs_own_binary_data_wins(output: dict[str, Any], binary: bool, server: RunningServer) -> None:
    """Triton http_server.cc (CheckBinaryOutputData) and KServe InferResponse.to_rest: the
    request's ``binary_data_output`` only applies to outputs not listed; a listed one without
    ``binary_data`` is JSON."""
    body, length = binary_body(row(), outputs=[output], binary_data_output=True)
    answer = infer(server, body, **{HEADER: length})
    assert answer.status_code == 200, answer.text
    if binary:
        header = json.loads(answer.content[:int(answer.headers[HEADER])])
        assert header["outputs"][0]["parameters"]["binary_data_size"] == 4 * NUM_CLASSES
    else:
        assert HEADER not in answer.headers and len(answer.json()["outputs"][0]["data"]) == NUM_CLASSES
    unlisted, length = binary_body(row(), binary_data_output=True)
    assert HEADER in infer(server, unlisted, **{HEADER: length}).headers  # nobody listed: the request's default


# 7. Repository index, read-only --------------------------------------------------------------
def test_the_repository_index_is_served_and_control_stays_closed(server: RunningServer, stub: Any) -> None:
    """Triton serves RepositoryIndex whatever its model control mode (it only reads); load and
    unload need control (here: off, 403 / PERMISSION_DENIED)."""
    index = httpx.post(f"{server.url}/v2/repository/index", timeout=10)
    assert index.status_code == 200 and {"name": "tiny", "version": "1", "state": "READY"}.items() <= \
        index.json()[0].items()
    grpc_index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=10)
    assert [(m.name, m.state) for m in grpc_index.models] == [("tiny", "READY")]
    assert "model_repository" in httpx.get(f"{server.url}/v2", timeout=10).json()["extensions"]
    assert httpx.post(f"{server.url}/v2/repository/models/tiny/unload", timeout=10).status_code == 403
    exc = refused(stub.RepositoryModelUnload, service_pb2.RepositoryModelUnloadRequest(model_name="tiny"))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED


# 8. and 9. Status codes and Triton's words ------------------------------------------------------
BAD_REQUESTS = [
    # (what, body or raw bytes, headers, Triton's words)
    ("malformed JSON", b'{"inputs": [', {}, "failed to parse the request JSON buffer"),
    ("JSON nested too deep", b"[" * 100_000 + b"]" * 100_000, {}, "JSON nesting depth exceeds maximum allowed limit"),
    ("no inputs", {"inputs": []}, {}, "expected 1 inputs but got 0 inputs"),
    ("wrong datatype", {"inputs": [{"name": "input", "shape": list(ROW), "datatype": "INT32",
                                    "data": [0] * int(np.prod(ROW))}]}, {},
     "inference input 'input' data-type is 'INT32', but model 'tiny' expects 'FP32'"),
    ("shape", {"inputs": [{"name": "input", "shape": [1, 3, 100, 100], "datatype": "FP32",
                           "data": [0.0] * 30000}]}, {},
     "unexpected shape for input 'input' for model 'tiny'. Expected [-1,3,224,224], got [1,3,100,100]"),
    ("element count", {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0]}]}, {},
     "needs 2 elements"),
    ("unexpected input", {"inputs": [{"name": "bogus", "shape": list(ROW), "datatype": "FP32",
                                      "data": [0.0] * int(np.prod(ROW))}]}, {},
     "unexpected inference input 'bogus' for model 'tiny'"),
    ("unexpected output", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
                           "outputs": [{"name": "probs"}]}, {}, "unexpected inference output 'probs' for model 'tiny'"),
    ("header length out of range", b'{"inputs": []}', {HEADER: "999"}, "inference header size should be in range (0, 14), got: 999"),
]


@pytest.mark.parametrize(("what", "body", "headers", "words"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_a_wrong_request_is_400_in_tritons_words(what: str, body: Any, headers: dict[str, str], words: str,
                                                 server: RunningServer) -> None:
    """Triton maps INVALID_ARG to 400 (http_server.cc HttpCodeFromError); gateways, Triton's and
    KServe's clients read 400 as "the request is wrong, do not retry"."""
    answer = infer(server, body, **headers)
    assert answer.status_code == 400, (what, answer.status_code, answer.text)
    assert words in error(answer), (what, error(answer))


def test_unknown_models_and_versions_in_tritons_words(server: RunningServer, stub: Any) -> None:
    """Triton core ModelRepositoryManager::GetModel: "Request for unknown model: '<m>' is not found"
    and "... version <v> is not found", NOT_FOUND (404) on both protocols."""
    x = row()
    unknown = infer(server, {"inputs": []}, model="nope")
    assert unknown.status_code == 404 and error(unknown).startswith("Request for unknown model: 'nope' is not found")
    version = httpx.get(f"{server.url}/v2/models/tiny/versions/9", timeout=10)
    assert version.status_code == 404 and "Request for unknown model: 'tiny' version 9 is not found" in error(version)
    exc = refused(stub.ModelInfer, tensor_request(x, model="nope"))
    assert exc.code() == grpc.StatusCode.NOT_FOUND and "Request for unknown model: 'nope' is not found" in exc.details()
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert "Request for unknown model" in info.value.message()  # Triton's qa/L0_http checks this substring
    client.close()


def test_statistics_for_an_unserved_version_in_tritons_words(server: RunningServer, stub: Any) -> None:
    """Triton TRITONSERVER_ServerModelStatistics: INVALID_ARG, "requested model version is not
    available for model '<m>'" / "requested model '<m>' is not available"."""
    version = httpx.get(f"{server.url}/v2/models/tiny/versions/7/stats", timeout=10)
    assert version.status_code == 400 and "requested model version is not available for model 'tiny'" in error(version)
    model = httpx.get(f"{server.url}/v2/models/nope/stats", timeout=10)
    assert model.status_code == 400 and "requested model 'nope' is not available" in error(model)
    exc = refused(stub.ModelStatistics, service_pb2.ModelStatisticsRequest(name="tiny", version="7"))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_tritonclient_sees_400_for_a_wrong_request(server: RunningServer) -> None:
    """What a Triton user meets: InferenceServerException with status 400 and Triton's text."""
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    bad = tritonclient_http.InferInput("input", [1, 3, 100, 100], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [bad])
    assert info.value.status() == "400" and "unexpected shape for input 'input'" in info.value.message()
    client.close()


def test_bytes_images_still_classify_in_the_same_request_shape(server: RunningServer) -> None:
    """resserve's extra input (listed under ``resserve.alternative_inputs``): encoded images as
    BYTES, framed as the binary extension frames BYTES (4-byte little-endian length, then bytes)."""
    image = jpeg()
    framed = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(framed)}}],
                         "outputs": [{"name": "logits", "parameters": {"classification": 1}}]}).encode()
    answer = infer(server, header + framed, **{HEADER: str(len(header))})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["outputs"][0]["data"]) == 1
