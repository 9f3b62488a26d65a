"""Triton's statistics extension against the real server: tritonclient's own parsers (HTTP JSON and
the gRPC message) read it, and its counts are the requests this test sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from resserve.perf.server_process import free_port
from resserve.config import ServerSettings
from resserve.contract import imagenet_contract
from resserve.preprocess import preprocess
from resserve.serving.statistics import ModelStatistics
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model


@pytest.fixture(scope="module")
def server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "r18", model_onnx, dynamic_batching={"max_queue_delay_ms": 20})
    write_model(repo, "idle", model_onnx)
    with serve_in_thread(ServerSettings(model_repo=repo, grpc_port=free_port())) as running:
        yield running


def _send(server: RunningServer) -> dict[str, int]:
    """Requests of every kind on r18; what was sent."""
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    images = httpclient.InferInput("image", [3], "BYTES")
    images.set_data_from_numpy(np.array([jpeg(seed=i) for i in range(3)], dtype=np.object_), binary_data=True)
    http.infer("r18", [images])  # one request of 3 images
    batch = np.stack([preprocess(jpeg(seed=5), imagenet_contract())] * 2)
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    http.infer("r18", [tensor])  # one tensor request of 2 rows
    for seed in range(2):  # two single images through /classify
        assert httpx.post(f"{server.url}/v2/models/r18/classify", content=jpeg(seed=seed),
                          headers={"content-type": "image/jpeg"}, timeout=30).status_code == 200
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    one = grpcclient.InferInput("image", [1], "BYTES")
    one.set_data_from_numpy(np.array([jpeg(seed=9)], dtype=np.object_))
    grpc.infer("r18", [one])  # one over gRPC
    broken = httpclient.InferInput("image", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException):
        http.infer("r18", [broken])  # one failure
    return {"success": 5, "fail": 1, "images": 3 + 2 + 2 + 1, "items": 3 + 1 + 2 + 1}


def test_counts_are_the_requests_sent(server: RunningServer) -> None:
    sent = _send(server)
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    (stats,) = client.get_inference_statistics("r18")["model_stats"]
    assert stats["name"] == "r18" and stats["version"] == "1"
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == sent["success"] and inference["fail"]["count"] == sent["fail"]
    assert stats["inference_count"] == sent["images"]
    for stage in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[stage]["ns"] > 0, stage
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[stage]["count"] == sent["items"], stage
    batches = stats["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == stats["execution_count"] > 0
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == sent["images"]
    assert stats["last_inference"] > 0

    # The version form, the all-models form, and gRPC's message say the same.
    assert client.get_inference_statistics("r18", "1")["model_stats"] == [stats]
    every = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in every] == ["idle", "r18"] and every[0]["inference_count"] == 0
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    message = grpc.get_inference_statistics("r18")
    assert message.model_stats[0].inference_stats.success.count == sent["success"]
    assert message.model_stats[0].execution_count == stats["execution_count"]


def test_unknown_models_and_versions_are_400_in_tritons_words(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="requested model 'nope' is not available") as model:
        client.get_inference_statistics("nope")
    assert model.value.status() == "400"
    with pytest.raises(InferenceServerException, match="requested model version is not available for model 'r18'"):
        client.get_inference_statistics("r18", "7")
    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    with pytest.raises(InferenceServerException) as missing:
        grpc.get_inference_statistics("nope")
    assert str(missing.value.status()) == "StatusCode.INVALID_ARGUMENT"


def test_the_document_is_tritons_message() -> None:
    stats = ModelStatistics("m", "1")
    stats.preprocessed(0.002)
    stats.batch_done([1, 2], [0.001, 0.003], concat_s=0.0003, infer_s=0.01, output_s=0.00003)
    stats.request_done(True, 0.02, 3)
    document = {"model_stats": [stats.as_dict()]}
    message = json_format.ParseDict(document, service_pb2.ModelStatisticsResponse())  # no unknown field
    assert message.model_stats[0].batch_stats[0].batch_size == 3
    assert message.model_stats[0].inference_stats.compute_infer.count == 2
    assert abs(message.model_stats[0].inference_stats.compute_input.ns - 2_300_000) <= 2  # float seconds
