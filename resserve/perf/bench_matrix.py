"""``resserve bench engine MODEL_REPO``: every variant x batch size, with accuracy, as Markdown + JSON.

Variants are measured one after another in one process (never two engines at once: on 2 cores
they would measure each other), each freed before the next loads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resserve.perf.bench_engine import BatchResult, bench_engine, environment
from resserve.builder.build_pipeline import BuildPipeline
from resserve.engines.factory import open_engine
from resserve.repository import ModelRepository


@dataclass
class VariantResult:
    """One variant's figures: throughput per batch size and its accuracy report."""

    model: str
    arch: str | None
    engine: str
    precision: str
    random_weights: bool
    results: list[BatchResult]
    accuracy: dict[str, Any] | None


def bench_variants(repository: ModelRepository, models: list[str], batch_sizes: list[int], *, rounds: int = 3,
                   round_s: float = 1.0, build: bool = True) -> list[VariantResult]:
    """Build (if stale and allowed), load and measure each model of the repository in turn."""
    out = []
    builder = BuildPipeline(repository)
    for name in models:
        if build and builder.is_stale(name):
            builder.build(name)
        version = repository.version(name)
        engine = open_engine(version.variant, version.config, version.folder)
        try:
            results = bench_engine(engine, batch_sizes, rounds=rounds, round_s=round_s)
        finally:
            engine.close()
        report = version.accuracy
        out.append(VariantResult(name, version.metadata.arch, version.variant.engine, version.variant.precision,
                                 version.metadata.random_weights, results,
                                 report.model_dump() if report else None))
    return out


def markdown(results: list[VariantResult]) -> str:
    """A table a README can carry: one row per variant and batch size."""
    lines = [
        "| model | engine | precision | batch | img/s (median) | min..max | p50 ms | p99 ms | top-1 agr. | top-5 agr. | cosine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in results:
        acc = v.accuracy
        agreement = (f"{acc['top1_agreement']:.1%} | {acc['top5_agreement']:.1%} | {acc['cosine_mean']:.4f}"
                     if acc else "reference | reference | 1")
        for r in v.results:
            lines.append(
                f"| {v.model} | {v.engine} | {v.precision} | {r.batch_size} | {r.images_per_s:.1f} | "
                f"{r.images_per_s_min:.0f}..{r.images_per_s_max:.0f} | {r.latency_ms['p50_ms']:.1f} | "
                f"{r.latency_ms['p99_ms']:.1f} | {agreement} |"
            )
    return "\n".join(lines) + "\n"


def write(results: list[VariantResult], json_path: Path | None, markdown_path: Path | None) -> None:
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"environment": environment(), "variants": [asdict(v) for v in results]}
        json_path.write_text(json.dumps(doc, indent=2))
    if markdown_path:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown(results))
