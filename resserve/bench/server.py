"""Server benchmark: bare engine, preprocessing per core and end-to-end HTTP, in one run.

The three are measured one after another on the same machine, so their ratio is meaningful even
where absolute numbers drift: ``ratio = e2e_img_s / (1 / (t_engine + t_preprocess))``, the
fraction of the serial pipeline's throughput that the server delivers through HTTP.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resserve.bench.engine import bench_engine, environment
from resserve.bench.process import server_process
from resserve.bench.stats import latency_summary_ms
from resserve.compile.variants import open_engine
from resserve.loadtest.generator import LoadGenerator
from resserve.loadtest.images import Payload
from resserve.preprocess import DecodeOptions, preprocess
from resserve.repository import ModelRepository, ModelVersion
from resserve.synthetic import synthetic_image


@dataclass
class ServerBenchResult:
    """Everything one run measured."""

    model: str
    image_size: tuple[int, int]
    concurrency: int
    engine_batch_size: int
    engine_img_s: float
    preprocess_img_s_one_core: float
    e2e_img_s: float
    bound_img_s: float
    ratio: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)


def make_jpegs(count: int, size: tuple[int, int], quality: int = 90) -> list[bytes]:
    """Distinct image-like JPEGs of one size (a cycling request body set)."""
    images = []
    for seed in range(count):
        buffer = io.BytesIO()
        synthetic_image(size[0], size[1], seed).save(buffer, format="JPEG", quality=quality)
        images.append(buffer.getvalue())
    return images


def preprocess_rate(images: list[bytes], repo_version: ModelVersion, seconds: float = 3.0) -> float:
    """Images per second through the full decode+preprocess path on one thread (one core)."""
    options = DecodeOptions(fast_jpeg_draft=repo_version.config.fast_jpeg_decode,
                            fast_transform=repo_version.config.fast_preprocess)
    for data in images[:4]:
        preprocess(data, repo_version.contract, options)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        preprocess(images[done % len(images)], repo_version.contract, options)
        done += 1
    return done / (time.perf_counter() - start)


async def closed_loop(url: str, images: list[bytes], concurrency: int, warmup_s: float,
                      duration_s: float) -> tuple[float, list[float], Counter[str]]:
    """``concurrency`` clients each sending the next image as soon as the last answer came.

    The load tester's generator; only requests sent after the warm-up and answered before the end
    count.
    """
    payloads = [Payload(f"{i}.jpg", data, "image/jpeg", 0, 0) for i, data in enumerate(images)]
    async with LoadGenerator(url, payloads, max_outstanding=max(concurrency, 1)) as generator:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s
        stop = asyncio.Event()
        load = asyncio.create_task(generator.closed_loop(concurrency, stop))
        await asyncio.sleep(warmup_s + duration_s)
        stop.set()
        await load
    counted = [s for s in generator.samples if s.sent >= measure_from and s.done <= stop_at]
    statuses = Counter(s.status for s in counted)
    return statuses.get("200", 0) / duration_s, [s.latency_s for s in counted], statuses


def run_server_bench(
    model_repo: Path,
    model: str,
    *,
    concurrency: int = 8,
    duration_s: float = 20.0,
    warmup_s: float = 3.0,
    image_size: tuple[int, int] = (500, 375),
    engine_round_s: float = 1.0,
) -> ServerBenchResult:
    """Measure engine, preprocessing and the served model; the server runs as a subprocess."""
    repository = ModelRepository(model_repo)
    if repository.is_stale(model):
        repository.build(model)
    version = repository.version(model)
    config = version.config
    batch = max(config.dynamic_batching.preferred_batch_sizes or [config.max_batch_size])
    batch = min(batch, config.max_batch_size)

    engine = open_engine(version.variant, config, version.folder)  # the variant the server will run
    engine_img_s = bench_engine(engine, [batch], rounds=3, round_s=engine_round_s)[0].images_per_s
    engine.close()

    images = make_jpegs(16, image_size)
    pre_img_s = preprocess_rate(images, version)

    with server_process(model_repo, "--model", model, "--no-build-missing", log_level="warning") as server:
        e2e, latencies, statuses = asyncio.run(
            closed_loop(f"{server.url}/v2/models/{model}/classify", images, concurrency, warmup_s, duration_s))
    bound = 1.0 / (1.0 / engine_img_s + 1.0 / pre_img_s)
    return ServerBenchResult(
        model=model,
        image_size=image_size,
        concurrency=concurrency,
        engine_batch_size=batch,
        engine_img_s=engine_img_s,
        preprocess_img_s_one_core=pre_img_s,
        e2e_img_s=e2e,
        bound_img_s=bound,
        ratio=e2e / bound,
        latency_ms=latency_summary_ms(latencies) if latencies else {},
        statuses=dict(statuses),
        environment=environment(),
    )


def as_dict(result: ServerBenchResult) -> dict[str, Any]:
    return asdict(result)

