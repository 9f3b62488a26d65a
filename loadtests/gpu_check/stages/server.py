"""Stage ``server``: build one torch-CUDA fp16 ResNet-50, serve it (per ``--workers`` value, CPU decode,
then GPU decode) and load it with the project's generator."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..resserve_modules import (BENCH_PROCESS, BUILD_PIPELINE, LOAD_GENERATOR, LOAD_IMAGES, LOAD_MEASURE,
                                REPOSITORY, load)
from ..supervisor import say
from ..table import row

SERVER_MODEL = "resnet50-torch-fp16"
# The server stage's model: built here (export for the metadata, weights for the torch engine).
SERVER_MODEL_CONFIG = """\
source: {arch: resnet50, random_weights: true, seed: 0}
engine: torch
precision: fp16
device: cuda
max_batch_size: 64
dynamic_batching: {max_queue_delay_ms: 2, preferred_batch_sizes: [16, 32, 64], max_queue_size: 1024}
warmup_batch_sizes: [1, 16, 32, 64]
fast_jpeg_decode: true
fast_preprocess: true
# The build's fp16-against-fp32 report: fewer images than the default 200, a floor that still fails
# a broken build (random weights flip a few top-1 classes at any reduced precision).
calibration: {held_out: 64, min_top1_agreement: 0.9}
"""


def _build(repo: Path, result: dict[str, Any], save: Callable[[], None]) -> None:
    """The model, built once (every run after reads its config at load)."""
    (repo / SERVER_MODEL).mkdir()
    (repo / SERVER_MODEL / "config.yaml").write_text(SERVER_MODEL_CONFIG)
    begun = time.monotonic()
    built: list[str] = []

    def progress(message: str) -> None:
        say(message)
        built.append(message)

    load(BUILD_PIPELINE).BuildPipeline(load(REPOSITORY).ModelRepository(repo)).build(SERVER_MODEL, progress=progress)
    result["notes"].append(f"build {time.monotonic() - begun:.0f} s: {built[-1] if built else ''}")
    save()


def run(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """Build one torch-CUDA fp16 ResNet-50, serve it (per ``--workers`` value), and load it with the
    project's generator."""
    server_process = load(BENCH_PROCESS).server_process
    LoadGenerator = load(LOAD_GENERATOR).LoadGenerator
    generate = load(LOAD_IMAGES).generate
    measure = load(LOAD_MEASURE)

    deadline = time.monotonic() + args.stage_budget_s
    result.update(rows=[], points=[], notes=[
        "CPU decode: Pillow with fast_jpeg_decode and fast_preprocess in the preprocess threads; GPU decode: "
        "the same model with gpu_decode: true (nvJPEG and torch on the GPU, one image at a time per worker)",
        "the engine as the server opens it: torch fp16 channels-last eager (a model config has no CUDA "
        "graphs option); max_batch_size 64, max_queue_delay_ms 2; seeded random weights"])
    settings = measure.MeasurementSettings(warmup_s=5.0, window_s=args.window_s, stable_windows=3, max_windows=4)
    payloads = generate(sizes=((500, 375),), per_size=16)
    with tempfile.TemporaryDirectory(prefix="gpu-check-repo-") as folder:
        repo = Path(folder)
        _build(repo, result, save)
        # The resserve served is always this checkout's (on the children's path; gpu-wheels holds no
        # resserve), which has serve --workers and the model config's gpu_decode: nothing to probe.
        runs = [(w, "cpu") for w in args.workers.split(",") if w] or [("", "cpu")]
        runs.insert(1, (runs[0][0], "gpu"))  # beside the first CPU-decode run, before the other counts
        last_s = 0.0
        for workers, decode in runs:
            label = f"--workers {workers}" if workers else "one process"
            config = SERVER_MODEL_CONFIG + ("gpu_decode: true\n" if decode == "gpu" else "")
            (repo / SERVER_MODEL / "config.yaml").write_text(config)  # read at load: the build stays fresh
            if time.monotonic() + 1.2 * last_s > deadline:
                result["notes"].append(f"{label}: not measured, the stage's time ran out")
                continue
            begun = time.monotonic()
            extra = ["--model", SERVER_MODEL, "--no-build-missing", *(["--workers", workers] if workers else [])]
            load_s = settings.warmup_s + settings.max_windows * settings.window_s
            say(f"serving {SERVER_MODEL} ({label}); {args.concurrency} clients")
            with server_process(repo, *extra, log_dir=repo, log_level="warning",
                                ready_timeout_s=max(deadline - time.monotonic() - load_s, 10.0)) as server:

                async def load_point(url: str = server.url) -> Any:
                    async with LoadGenerator(f"{url}/v2/models/{SERVER_MODEL}/classify", payloads,
                                             max_outstanding=args.concurrency + 1) as generator:
                        return await measure.closed_point(generator, args.concurrency, settings,
                                                          metrics_url=f"{url}/metrics", model=SERVER_MODEL)

                ready_s = time.monotonic() - begun
                point = asyncio.run(load_point())
            last_s = time.monotonic() - begun
            batch_note = f", mean batch {point.server.mean_batch_size:.1f}" if point.server else ""
            result["points"].append({"workers": workers or None, "decode": decode, **point.model_dump(mode="json")})
            result["rows"].append(row(
                "server", f"{SERVER_MODEL}, {label}, {args.concurrency} clients, 500x375 JPEG, {decode.upper()} decode",
                img_s=point.throughput_img_s, p50_ms=point.latency_ms.get("p50_ms"),
                p99_ms=point.latency_ms.get("p99_ms"),
                note=f"errors {point.error_rate:.3f}; {'stable' if point.stable else 'NOT stable'} over "
                     f"{len(point.windows)} windows of {args.window_s:g} s{batch_note}; ready in {ready_s:.0f} s; "
                     f"generator {point.generator_cpu_us_per_request:.0f} us CPU/request"))
            say(f"{label}, {decode} decode: {point.throughput_img_s:.0f} img/s, "
                f"p99 {point.latency_ms.get('p99_ms', 0):.0f} ms")
            save()
