"""A model with a latency target batches adaptively through the real server and reports its decisions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from resserve.config import ServerSettings
from tests.server_harness import jpeg, serve_in_thread, write_model


async def test_latency_target_turns_on_adaptive_batching(model_onnx: Path, tmp_path: Path) -> None:
    write_model(tmp_path, "slo", model_onnx, max_batch_size=16, dynamic_batching={"latency_target_ms": 2000})
    with serve_in_thread(ServerSettings(model_repo=tmp_path)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            for _ in range(3):
                responses = await asyncio.gather(*(
                    client.post("/v2/models/slo/classify", content=jpeg(seed=i), headers={"content-type": "image/jpeg"})
                    for i in range(12)))
                assert [r.status_code for r in responses] == [200] * 12
        labels = {"model": "slo", "version": "1"}
        cap = server.metric("resserve_batcher_batch_cap", labels)
        assert cap == 16  # a 2 s target on a model that runs 16 rows in well under it affords the largest batch
        assert server.metric("resserve_batcher_planned_wait_seconds_count", labels) >= 1
        batches = server.metric("resserve_batcher_batch_size_count", labels)
        assert 1 <= batches < 36  # requests were batched together
