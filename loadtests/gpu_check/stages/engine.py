"""Stage ``engine``: the torch engine on CUDA per precision and graph mode, by ``bench_engine``, batch 1..256."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..resserve_modules import BENCH_ENGINE, TORCH_ENGINE, WEIGHTS, load
from ..supervisor import say
from ..table import row

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def run(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """The torch engine on CUDA per precision and graph mode, by ``bench_engine``, batch 1..256."""
    import torch

    bench_engine = load(BENCH_ENGINE).bench_engine
    TorchEngine = load(TORCH_ENGINE).TorchEngine
    load_model = load(WEIGHTS).load_model

    deadline = time.monotonic() + args.stage_budget_s
    configs = [("resnet50", precision, graphs) for precision in ("fp16", "bf16") for graphs in (False, True)]
    configs += [("resnet18", "fp16", graphs) for graphs in (False, True)]
    result.update(rows=[], notes=[
        "engine.infer as the server calls it: numpy float32 in and out, host<->device copies included; "
        f"median of {args.rounds} interleaved rounds of {args.round_s} s per batch size; seeded random weights"])
    last_s = 0.0
    with tempfile.TemporaryDirectory(prefix="gpu-check-weights-") as folder:
        weights: dict[str, Path] = {}
        for arch, precision, graphs in configs:
            name = f"{arch} {precision} channels-last" + (" CUDA graphs" if graphs else " eager")
            if time.monotonic() + 1.3 * last_s > deadline:
                result["notes"].append(f"{name}: not measured, the stage's time ran out")
                continue
            begun = time.monotonic()
            if arch not in weights:  # the seeded init once per arch; a tensor-only file each engine loads
                weights[arch] = Path(folder) / f"{arch}.pth"
                torch.save(load_model(arch, random_weights=True, seed=0).model.state_dict(), weights[arch])
            engine = TorchEngine(arch, weights[arch], device="cuda", precision=precision,
                                 channels_last=True, cuda_graphs=graphs, graph_batch_sizes=BATCH_SIZES)
            engine.load()
            try:
                for r in bench_engine(engine, list(BATCH_SIZES), rounds=args.rounds, round_s=args.round_s):
                    result["rows"].append(row("engine", name, batch=r.batch_size, img_s=r.images_per_s,
                                              p50_ms=r.latency_ms["p50_ms"], p99_ms=r.latency_ms["p99_ms"],
                                              note=f"{r.images_per_s_min:.0f}..{r.images_per_s_max:.0f}"))
                result.setdefault("gpu", engine.describe().get("gpu"))
            finally:
                engine.close()
                torch.cuda.empty_cache()
            last_s = time.monotonic() - begun
            say(f"{name}: {last_s:.1f} s")
            save()
