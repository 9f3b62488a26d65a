"""Models in memory: engines, their batch queue, labels and contract, swapped without losing requests.

Loading happens off the event loop (engine sessions and warm-up take seconds). A reload builds
the new version completely, swaps it in, and only then drains the old one: requests already
queued on the old version finish there, new ones go to the new version, none fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import numpy as np

from resserve.config import ModelConfig, ServerSettings
from resserve.contract import PreprocessContract
from resserve.engines.base import Engine, PixelInput, TensorSpec
from resserve.engines.factory import open_engine
from resserve.errors import ModelNotFoundError, ModelNotReadyError
from resserve.agreement import LoadCheck
from resserve.metadata import ModelMetadata, RuntimeRecord
from resserve.metrics import Metrics
from resserve.preprocess import DecodeOptions
from resserve.redact import failure_reason, weights_name, without_paths
from resserve.repository import ModelRepository, ModelVersion
from resserve.serving.adaptive import SloBatchPolicy
from resserve.serving.batching import BatchQueue, Runner
from resserve.serving.faults import FaultyRunner
from resserve.serving.load_check import load_check
from resserve.serving.lifecycle import Lifecycle, ModelRecord
from resserve.serving.release import Release
from resserve.serving.observers import Observer, Observers
from resserve.serving.sinks import PrometheusSink, StatisticsSink, TracingSink
from resserve.serving.statistics import ModelStatistics
from resserve.serving.watchdog import Watchdog
from resserve.tracing import OFF, Tracing

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One model version answering requests."""

    name: str
    version: str
    config: ModelConfig
    metadata: ModelMetadata
    contract: PreprocessContract
    labels: list[str]
    engines: list[Engine]
    queue: BatchQueue
    decode_options: DecodeOptions
    statistics: ModelStatistics
    observers: Observers  # metrics, statistics and spans of this version: the pipeline and queue tell it
    watchdog: Watchdog  # whether the engine answers (every instance stuck: not ready, 503)
    # gpu_decode: encoded image -> (tensor, decode s, transform s) on the GPU, or None for the CPU path
    gpu_decoder: Callable[[bytes], tuple[np.ndarray, float, float] | None] | None = None
    load_check: LoadCheck | None = None  # the re-check on this CPU, when the report was measured on another
    record: ModelRecord | None = None  # its lifecycle, owned by the manager's Lifecycle
    loaded_at: float = field(default_factory=time.time)
    admitted: int = 0  # images past admission: preprocessing or queued (event-loop only)
    requests: int = 0  # requests that found this version and are not answered yet (event-loop only)
    # The engine's tensors, read once while it is open: a request that found this version just
    # before it was retired still reads them after its engines closed.
    input_spec: TensorSpec = field(init=False)
    output_spec: TensorSpec = field(init=False)

    def __post_init__(self) -> None:
        self.input_spec = self.engines[0].input_spec
        self.output_spec = self.engines[0].output_spec

    @property
    def capacity(self) -> int:
        """Images the model admits at once: its queue plus one running batch per engine instance."""
        return capacity_of(self.config)

    @property
    def engine_healthy(self) -> bool:
        """False while the watchdog sees every engine instance stuck."""
        return not self.watchdog.hung

    @property
    def serving(self) -> bool:
        """Its record is READY with this instance (a reload swaps the instance) and the engine answers."""
        return self.record is not None and self.record.served is self and self.record.serving

    @property
    def random_weights(self) -> bool:
        return self.metadata.random_weights

    @property
    def runtime(self) -> RuntimeRecord:
        """What serves: engine, instruction-set class, precision, int8 kernels."""
        return RuntimeRecord.model_validate(self.engines[0].runtime())

    def describe(self) -> dict[str, Any]:
        """The ``resserve`` section of ``/v2/models/{name}``: facts about the model, files by name only."""
        return without_paths({
            "name": self.name,
            "version": self.version,
            "ready": self.serving,
            "engine_healthy": self.engine_healthy,
            "engine": self.engines[0].describe(),
            "runtime": self.runtime.model_dump(),
            "load_check": self.load_check.model_dump() if self.load_check else None,
            "instances": len(self.engines),
            "max_batch_size": self.config.max_batch_size,
            "arch": self.metadata.arch,
            "weights": weights_name(self.metadata.weights_source),
            "random_weights": self.random_weights,
            "preprocess": self.contract.model_dump(mode="json"),
            "classes": len(self.labels),
        })


class ModelManager:
    """Loads, serves, reloads and unloads the repository's models."""

    def __init__(self, repository: ModelRepository, settings: ServerSettings, metrics: Metrics,
                 tracing: Tracing = OFF) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.lifecycle = Lifecycle(metrics)  # every model's phase: the one owner of lifecycle state
        self._lock = asyncio.Lock()
        self.releases: dict[str, Release] = {}  # routing and the canary, per model name
        self.unloaded: set[str] = set()  # unloaded on request: polling does not bring them back

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The served model, or ModelNotFoundError / ModelNotReadyError. An unversioned request
        goes where the model's release routes it (``traffic.split``, a promotion, else the newest);
        one that names a version gets that version or an error, never another."""
        if self.lifecycle.current(name) is None:
            if self.repository.has(name):
                raise ModelNotReadyError(f"Request for unknown model: '{name}' has no available versions "
                                         "(it is not loaded)")
            raise ModelNotFoundError(f"Request for unknown model: '{name}' is not found")
        if version is None and (serving := self.serving_versions(name)):
            release = self.releases.get(name)
            version = release.route(serving) if release is not None else serving[-1]
        return self.lifecycle.served(name, version)

    def serving_versions(self, name: str) -> list[str]:
        """The versions of ``name`` that answer now, oldest first."""
        return sorted((r.version for r in self.lifecycle.records(name) if r.serving), key=int)

    def version_served(self, name: str, version: str) -> ServedModel | None:
        """``name`` at ``version`` if it answers now (a shadow's candidate), else None."""
        record = next((r for r in self.lifecycle.records(name) if r.version == version), None)
        return record.served if record is not None and record.serving else None

    def successor(self, served: ServedModel, pinned: bool = False) -> ServedModel | None:
        """What answers in place of a retired ``served``, if it takes the same tensors: a reload of
        the same version first; for a request that did not name its version, then where the
        release routes now, then any other version that serves (newest first).

        A request looks its model up before its body has arrived and been preprocessed; one that
        did so just before a reload (or before its version left the policy) finds the old queue
        closed and is answered here.
        """
        found = [self.version_served(served.name, served.version)]
        if not pinned:
            with contextlib.suppress(ModelNotFoundError, ModelNotReadyError):
                found.append(self.get(served.name))
            found.extend(self.version_served(served.name, v) for v in reversed(self.serving_versions(served.name)))
        for candidate in found:
            if candidate is not None and candidate is not served and interchangeable(served, candidate):
                return candidate
        return None

    def loaded(self) -> list[ServedModel]:
        return self.lifecycle.serving_models()

    async def load(self, name: str, version: str | None = None) -> ServedModel:
        """Load (or reload) the versions ``name``'s ``version_policy`` names, or just ``version``;
        each version that already serves goes on serving until its new instance is ready. Versions
        that left the policy are then drained and released, once every version in it serves (a
        corrupt new version leaves the old one serving). A failure is recorded (FAILED, or
        beside the version still serving) and raised once every version was tried. Returns the
        newest version loaded."""
        self.unloaded.discard(name)
        try:
            config, built = await asyncio.to_thread(self.policy_of, name)
        except Exception as exc:
            self.lifecycle.fail(name, self._failure(name, exc))
            raise
        wanted = [version] if version is not None else config.version_policy.choose(built)
        if not wanted:
            exc = ModelNotFoundError(f"model {name!r}: no built version is in its version_policy "
                                     f"({config.version_policy.model_dump(exclude_none=True, exclude_defaults=True)}; "
                                     f"built: {', '.join(built) or 'none'})")
            self.lifecycle.fail(name, self._failure(name, exc))
            raise exc
        self.configure_release(name, config)
        loaded: ServedModel | None = None
        failure: BaseException | None = None
        for each in wanted:
            try:
                loaded = await self._load_version(name, each)
            except Exception as exc:  # the next version is still tried; CancelledError is not caught
                failure = failure or exc
        if failure is not None:  # versions outside the policy keep serving until every one in it does
            raise failure
        if version is None:
            await self.retire_outside(name, set(wanted))
        assert loaded is not None
        return loaded

    def policy_of(self, name: str) -> tuple[ModelConfig, list[str]]:
        """``name``'s config as the folder says now, and its built versions (reads files)."""
        return self.repository.config(name), self.repository.versions(name)

    def configure_release(self, name: str, config: ModelConfig) -> None:
        """``name``'s routing follows ``config.traffic`` and the decisions on disk from now on."""
        release = self.releases.get(name)
        if release is None:
            self.releases[name] = Release(name, self.repository.root / name, config.traffic)
        else:
            release.configure(config.traffic)
            release.reread()

    async def retire_outside(self, name: str, keep: set[str]) -> list[str]:
        """Drain and release the READY versions of ``name`` not in ``keep`` (they left the policy);
        the versions retired."""
        async with self._lock:
            leaving = [r for r in self.lifecycle.records(name) if r.phase == "READY" and r.version not in keep]
            for record in leaving:
                self.lifecycle.unloading(record)
        for record in leaving:
            assert record.served is not None
            log.info("model %s version %s left the version policy: draining it", name, record.version)
            await self._retire(record.served, record)
        return [r.version for r in leaving]

    async def _load_version(self, name: str, version: str) -> ServedModel:
        """Load (or reload) one version; where it already serves, the old instance is retired once
        the new one is ready."""
        async with self._lock:
            try:
                # Reading the metadata parses the whole ONNX file: keep it off the event loop.
                model_version = await asyncio.to_thread(self.repository.version, name, version)
            except Exception as exc:
                self.lifecycle.fail(name, self._failure(name, exc), version)
                raise
            record = self.lifecycle.loading(name, model_version.version)
            try:
                served = await asyncio.to_thread(self._open, model_version, record)
                await served.queue.start()
            except BaseException as exc:  # CancelledError too (shutdown): never left LOADING
                self.lifecycle.fail(name, self._failure(name, exc), model_version.version)
                raise
            previous = record.served if record.phase == "READY" else None
            self.lifecycle.ready(record, served)
            self.metrics.model_runtime.labels(name, served.version, *_runtime_labels(served.runtime)).set(1)
            log.info("model %s version %s ready (%s)", name, served.version,
                     "RANDOM weights" if served.random_weights else served.metadata.weights_source)
        if previous is not None:
            await self._retire(previous, None)
        return served

    def _failure(self, name: str, exc: BaseException) -> str:
        """Log why ``name`` did not load (with the traceback); the short, path-free reason."""
        reason = failure_reason(exc, self.repository.root)
        log.error("model %s not loaded: %s", name, reason, exc_info=exc)
        return reason

    async def unload(self, name: str) -> None:
        """Stop routing to ``name``, finish its queued requests, release its engines. Repository
        polling leaves it unloaded until a load asks for it again."""
        async with self._lock:
            records = [r for r in self.lifecycle.records(name) if r.phase == "READY"]
            if not records:  # nothing changes: a failure on record stays on record
                raise ModelNotFoundError(f"model {name!r} is not loaded")
            self.unloaded.add(name)
            for record in records:
                self.lifecycle.unloading(record)
        self.lifecycle.forget_failures(name)
        for record in records:
            assert record.served is not None
            await self._retire(record.served, record)

    async def close(self) -> None:
        """Drain and release every model (shutdown)."""
        async with self._lock:
            # UNLOADING too: a drain that shutdown cancelled (the poller's) left its queue open.
            records = [r for r in self.lifecycle if r.phase in ("READY", "UNLOADING") and r.served is not None]
            for record in records:
                if record.phase == "READY":
                    self.lifecycle.unloading(record)
        await asyncio.gather(*(self._retire(r.served, r) for r in records))  # type: ignore[arg-type]

    async def _retire(self, served: ServedModel, record: ModelRecord | None) -> None:
        """Drain the model's queue (at most ``graceful_shutdown_s``), then release its engines.

        ``record``: the record it served under, forgotten once released, unless a reload of the
        same version now serves under it. Each engine closes on its own engine thread once the
        batch it may still be running has returned: never under a running batch, never on the
        event loop (TensorRT's close waits for its CUDA stream).
        """
        if record is not None and record.served is served:
            if record.phase == "READY":
                self.lifecycle.unloading(record)
        # The runtime gauge goes unless a new instance of the same version, same runtime, serves on.
        still = next((r.served for r in self.lifecycle.records(served.name) if r.version == served.version
                      and r.phase == "READY" and r.served is not None and r.served is not served), None)
        if still is None or _runtime_labels(still.runtime) != _runtime_labels(served.runtime):
            try:
                self.metrics.model_runtime.remove(served.name, served.version, *_runtime_labels(served.runtime))
            except KeyError:
                pass
        budget_s = self.settings.graceful_shutdown_s
        started = time.monotonic()
        # Requests that found it and are still reading or preprocessing queue here, not on a
        # successor that may take other tensors (or none, for a request that named this version):
        # wait for them, and for shadows on it, within the budget, before closing.
        while (served.requests > 0 or served.admitted > 0) and time.monotonic() - started < budget_s:
            await asyncio.sleep(0.01)
        await served.queue.close(timeout_s=max(0.0, budget_s - (time.monotonic() - started)),
                                 finalizers=[engine.close for engine in served.engines])
        if record is not None and record.served is served:
            self.lifecycle.forget(record)
        if await served.queue.released(max(0.0, budget_s - (time.monotonic() - started))):
            log.info("model %s version %s released", served.name, served.version)
        else:
            log.info("model %s version %s retired; its engines close on their own threads once their running "
                     "batches return", served.name, served.version)

    def _open(self, model_version: ModelVersion, record: ModelRecord | None = None) -> ServedModel:
        """Create, load and warm every instance (runs in a worker thread)."""
        config = model_version.config
        # Before any engine is opened: a machine without a GPU fails this model at once, nothing to release.
        gpu = (gpu_decoder(model_version.contract, DecodeOptions(max_pixels=self.settings.max_image_pixels,
                                                                        max_jpeg_scans=self.settings.max_jpeg_scans))
               if config.gpu_decode else None)
        engines: list[Engine] = []
        try:
            for _ in range(config.instance_count):
                # ONNX Runtime keeps its spinning intra-op threads: measured end to end to help, not to
                # starve preprocessing (docs/engines-and-precision.md, Measured behind the defaults).
                engine = serving_engine(model_version)
                engines.append(engine)
                warm_s = engine.warmup(tuple(config.warmup_batch_sizes))
                log.info("model %s: engine warmed up in %.2f s", config.name, warm_s)
            # Every instance runs the same file with the same options: checking one checks them all.
            checked = load_check(model_version, engines[0])
        except BaseException:
            for engine in engines:
                engine.close()
            raise
        num_classes = engines[0].output_spec.shape[-1]
        batching = config.dynamic_batching
        runners: list[Runner] = [e.infer for e in engines]
        if config.fault_injection is not None:
            log.warning("model %s: FAULT INJECTION is on (%s): for tests and drills only", config.name,
                        config.fault_injection.model_dump(exclude_none=True))
            runners = [FaultyRunner(r, config.fault_injection) for r in runners]
        policy = None
        if batching.latency_target_ms is not None:
            target_s = batching.latency_target_ms / 1000.0
            policy = SloBatchPolicy(target_s=target_s, max_batch_size=config.max_batch_size, max_wait_s=target_s / 2,
                                    instances=config.instance_count)
        statistics = ModelStatistics(config.name, model_version.version)
        sinks: list[Observer] = [PrometheusSink(self.metrics, config.name, model_version.version),
                                 StatisticsSink(statistics)]
        if self.tracing.enabled:
            sinks.append(TracingSink(self.tracing, config.name, model_version.version))
        observers = Observers(sinks)
        # The watchdog's verdict: a stuck engine takes the model (and the pod) out of readiness.
        watchdog = Watchdog(config.name, config.engine_timeout_s,
                            (lambda healthy: self.lifecycle.health_changed(record)) if record is not None else None)
        queue = BatchQueue(
            runners,
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=batching.max_queue_delay_ms,
            # Admission (the request pipeline) is the one limit; the queue's own bound is a backstop
            # that admitted requests never reach, so no image is refused after it was decoded.
            max_queue_size=capacity_of(config),
            preferred_batch_sizes=batching.preferred_batch_sizes,
            policy=policy,
            observer=observers,
            watchdog=watchdog,
            model=config.name,
            version=model_version.version,
        )
        served = ServedModel(
            name=config.name,
            version=model_version.version,
            config=config,
            metadata=model_version.metadata,
            contract=model_version.contract,
            labels=model_version.labels(num_classes),
            engines=engines,
            queue=queue,
            statistics=statistics,
            observers=observers,
            watchdog=watchdog,
            decode_options=DecodeOptions(max_pixels=self.settings.max_image_pixels,
                                         max_jpeg_scans=self.settings.max_jpeg_scans,
                                         fast_jpeg_draft=config.fast_jpeg_decode,
                                         fast_transform=config.fast_preprocess,
                                         # What the engine takes, not what was asked: engine auto
                                         # may have resolved to one without pixel input.
                                         uint8_pixels=engines[0].input_spec.dtype == np.uint8),
            gpu_decoder=gpu,
            load_check=checked,
            record=record,
        )
        return served


def _runtime_labels(runtime: RuntimeRecord) -> tuple[str, ...]:
    return (runtime.engine, runtime.isa, runtime.precision or "", runtime.inference_precision or "",
            runtime.int8_kernels or "")


def capacity_of(config: ModelConfig) -> int:
    """Images a model admits at once: ``max_queue_size`` plus one running batch per instance."""
    return config.dynamic_batching.max_queue_size + config.max_batch_size * config.instance_count


def gpu_decoder(contract: PreprocessContract, options: DecodeOptions) -> Callable[[bytes], Any]:
    """nvJPEG decode and GPU preprocessing for one model; EngineUnavailableError (the model fails to
    load, the others serve) where torch, CUDA or torchvision is missing."""
    from resserve.preprocess.gpu import GpuImageDecoder  # imports torch when it runs, not before

    return GpuImageDecoder(contract, options)


def serving_engine(model_version: ModelVersion) -> Engine:
    """One loaded engine instance as the server runs it: with ``uint8_input`` it takes uint8 pixels
    and normalizes as the model's preprocessing contract says."""
    config = model_version.config
    pixels = PixelInput.from_contract(model_version.contract) if config.uint8_input else None
    return open_engine(model_version.variant, config, model_version.folder, pixels)


def interchangeable(a: ServedModel, b: ServedModel) -> bool:
    """Whether a request prepared for ``a`` can be answered by ``b`` (same tensors in and out)."""
    return (
        a.contract == b.contract
        and len(a.labels) == len(b.labels)
        and a.input_spec == b.input_spec
        and a.output_spec == b.output_spec
        and a.config.softmax_in_model == b.config.softmax_in_model
        and a.metadata.softmax == b.metadata.softmax
    )
