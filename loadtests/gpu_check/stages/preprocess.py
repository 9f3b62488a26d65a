"""Stage ``preprocess``: CPU preprocessing (one core, exact and fast paths) against GPU decode + preprocess."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from ..resserve_modules import (BENCH_PREPROCESS, BENCH_STATS, CONTRACT, GPU_PREPROCESS, HARDWARE, PREPROCESS,
                                SYNTHETIC, load)
from ..supervisor import say
from ..table import row


def _gpu_timed(run: Callable[[], Any], images: int, seconds: float) -> tuple[float, dict[str, float]]:
    """Images/s and per-batch latency of ``run`` (synchronized each call) after a warm-up."""
    import torch

    latency_summary_ms = load(BENCH_STATS).latency_summary_ms
    for _ in range(3):  # nvJPEG's handles and buffers are made on the first calls
        run()
    torch.cuda.synchronize()
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 5:
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        latencies.append(time.perf_counter() - t0)
    return images * len(latencies) / (time.perf_counter() - start), latency_summary_ms(latencies)


def run(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """CPU preprocessing (one core, exact and fast paths) against GPU decode + preprocess."""
    import numpy as np

    bench_preprocess = load(BENCH_PREPROCESS).bench_preprocess
    contract = load(CONTRACT).imagenet_contract()
    gpu = load(GPU_PREPROCESS)
    cores = load(HARDWARE).available_cores()
    preprocess = load(PREPROCESS).preprocess
    synthetic_jpegs = load(SYNTHETIC).synthetic_jpegs

    sizes, batch = [(500, 375), (1600, 1200)], 64
    result.update(rows=[], notes=[
        f"CPU: {BENCH_PREPROCESS} on one core; x{cores} cores is the ideal all-core rate, not measured",
        f"GPU: batches of {batch} JPEG files (16 distinct, quality 90) decoded by nvJPEG in one call, then "
        "resize (antialiased bilinear), crop and normalize in torch; synchronized per batch"])
    modes = {"exact": "CPU exact", "both": "CPU fast_jpeg_decode + fast_preprocess"}  # the server runs "both"
    for r in bench_preprocess(sizes, images=8, rounds=1, round_s=0.5):
        if r.mode in modes:
            img_s = 1000.0 / r.ms_per_image
            deviation = f"; max abs dev from exact {r.max_abs_deviation:.4f}" if r.mode != "exact" else ""
            result["rows"].append(row("preprocess", f"{modes[r.mode]} {r.size[0]}x{r.size[1]}, one core", batch=1,
                                      img_s=img_s,
                                      note=f"x{cores} cores: {img_s * cores:.0f} img/s{deviation}"))
    save()
    preprocessor = gpu.GpuPreprocessor(contract)
    for width, height in sizes:
        jpegs = synthetic_jpegs(16, [(width, height)], seed=11) * (batch // 16)
        on_gpu = preprocessor(jpegs[:16]).cpu().numpy()
        diff = np.abs(on_gpu - np.stack([preprocess(data, contract) for data in jpegs[:16]]))
        deviation = f"vs CPU exact: max abs {diff.max():.4f}, mean abs {diff.mean():.5f}"
        for what, timed in ((f"GPU decode + preprocess {width}x{height}", lambda jpegs=jpegs: preprocessor(jpegs)),
                            (f"GPU decode only {width}x{height}", lambda jpegs=jpegs: gpu.decode_jpegs(jpegs))):
            img_s, latency = _gpu_timed(timed, batch, 2.0)
            result["rows"].append(row("preprocess", what, batch=batch, img_s=img_s, p50_ms=latency["p50_ms"],
                                      p99_ms=latency["p99_ms"], note=deviation if "+" in what else ""))
            say(f"{what}: {img_s:.0f} img/s")
            save()
