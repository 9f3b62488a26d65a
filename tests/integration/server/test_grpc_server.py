"""Open Inference Protocol v2 over gRPC against the real server, with Triton's own clients
(``tritonclient.grpc`` and ``tritonclient.grpc.aio``) and gRPC's health-check stub."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from resserve.perf.server_process import free_port
from resserve.config import ServerSettings
from resserve.contract import imagenet_contract
from resserve.preprocess import preprocess
from tests.model_repo_fixtures import NUM_CLASSES
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

TOKEN = "control-secret"
KEY = "api-key-1"
SERVICE = "inference.GRPCInferenceService"
# Every batch of these models sleeps this long in the engine: a call is surely still running
# (queue full, deadline, drain) without depending on how fast the machine is.
HANG = {"hang_every_n_batches": 1, "hang_s": 1.5}


@pytest.fixture(scope="module")
def model_onnx(tiny_onnx: Path) -> Path:
    """The tiny classifier: builds and runs in milliseconds."""
    return tiny_onnx


@pytest.fixture(scope="module")
def server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "tiny", model_onnx)
    write_model(repo, "tiny_queue", model_onnx, max_batch_size=1, fault_injection=HANG,
                dynamic_batching={"max_queue_delay_ms": 0, "max_queue_size": 1})
    write_model(repo, "slow", model_onnx, max_batch_size=1, fault_injection=HANG)
    write_model(repo, "tiny_room", model_onnx, max_batch_size=1, fault_injection=HANG,
                dynamic_batching={"max_queue_delay_ms": 0, "max_queue_size": 3})  # 4 places, 3 a request
    write_model(repo, "flaky", model_onnx, fault_injection={"fail_every_n_batches": 1})
    settings = ServerSettings(model_repo=repo, grpc_port=free_port(), max_images_per_request=4,
                              control_token=TOKEN, max_body_bytes=4 * 1024 * 1024)
    with serve_in_thread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def session(model_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_onnx), providers=["CPUExecutionProvider"])


def _code(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_health_metadata_and_inference_with_tritonclient(server: RunningServer,
                                                         session: ort.InferenceSession) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert not client.is_model_ready("no-such-model")
    assert "classification" in client.get_server_metadata().extensions
    meta = client.get_model_metadata("tiny")
    assert meta.inputs[0].name == "input" and list(meta.inputs[0].shape) == [-1, 3, 224, 224]
    assert meta.outputs[0].name == "logits" and list(meta.outputs[0].shape) == [-1, NUM_CLASSES]
    assert meta.platform == "onnxruntime_onnx"

    # Encoded images as BYTES (raw_input_contents), with the classification extension.
    http_images = server.metric("resserve_http_images_total", {"model": "tiny", "status": "ok"})
    grpc_images = server.metric("resserve_grpc_images_total", {"model": "tiny", "status": "ok"})
    images = [jpeg(seed=1), jpeg(seed=2)]
    inp = grpcclient.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_))
    top3 = client.infer("tiny", [inp], outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)])
    batch = np.stack([preprocess(d, imagenet_contract()) for d in images])
    (want,) = session.run(None, {"input": batch})
    entries = top3.as_numpy("logits")
    assert entries.shape == (2, 3)
    for row, top in zip(want, entries, strict=True):
        assert [int(e.decode().split(":")[1]) for e in top] == list(np.argsort(-row)[:3])

    # A preprocessed FP32 tensor, logits back, equal to ONNX Runtime on the same file.
    tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("tiny", [tensor], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-4, atol=1e-4)
    assert result.get_response().id == "req-7" and result.get_response().model_version == "1"
    # gRPC's images count under gRPC, not HTTP: two encoded, then two tensor rows.
    assert server.metric("resserve_grpc_images_total", {"model": "tiny", "status": "ok"}) == grpc_images + 4
    assert server.metric("resserve_http_images_total", {"model": "tiny", "status": "ok"}) == http_images


def test_typed_contents_are_accepted_like_raw(server: RunningServer, session: ort.InferenceSession) -> None:
    batch = np.stack([preprocess(jpeg(seed=3), imagenet_contract())])
    request = service_pb2.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))
    (want,) = session.run(None, {"input": batch})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_errors_map_to_grpc_codes(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    image = grpcclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([jpeg()], dtype=np.object_))
    with pytest.raises(InferenceServerException) as missing:
        client.infer("no-such-model", [image])
    assert _code(missing.value) == "StatusCode.NOT_FOUND"

    wrong = grpcclient.InferInput("input", [1, 3, 100, 100], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 100, 100), dtype=np.float32))
    with pytest.raises(InferenceServerException) as shape:
        client.infer("tiny", [wrong])
    assert _code(shape.value) == "StatusCode.INVALID_ARGUMENT" and "unexpected shape for input" in shape.value.message()

    many = grpcclient.InferInput("image", [5], "BYTES")
    many.set_data_from_numpy(np.array([jpeg()] * 5, dtype=np.object_))
    with pytest.raises(InferenceServerException) as too_many:
        client.infer("tiny", [many])
    assert _code(too_many.value) == "StatusCode.INVALID_ARGUMENT" and "at most 4" in too_many.value.message()

    broken = grpcclient.InferInput("image", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as bad_image:
        client.infer("tiny", [broken])
    assert _code(bad_image.value) == "StatusCode.INVALID_ARGUMENT"

    with pytest.raises(InferenceServerException) as unknown_output:
        client.infer("tiny", [image], outputs=[grpcclient.InferRequestedOutput("probs")])
    assert "unexpected inference output" in unknown_output.value.message()

    with pytest.raises(InferenceServerException) as engine_failed:
        client.infer("flaky", [image])
    assert _code(engine_failed.value) == "StatusCode.INTERNAL"

    # Above max_body_bytes (4 MiB): gRPC refuses the message before the servicer sees it.
    huge = grpcclient.InferInput("image", [1], "BYTES")
    huge.set_data_from_numpy(np.array([b"\0" * (5 * 1024 * 1024)], dtype=np.object_))
    with pytest.raises(InferenceServerException) as too_big:
        client.infer("tiny", [huge])
    assert _code(too_big.value) == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()


def test_places_are_taken_for_the_declared_rows_before_the_tensor_is_decoded(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call whose declared rows do not fit the model's room now is RESOURCE_EXHAUSTED before its
    contents are decoded (issue 30), though admission let it in (one place was free)."""
    from resserve.server.oip import grpc_servicer

    decoded: list[str] = []
    decode = grpc_servicer.decode_request
    monkeypatch.setattr(grpc_servicer, "decode_request",
                        lambda request, **kwargs: decoded.append(request.model_name) or decode(request, **kwargs))

    def rows(count: int) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name="tiny_room")
        request.inputs.add(name="input", datatype="FP32", shape=[count, 3, 224, 224])
        request.raw_input_contents.append(np.zeros((count, 3, 224, 224), np.float32).tobytes())
        return request

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        held = [stub.ModelInfer.future(rows(1), timeout=60) for _ in range(2)]  # one running 1.5 s, one queued
        deadline = time.monotonic() + 10
        while len(decoded) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert decoded == ["tiny_room"] * 2
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(rows(3), timeout=30)  # 2 + 3 > 4 places
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in refused.value.details()
        assert decoded == ["tiny_room"] * 2  # refused on the declared shape, never decoded
        assert all(call.result().outputs for call in held)


def test_a_full_queue_is_resource_exhausted_with_a_retry_hint(server: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="tiny_queue")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    data = jpeg()
    request.raw_input_contents.append(len(data).to_bytes(4, "little") + data)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelInfer.future(request, timeout=60) for _ in range(12)]
        answered, refused = [], []
        for call in calls:
            try:
                answered.append(call.result())
            except grpc.RpcError as exc:
                refused.append(exc)
    # Room for two images (one running batch of one, one queued), the first batch hangs: 10 refused.
    assert len(answered) >= 1 and len(refused) >= 9, (len(answered), len(refused))
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "queue full" in refused[0].details()
    trailers = dict(refused[0].trailing_metadata())
    assert int(trailers["retry-after"]) >= 1
    assert server.metric("resserve_grpc_requests_total",
                         {"method": "ModelInfer", "model": "tiny_queue", "code": "RESOURCE_EXHAUSTED"}) == len(refused)


def test_the_clients_deadline_and_the_timeout_parameter_bound_the_request(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    image = grpcclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([jpeg()], dtype=np.object_))
    # OIP's timeout parameter (microseconds) under a generous gRPC deadline: the server ends the call.
    with pytest.raises(InferenceServerException) as timed_out:
        client.infer("slow", [image], timeout=300_000, client_timeout=30)
    assert _code(timed_out.value) == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in timed_out.value.message()
    assert server.metric("resserve_grpc_requests_total",
                         {"method": "ModelInfer", "model": "slow", "code": "DEADLINE_EXCEEDED"}) == 1

    # The call's own deadline: the request's timeout on the server too.
    with pytest.raises(InferenceServerException) as late:
        client.infer("slow", [image], client_timeout=0.3)
    assert _code(late.value) == "StatusCode.DEADLINE_EXCEEDED"
    assert client.is_server_ready()


def test_repository_extension_needs_the_control_token(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    with pytest.raises(InferenceServerException) as refused:
        client.unload_model("tiny_queue")
    assert _code(refused.value) == "StatusCode.UNAUTHENTICATED"
    headers = {"authorization": f"Bearer {TOKEN}"}
    assert len(client.get_model_repository_index().models) == 5  # the index only reads: no token needed
    index = client.get_model_repository_index(headers=headers)
    assert {m.name: m.state for m in index.models} == dict.fromkeys(("flaky", "slow", "tiny", "tiny_queue", "tiny_room"), "READY")
    client.unload_model("tiny_queue", headers=headers)
    assert not client.is_model_ready("tiny_queue")
    client.load_model("tiny_queue", headers=headers)
    assert client.is_model_ready("tiny_queue")
    with pytest.raises(InferenceServerException) as unknown:
        client.load_model("nope", headers=headers)
    assert _code(unknown.value) == "StatusCode.NOT_FOUND"


def test_grpc_health_checks_for_kubernetes_probes(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_the_asyncio_client_shares_the_batcher(server: RunningServer) -> None:
    async def run() -> list[int]:
        client = grpcclient_aio.InferenceServerClient(server.grpc_target)
        try:
            async def one(seed: int) -> int:
                inp = grpcclient_aio.InferInput("image", [1], "BYTES")
                inp.set_data_from_numpy(np.array([jpeg(seed=seed)], dtype=np.object_))
                out = grpcclient_aio.InferRequestedOutput("logits", class_count=1)
                result = await client.infer("tiny", [inp], outputs=[out])
                return int(result.as_numpy("logits")[0][0].decode().split(":")[1])

            assert await client.is_server_ready()
            missing = grpcclient_aio.InferInput("image", [1], "BYTES")
            missing.set_data_from_numpy(np.array([jpeg()], dtype=np.object_))
            with pytest.raises(InferenceServerException) as unknown:
                await client.infer("no-such-model", [missing])
            assert _code(unknown.value) == "StatusCode.NOT_FOUND"
            return await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            await client.close()

    batches = server.metric("resserve_batcher_batch_size_count", {"model": "tiny", "version": "1"})
    classes = asyncio.run(run())
    assert len(classes) == 8 and all(0 <= c < NUM_CLASSES for c in classes)
    # Eight concurrent calls queued on the one batcher: fewer engine runs than calls.
    assert server.metric("resserve_batcher_batch_size_count", {"model": "tiny", "version": "1"}) - batches < 8


def test_api_keys_are_read_from_metadata(model_onnx: Path, tmp_path: Path) -> None:
    write_model(tmp_path, "tiny", model_onnx)
    settings = ServerSettings(model_repo=tmp_path, grpc_port=free_port(), grpc_host="127.0.0.1", api_keys=[KEY])
    with serve_in_thread(settings) as running:
        client = grpcclient.InferenceServerClient(running.grpc_target)
        assert client.is_server_ready()  # health needs no key (kubelet probes send none)
        with pytest.raises(InferenceServerException) as refused:  # which models exist: a key, as over HTTP
            client.is_model_ready("tiny")
        assert _code(refused.value) == "StatusCode.UNAUTHENTICATED"
        assert client.is_model_ready("tiny", headers={"x-api-key": KEY})
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata("tiny")
        assert _code(refused.value) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("tiny", headers={"x-api-key": "wrong"})
        assert client.get_model_metadata("tiny", headers={"authorization": f"Bearer {KEY}"}).name == "tiny"
        assert client.get_model_metadata("tiny", headers={"x-api-key": KEY}).name == "tiny"
        with grpc.insecure_channel(running.grpc_target) as channel:  # kubelet's gRPC probe sends no metadata
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            # Refused before the message is read (issue 30: 48 unauthenticated 19 MiB messages held
            # 1.4 GB): bytes that are no protobuf at all are refused as unauthenticated, never parsed.
            raw = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=None,
                                      response_deserializer=None)
            with pytest.raises(grpc.RpcError) as unread:
                raw(b"\xff" * (1 << 20), timeout=10)
            assert unread.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "needs an API key" in (unread.value.details() or "")
            with pytest.raises(grpc.RpcError) as parsed:  # with a key the same bytes reach the parser
                raw(b"\xff" * 64, timeout=10, metadata=(("x-api-key", KEY),))
            assert parsed.value.code() != grpc.StatusCode.UNAUTHENTICATED
        assert running.metric("resserve_grpc_requests_total",
                              {"method": "ModelInfer", "model": "", "code": "UNAUTHENTICATED"}) >= 1


def test_draining_turns_health_off_and_the_call_in_flight_still_finishes(model_onnx: Path, tmp_path: Path) -> None:
    write_model(tmp_path, "tiny", model_onnx, max_batch_size=1, fault_injection=HANG)
    settings = ServerSettings(model_repo=tmp_path, grpc_port=free_port(), graceful_shutdown_s=20)
    results: list[object] = []
    with serve_in_thread(settings) as running:
        client = grpcclient.InferenceServerClient(running.grpc_target)
        image = grpcclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([jpeg()], dtype=np.object_))

        def call() -> None:
            try:
                results.append(client.infer("tiny", [image], client_timeout=60).as_numpy("logits").shape)
            except InferenceServerException as exc:
                results.append(exc)

        worker = threading.Thread(target=call)
        worker.start()
        # Decoded: the call is in the engine's 1.5 s batch when the drain starts.
        while not running.metric("resserve_preprocess_decode_seconds_count", {"model": "tiny"}) and worker.is_alive():
            time.sleep(0.01)
        running.app.state.resserve.draining = True  # what SIGTERM does (serve.DrainingServer)
        with grpc.insecure_channel(running.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "inference.GRPCInferenceService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not client.is_server_ready() and client.is_server_live()
        assert worker.is_alive(), "the call finished before the server was stopped"
    # Leaving the block stopped the server while the call was still in the engine.
    worker.join(60)
    assert results == [(1, NUM_CLASSES)], results
