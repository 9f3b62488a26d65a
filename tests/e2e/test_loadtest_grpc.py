"""The load generator over gRPC against a real ``resserve serve`` with its gRPC port open."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resserve.perf.server_process import free_port, server_process
from resserve.builder.build_pipeline import BuildPipeline
from resserve.perf.grpc_generator import GrpcLoadGenerator
from resserve.perf.images import generate
from resserve.repository import ModelRepository
from tests.server_harness import write_model


@pytest.fixture
def repo(model_onnx: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx, max_batch_size=8, dynamic_batching={"max_queue_delay_ms": 2})
    BuildPipeline(ModelRepository(repo)).build("r18")
    return repo


def test_grpc_generator_and_cli_against_a_running_server(repo: Path, tmp_path: Path) -> None:
    grpc_port = free_port()
    out = tmp_path / "points.json"
    with server_process(repo, "--grpc-port", str(grpc_port), log_dir=tmp_path, kill=True) as server:
        target = f"127.0.0.1:{grpc_port}"

        async def drive() -> tuple[list[str], list[str]]:
            payloads = generate()[:4]
            async with GrpcLoadGenerator(target, "r18", payloads, server.url) as generator:
                assert generator.output_name  # from the model's metadata
                stop = asyncio.Event()
                task = asyncio.create_task(generator.closed_loop(3, stop))
                await asyncio.sleep(1.0)
                stop.set()
                await task
                good = [s.status for s in generator.samples]
            async with GrpcLoadGenerator(target, "r18", payloads, server.url, output_name="logits") as generator:
                generator.model = "no-such-model"
                generator._requests.clear()  # rebuilt for the other model name on send
                missing = [(await generator.send(payloads[0])).status]
            return good, missing

        good, missing = asyncio.run(drive())
        assert good and set(good) == {"200"}
        assert missing == ["NOT_FOUND"]
        done = subprocess.run(
            [sys.executable, "-m", "resserve.cli", "loadtest", "run", server.url, "--model", "r18", "--grpc", target,
             "--mode", "closed", "--concurrency", "2", "--warmup-s", "0.3", "--window-s", "0.5", "--max-windows", "3",
             "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (point,) = json.loads(out.read_text())
    assert point["concurrency"] == 2 and point["statuses"].get("200", 0) > 0 and point["error_rate"] == 0
    assert point["server"]["requests"] == 0  # HTTP request counters: gRPC is counted apart
    assert f"grpc://{target}" in done.stdout.replace("\n", "")
