"""Open Inference Protocol v2 against the real server, including Triton's own Python client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from resserve.config import ServerSettings
from resserve.contract import imagenet_contract
from resserve.preprocess import preprocess
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test dependency")
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "r18", model_onnx)
    write_model(repo, "tiny_queue", model_onnx, max_batch_size=1,
                dynamic_batching={"max_queue_delay_ms": 0, "max_queue_size": 1})
    with serve_in_thread(ServerSettings(model_repo=repo)) as running:
        yield running


@pytest.fixture(scope="module")
def session(model_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_onnx), providers=["CPUExecutionProvider"])


def test_tritonclient_round_trip_with_images_and_tensors(server: RunningServer,
                                                         session: ort.InferenceSession) -> None:
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("r18")
    meta = client.get_model_metadata("r18")
    assert meta["inputs"][0]["name"] == "input" and meta["outputs"][0]["name"] == "logits"

    # Encoded images as a BYTES tensor, with the classification extension.
    images = [jpeg(seed=1), jpeg(seed=2)]
    inp = tritonclient_http.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    out = tritonclient_http.InferRequestedOutput("logits", binary_data=True, class_count=3)
    result = client.infer("r18", [inp], outputs=[out])
    top3 = result.as_numpy("logits")
    assert top3.shape == (2, 3)
    batch = np.stack([preprocess(d, imagenet_contract()) for d in images])
    (want,) = session.run(None, {"input": batch})
    for row, entries in zip(want, top3, strict=True):
        indices = [int(e.decode().split(":")[1]) for e in entries]
        assert indices == list(np.argsort(-row)[:3])

    # A preprocessed FP32 tensor, logits back in binary.
    tensor = tritonclient_http.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    logits = client.infer("r18", [tensor], model_version="1").as_numpy("logits")
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))

    # Errors arrive as InferenceServerException with the server's message.
    bad = tritonclient_http.InferInput("input", [1, 3, 100, 100], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(InferenceServerException, match="unexpected shape for input 'input' for model 'r18'"):
        client.infer("r18", [bad])
    client.close()


def test_json_tensor_request(server: RunningServer, session: ort.InferenceSession) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}
    response = httpx.post(f"{server.url}/v2/models/r18/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["model_name"] == "r18" and doc["outputs"][0]["datatype"] == "BYTES"
    (want,) = session.run(None, {"input": x})
    value, index = doc["outputs"][0]["data"][0].split(":")[:2]
    assert int(index) == int(np.argmax(want))
    # Triton's classification extension reports the output's value (a logit here), not a softmax.
    assert float(value) == pytest.approx(float(want[0, int(index)]), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}, "unexpected shape"),
        ({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0]}]}, "needs 2 elements"),
        ({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": ["NaN"]}]}, ""),
        ({"inputs": [{"name": "input", "shape": [1], "datatype": "INT64", "data": [1]}]}, ""),
        ({"inputs": []}, "non-empty"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
          "outputs": [{"name": "probs"}]}, "unexpected inference output 'probs'"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
          "outputs": [{"name": "logits", "parameters": {"classification": -1}}]}, "classification"),
    ],
)
def test_bad_oip_requests_are_400(server: RunningServer, body: dict, message: str) -> None:
    response = httpx.post(f"{server.url}/v2/models/r18/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_bytes_input_that_is_not_an_image_is_400(server: RunningServer) -> None:
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}
    response = httpx.post(f"{server.url}/v2/models/r18/infer", json=body, timeout=30)
    assert response.status_code == 400


async def test_full_queue_answers_503_with_retry_after(server: RunningServer) -> None:
    x = np.zeros((1, 3, 224, 224), np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}]}
    import json

    header = json.dumps(body).encode()
    payload = header + x.tobytes()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        responses = await asyncio.gather(*(
            client.post("/v2/models/tiny_queue/infer", content=payload, headers=headers) for _ in range(24)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and 503 in statuses, statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert int(rejected.headers["retry-after"]) >= 1 and "queue full" in rejected.json()["error"]
    assert (await asyncio.to_thread(httpx.post, f"{server.url}/v2/models/tiny_queue/infer", content=payload,
                                    headers=headers, timeout=30)).status_code == 200
