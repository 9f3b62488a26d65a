"""The ``resserve serve`` process: serves, drains on SIGTERM losing nothing, exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from resserve.perf.server_process import server_process
from tests.server_harness import jpeg, write_model


def make_repo(tmp_path: Path, model_onnx: Path) -> Path:
    repo = tmp_path / "repo"
    # Batch size 1: 12 requests take a few hundred ms, so SIGTERM lands with work queued.
    write_model(repo, "r18", model_onnx, max_batch_size=1, dynamic_batching={"max_queue_delay_ms": 0})
    return repo


async def fire(url: str, count: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        responses = await asyncio.gather(*(
            client.post("/v2/models/r18/classify", content=jpeg(seed=i), headers={"content-type": "image/jpeg"})
            for i in range(count)))
    return [r.status_code for r in responses]


async def test_sigterm_turns_unready_then_finishes_every_request(model_onnx: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, model_onnx)
    with server_process(repo, "--shutdown-delay-s", "1.5", log_dir=tmp_path, kill=True) as server:
        assert httpx.post(f"{server.url}/v2/models/r18/classify", content=jpeg(),
                          headers={"content-type": "image/jpeg"}, timeout=30).status_code == 200
        load = asyncio.create_task(fire(server.url, 12))
        await asyncio.sleep(0.15)  # requests are in flight
        server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        ready = await asyncio.to_thread(httpx.get, f"{server.url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503 and "draining" in ready.json()["error"]
        live = await asyncio.to_thread(httpx.get, f"{server.url}/v2/health/live", timeout=5)
        assert live.status_code == 200  # still up while load balancers notice
        statuses = await load
        assert statuses == [200] * 12
        code = await asyncio.to_thread(server.process.wait, 60)
        assert code == 0, server.output()


async def test_immediate_sigterm_completes_accepted_requests(model_onnx: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, model_onnx)
    with server_process(repo, log_dir=tmp_path, kill=True) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            # Open the connections first, so every request below is accepted before the signal.
            await asyncio.gather(*(client.get("/v2/health/live") for _ in range(8)))
            tasks = [asyncio.create_task(client.post("/v2/models/r18/classify", content=jpeg(seed=i),
                                                     headers={"content-type": "image/jpeg"})) for i in range(8)]
            await asyncio.sleep(0.1)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*tasks, return_exceptions=True)
        accepted = [r for r in responses if isinstance(r, httpx.Response)]
        assert accepted and all(r.status_code == 200 for r in accepted), responses
        code = await asyncio.to_thread(server.process.wait, 60)
        assert code == 0, server.output()
        assert time.monotonic() - started < 30
        assert "released" in server.output()  # the lifespan drained the queue and closed the engine
