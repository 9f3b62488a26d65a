"""Variant sweeps: for each variant start a server, run the scenarios, collect one JSON result.

A sweep file (``loadtests/sweeps/*.yaml``) names models of a repository and, per variant, the
serving settings to try (max batch size, queue delay, instances). Those are serving-only settings,
so a variant runs from an *overlay* repository: a temporary folder whose model entry links to the
built artifacts and carries an edited ``config.yaml``: no rebuild, and the real repo untouched.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from resserve.perf.bench_engine import environment
from resserve.perf.server_process import server_process
from resserve.builder.build_pipeline import BuildPipeline
from resserve.errors import ConfigError
from resserve.perf.generator import Arrival, LoadGenerator
from resserve.perf.images import DEFAULT_SIZES, Payload, generate, load_folder
from resserve.perf.measure import LoadPoint, MeasurementSettings, closed_point, open_point
from resserve.perf.overhead import GeneratorOverhead, measure_overhead
from resserve.perf.search import RateSearch, find_max_rate
from resserve.repository import BUILD_RECORD, ModelRepository

log = logging.getLogger(__name__)


class ImagesSpec(BaseModel):
    """A folder of real images, or generated image-like JPEGs of these sizes."""

    folder: Path | None = None
    sizes: list[tuple[int, int]] = Field(default_factory=lambda: list(DEFAULT_SIZES))
    per_size: int = Field(8, ge=1)

    def load(self, base: Path) -> list[Payload]:
        if self.folder is not None:
            return load_folder(self.folder if self.folder.is_absolute() else base / self.folder)
        return generate(self.sizes, self.per_size)


class ClosedSpec(BaseModel):
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16], min_length=1)


class OpenSpec(BaseModel):
    """Fixed rates, or fractions of the variant's closed-loop peak (needs a closed sweep)."""

    rates_rps: list[float] = Field(default_factory=list)
    fractions_of_peak: list[float] = Field(default_factory=list)
    arrival: Arrival = "poisson"


class MaxRateSpec(BaseModel):
    """Binary search for the highest Poisson rate whose p99 stays within ``p99_ms``."""

    p99_ms: float = Field(250.0, gt=0)
    iterations: int = Field(5, ge=1, le=12)
    high_factor: float = Field(1.3, gt=1, description="upper end: this times the closed-loop peak")
    high_rps: float | None = Field(None, gt=0, description="upper end when there is no closed sweep")


class VariantSpec(BaseModel):
    """One model of the repository with the serving settings to run it under."""

    model: str
    label: str | None = None
    max_batch_size: int | None = Field(None, ge=1)
    max_queue_delay_ms: float | None = Field(None, ge=0)
    preferred_batch_sizes: list[int] | None = None
    instance_count: int | None = Field(None, ge=1)
    overrides: dict[str, Any] = Field(default_factory=dict, description="more config.yaml keys")

    def config_overrides(self) -> dict[str, Any]:
        out = copy.deepcopy(self.overrides)
        if self.max_batch_size is not None:
            out["max_batch_size"] = self.max_batch_size
        if self.instance_count is not None:
            out["instance_count"] = self.instance_count
        batching = out.setdefault("dynamic_batching", {})
        if self.max_queue_delay_ms is not None:
            batching["max_queue_delay_ms"] = self.max_queue_delay_ms
        if self.preferred_batch_sizes is not None:
            batching["preferred_batch_sizes"] = self.preferred_batch_sizes
        if not batching:
            del out["dynamic_batching"]
        return out

    def name(self) -> str:
        if self.label:
            return self.label
        parts = [self.model]
        if self.max_batch_size is not None:
            parts.append(f"b{self.max_batch_size}")
        if self.max_queue_delay_ms is not None:
            parts.append(f"d{self.max_queue_delay_ms:g}ms")
        if self.instance_count is not None:
            parts.append(f"x{self.instance_count}")
        return " ".join(parts)


class SweepConfig(BaseModel):
    """A sweep file."""

    name: str
    model_repo: Path = Path("model_repo")
    endpoint: str = "/v2/models/{model}/classify"
    images: ImagesSpec = Field(default_factory=ImagesSpec)
    measurement: MeasurementSettings = Field(default_factory=MeasurementSettings)
    closed: ClosedSpec | None = Field(default_factory=ClosedSpec)
    open: OpenSpec | None = None
    max_rate: MaxRateSpec | None = Field(default_factory=MaxRateSpec)
    server_args: list[str] = Field(default_factory=list, description="extra `resserve serve` options")
    measure_generator: bool = Field(True, description="first measure the generator against a trivial server")
    variants: list[VariantSpec] = Field(min_length=1)


class VariantResult(BaseModel):
    label: str
    model: str
    engine: str | None = None
    precision: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    accuracy: dict[str, Any] | None = None
    closed: list[LoadPoint] = Field(default_factory=list)
    open: list[LoadPoint] = Field(default_factory=list)
    max_rate: RateSearch | None = None
    error: str | None = None
    duration_s: float = 0.0

    def peak(self) -> LoadPoint | None:
        """The closed-loop point with the highest throughput."""
        return max(self.closed, key=lambda p: p.throughput_img_s, default=None)


class SweepResult(BaseModel):
    name: str
    started: str
    duration_s: float
    environment: dict[str, Any]
    sweep: SweepConfig
    generator_overhead: GeneratorOverhead | None = None
    variants: list[VariantResult]


def load_sweep(path: Path) -> SweepConfig:
    """Read and validate a sweep file; relative paths in it are taken from the current folder."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return SweepConfig.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the sweep: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, sections merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_config(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def link_model_folder(source: Path, target: Path, config: dict[str, Any], *, versions: bool = True) -> None:
    """``target``: the model folder ``source``'s files linked one by one (hidden ones aside, version
    folders only with ``versions``: a build must never write through them), ``config`` as its
    config.yaml."""
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "config.yaml" or entry.name.startswith(".") or (not versions and entry.name.isdigit()):
            continue
        (target / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def overlay_repo(repo: Path, variant: VariantSpec, into: Path) -> Path:
    """A repository in ``into`` with one model: links to ``repo``'s files, an edited config.yaml."""
    source = repo / variant.model
    raw = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8")) or {}
    merged = merge_config(raw, variant.config_overrides())
    batching = merged.get("dynamic_batching") or {}
    if variant.max_batch_size is not None and variant.preferred_batch_sizes is None and batching.get(
            "preferred_batch_sizes"):
        # A smaller max batch drops the model's preferred sizes above it rather than failing validation.
        batching["preferred_batch_sizes"] = [b for b in batching["preferred_batch_sizes"]
                                             if b <= variant.max_batch_size]
    link_model_folder(source, into / variant.model, merged)
    ModelRepository(into).config(variant.model)  # validate the edited config before a server sees it
    return into


async def _scenarios(sweep: SweepConfig, result: VariantResult, url: str, base_url: str,
                     payloads: list[Payload], say: Callable[[str], None]) -> None:
    scrape = {"metrics_url": f"{base_url}/metrics", "model": result.model}
    settings = sweep.measurement
    async with LoadGenerator(url, payloads) as generator:
        for concurrency in sweep.closed.concurrency if sweep.closed else []:
            point = await closed_point(generator, concurrency, settings, **scrape)
            result.closed.append(point)
            say(f"  {result.label} closed c={concurrency}: {point.throughput_img_s:.1f} img/s, "
                f"p99 {point.latency_ms.get('p99_ms', float('nan')):.0f} ms, {point.statuses}")
        peak = result.peak()
        if sweep.open:
            rates = list(sweep.open.rates_rps)
            if peak is not None:
                rates += [f * peak.throughput_img_s for f in sweep.open.fractions_of_peak]
            for rate in rates:
                point = await open_point(generator, rate, settings, sweep.open.arrival, **scrape)
                result.open.append(point)
                say(f"  {result.label} open {rate:.1f} rps: {point.throughput_img_s:.1f} img/s, "
                    f"p99 {point.latency_ms.get('p99_ms', float('nan')):.0f} ms, {point.statuses}")
        if sweep.max_rate:
            spec = sweep.max_rate
            high = spec.high_rps or (peak.throughput_img_s * spec.high_factor if peak else None)
            if high is None:
                raise ConfigError("max_rate needs high_rps when the sweep has no closed-loop points")
            result.max_rate = await find_max_rate(generator, spec.p99_ms, high, settings,
                                                  iterations=spec.iterations, **scrape)
            say(f"  {result.label} max Poisson rate with p99 <= {spec.p99_ms:g} ms: "
                f"{result.max_rate.max_rate_rps:.1f} rps")


def run_variant(sweep: SweepConfig, variant: VariantSpec, payloads: list[Payload],
                say: Callable[[str], None]) -> VariantResult:
    """Build the model if needed, serve it from an overlay repo, run every scenario."""
    started = time.perf_counter()
    result = VariantResult(label=variant.name(), model=variant.model)
    repo = ModelRepository(sweep.model_repo)
    try:
        builder = BuildPipeline(repo)
        if builder.is_stale(variant.model):
            say(f"{variant.model}: building")
            builder.build(variant.model, progress=say)
        version = repo.version(variant.model)
        record = json.loads((version.folder / BUILD_RECORD).read_text())
        result.engine, result.precision = version.variant.engine, version.variant.precision
        result.accuracy = record.get("accuracy")
        with tempfile.TemporaryDirectory(prefix="resserve-sweep-") as tmp:
            overlay = overlay_repo(sweep.model_repo, variant, Path(tmp))
            result.config = ModelRepository(overlay).config(variant.model).model_dump(
                mode="json", include={"max_batch_size", "dynamic_batching", "instance_count", "intra_op_threads"})
            with server_process(overlay, "--no-build-missing", *sweep.server_args, log_level="warning",
                                log_dir=Path(tmp)) as server:
                url = server.url + sweep.endpoint.format(model=variant.model)
                asyncio.run(_scenarios(sweep, result, url, server.url, payloads, say))
    except Exception as exc:  # one broken variant must not lose the others' results
        log.exception("variant %s failed", result.label)
        result.error = f"{type(exc).__name__}: {exc}"
    result.duration_s = time.perf_counter() - started
    return result


def run_sweep(sweep: SweepConfig, *, say: Callable[[str], None] = print,
              save: Callable[[SweepResult], None] | None = None) -> SweepResult:
    """Every variant in order; ``save`` gets the partial result after each (a crash keeps them)."""
    started, clock = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    payloads = sweep.images.load(Path.cwd())
    say(f"sweep {sweep.name}: {len(sweep.variants)} variants, {len(payloads)} images")
    result = SweepResult(name=sweep.name, started=started, duration_s=0.0, environment=environment(),
                         sweep=sweep, variants=[])
    if sweep.measure_generator:
        result.generator_overhead = measure_overhead(payloads)
        say(f"generator: {result.generator_overhead.cpu_us_per_request:.0f} us CPU per request, "
            f"{result.generator_overhead.requests_per_s:.0f} req/s against a trivial server")
    for variant in sweep.variants:
        result.variants.append(run_variant(sweep, variant, payloads, say))
        result.duration_s = time.perf_counter() - clock
        if save is not None:
            save(result)
    return result
