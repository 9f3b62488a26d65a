"""gRPC abuse against a real ``resserve serve`` (issue 30, finding 2): calls that open a stream and
never send their message. Before, 512 such streams on one connection made every new call (health
checks included) wait for ever and the server ended none of them. No API key is needed: the
server runs with keys set."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from resserve.perf.server_process import free_port, server_process
from tests.server_harness import write_model

KEY = "k" * 32
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
def repo(model_onnx: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    return repo


async def hold_streams(target: str, count: int, release: asyncio.Event, key: bool) -> list[grpc.aio.Call]:
    """``count`` ModelInfer calls on one connection of their own that send headers and never a message."""
    channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])

    async def never() -> object:
        await release.wait()
        yield service_pb2.ModelInferRequest()  # pragma: no cover (never reached)

    method = channel.stream_unary(MODEL_INFER, request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                                  response_deserializer=service_pb2.ModelInferResponse.FromString)
    metadata = (("x-api-key", KEY),) if key else ()
    calls = [method(never(), metadata=metadata) for _ in range(count)]
    await asyncio.sleep(1.0)  # let them reach the server
    return calls


async def probes(target: str) -> tuple[int, bool]:
    async with grpc.aio.insecure_channel(target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        live = await service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
            service_pb2.ServerLiveRequest(), timeout=5)
        return health.status, live.live


def test_streams_without_a_message_are_ended_and_never_starve_health(repo: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {"RESSERVE_API_KEYS": KEY, "RESSERVE_GRPC_PORT": str(port), "RESSERVE_MAX_CONNECTIONS": "64",
           "RESSERVE_BODY_TIMEOUT_S": "2"}
    target = f"127.0.0.1:{port}"

    async def attack() -> None:
        release = asyncio.Event()
        held = [*await hold_streams(target, 96, release, key=True), *await hold_streams(target, 96, release, key=False)]
        started = time.monotonic()
        assert await probes(target) == (health_pb2.HealthCheckResponse.SERVING, True)
        codes = []
        for call in held:
            try:
                await asyncio.wait_for(call, 10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as ended:
                codes.append(ended.code())

        assert time.monotonic() - started < 10
        unauthenticated, keyed = codes[96:], codes[:96]
        assert set(unauthenticated) == {grpc.StatusCode.UNAUTHENTICATED}
        # With a key: the message never came (DEADLINE_EXCEEDED), or there was no room for the
        # call (RESOURCE_EXHAUSTED: 64 calls in flight at most).
        assert set(keyed) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(keyed)
        assert grpc.StatusCode.DEADLINE_EXCEEDED in keyed and grpc.StatusCode.RESOURCE_EXHAUSTED in keyed
        assert await probes(target) == (health_pb2.HealthCheckResponse.SERVING, True)
        release.set()
        # Every place was given back: more counted calls than the limit, one after another.
        async with grpc.aio.insecure_channel(target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(80):
                ready = await stub.ModelReady(service_pb2.ModelReadyRequest(name="r18"),
                                              metadata=(("x-api-key", KEY),), timeout=5)
                assert ready.ready

    with server_process(repo, log_dir=tmp_path, env=env, kill=True):
        asyncio.run(asyncio.wait_for(attack(), 60))


def test_reflection_lists_the_services(repo: Path, tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    port = free_port()
    with server_process(repo, log_dir=tmp_path, env={"RESSERVE_GRPC_PORT": str(port)}, kill=True):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = list(stub.ServerReflectionInfo(iter([
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
            ]), timeout=10))
    services = {s.name for s in answers[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
    assert answers[1].file_descriptor_response.file_descriptor_proto  # grpcurl can describe ModelInfer
