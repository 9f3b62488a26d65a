"""``resserve tune``'s builds and measurements (issue 33, second piece: no CLI yet).

- :func:`build_pairs`: each (engine, precision) of the space built once, into a work repository of
  its own (the model's folder linked file by file, never its version folders, so no build writes
  into the user's repository), with the build's accuracy report: the gate for reduced precision.
- :func:`score_candidate`: one candidate through the real server: an overlay repository whose
  config.yaml carries the candidate, ``resserve serve`` (with its workers) on 127.0.0.1, and the
  highest Poisson rate whose p99 stays under the budget with no error (:func:`find_max_rate`),
  with the server's CPU per image over the search.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel

from resserve.builder.build_pipeline import BuildPipeline
from resserve.metadata import AccuracyReport
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import Payload
from resserve.perf.measure import MeasurementSettings
from resserve.perf.search import find_max_rate
from resserve.perf.server_process import server_process
from resserve.perf.sweep import link_model_folder, merge_config
from resserve.perf.thread_cpu import ServerCpu
from resserve.perf.tune_space import Candidate, Score
from resserve.repository import ModelRepository

log = logging.getLogger(__name__)


class BuiltPair(BaseModel):
    """One (engine, precision) built for the tuner: where, and whether it passed the gate."""

    engine: str
    precision: str
    repository: Path  # a work repository holding the model with this pair built
    top1_agreement: float | None = None  # the build's accuracy report; None for fp32 (the reference)
    passed: bool = True
    why: str = ""


def raw_config(repository: Path, model: str) -> dict[str, object]:
    raw = yaml.safe_load((repository / model / "config.yaml").read_text(encoding="utf-8")) or {}
    raw.pop("name", None)
    return raw


def build_pairs(repository: Path, model: str, pairs: Sequence[tuple[str, str]], work: Path,
                min_top1_agreement: float) -> list[BuiltPair]:
    """Build ``model`` once per (engine, precision) under ``work``; a build that fails, or whose
    accuracy report is under ``min_top1_agreement``, is kept with the reason (it never serves)."""
    raw = raw_config(repository, model)
    built = []
    for engine, precision in pairs:
        root = work / f"{engine}-{precision}"
        pair = BuiltPair(engine=engine, precision=precision, repository=root)
        try:
            # The tuner applies the floor itself: the build keeps what it measured, pass or not.
            calibration = {**(raw.get("calibration") or {}), "min_top1_agreement": 0.0}  # type: ignore[dict-item]
            config = {**raw, "engine": engine, "precision": precision, "calibration": calibration}
            if not (root / model).exists():
                link_model_folder(repository / model, root / model, config, versions=False)
            else:  # the model's config may have changed since: the stale check then rebuilds
                (root / model / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            builder = BuildPipeline(ModelRepository(root))
            if builder.is_stale(model):
                builder.build(model)
            report = AccuracyReport.read(ModelRepository(root).version(model).folder)
            if precision != "fp32":
                if report is None:
                    pair.passed, pair.why = False, "no accuracy report"
                else:
                    pair.top1_agreement = report.top1_agreement
                    if report.top1_agreement < min_top1_agreement:
                        pair.passed = False
                        pair.why = (f"accuracy: top-1 agreement {report.top1_agreement:.2%} < "
                                    f"{min_top1_agreement:.2%} on {report.images} images")
        except Exception as exc:  # one pair that does not build leaves the others
            log.exception("tune: %s %s did not build", engine, precision)
            pair.passed, pair.why = False, f"build failed: {type(exc).__name__}: {exc}"
        built.append(pair)
    return built


def candidate_config(raw: dict[str, object], candidate: Candidate, p99_ms: float) -> dict[str, object]:
    """The model's config (``raw``, as read from its config.yaml) with ``candidate`` laid over it."""
    config = merge_config(raw, candidate.config_overlay(p99_ms))
    batching = config["dynamic_batching"]
    assert isinstance(batching, dict)
    if "latency_target_ms" in batching:  # adaptive: the fixed batcher's knobs do not apply
        batching.pop("max_queue_delay_ms", None)
        batching.pop("preferred_batch_sizes", None)
    else:
        batching.pop("latency_target_ms", None)
        batching["preferred_batch_sizes"] = [b for b in batching.get("preferred_batch_sizes", [])
                                             if b <= candidate.max_batch_size]
    return config


def score_candidate(candidate: Candidate, built: BuiltPair, model: str, p99_ms: float,
                    payloads: list[Payload], high_rps: float, settings: MeasurementSettings,
                    iterations: int = 4) -> Score:
    """The candidate's goodput through a real server (its own workers) on 127.0.0.1."""
    if not built.passed:
        return Score(goodput_rps=0.0, why=built.why)
    built_model = built.repository / model
    overlay = candidate_config(raw_config(built.repository, model), candidate, p99_ms)
    with tempfile.TemporaryDirectory(prefix="resserve-tune-") as tmp:
        root = Path(tmp) / "repo"
        link_model_folder(built_model, root / model, overlay)
        ModelRepository(root).config(model)  # a candidate that does not validate fails here, not in a server
        extra = ["--no-build-missing", "--workers", str(candidate.workers)]
        with server_process(root, *extra, log_dir=Path(tmp), log_level="warning") as server:
            cpu = ServerCpu(server.process.pid)
            url = f"{server.url}/v2/models/{model}/classify"

            async def search() -> Score:
                async with LoadGenerator(url, payloads) as generator:
                    cpu.start()
                    found = await find_max_rate(generator, p99_ms, high_rps, settings, iterations=iterations)
                    used = cpu.stop()
                images = sum(p.point.completed for p in found.probes)
                server_s = sum(v for k, v in used.items() if k not in ("load generator", "idle"))
                why = "" if found.max_rate_rps > 0 else "; ".join(p.why for p in found.probes[-1:])
                return Score(goodput_rps=found.max_rate_rps, p99_ms=found.p99_ms,
                             cpu_ms_per_image=server_s * 1000 / images if images else None, why=why,
                             probes=[f"{p.rate_rps:.1f} req/s {'pass' if p.passed else 'fail'}: {p.why}"
                                     for p in found.probes])

            return asyncio.run(search())


def work_folder(base: Path | None = None) -> Path:
    """Where the tuner builds: ``base``, or ``$TMPDIR/resserve-tune-<uid>``."""
    folder = base or Path(tempfile.gettempdir()) / f"resserve-tune-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder
