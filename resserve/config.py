"""Configuration as validated pydantic models: the model repository's ``config.yaml`` and the server.

A bad value fails at load with the file and the field named, never later during a request.

Example ``model_repo/resnet50/config.yaml``::

    source: {arch: resnet50, weights: "torchvision:ResNet50_Weights.IMAGENET1K_V2", fallback_random: true}
    engine: onnxruntime
    max_batch_size: 16
    dynamic_batching: {max_queue_delay_ms: 5, preferred_batch_sizes: [8, 16], max_queue_size: 256}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from resserve.contract import PreprocessContract
from resserve.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    """Where the model comes from: an architecture and weights, or an ONNX file."""

    arch: str | None = Field(None, description="resnet18 ... wide_resnet101_2")
    weights: str | None = Field(None, description=".pth/.safetensors path or torchvision:<Enum>.<MEMBER>")
    random_weights: bool = False
    seed: int = 0
    fallback_random: bool = Field(
        False, description="serve seeded random weights (announced) when `weights` cannot be obtained"
    )
    num_classes: int | None = Field(None, ge=1)
    onnx: str | None = Field(None, description="an ONNX file (relative to the model folder), folded at build")

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if (self.arch is None) == (self.onnx is None):
            raise ValueError("give exactly one of source.arch (with weights) or source.onnx")
        if self.arch is not None and (self.weights is None) == (not self.random_weights):
            raise ValueError("with source.arch give exactly one of source.weights or source.random_weights: true")
        return self


class FaultInjectionConfig(_Strict):
    """Make the engine fail or hang on purpose: reliability tests and chaos drills, never production."""

    fail_every_n_batches: int | None = Field(None, ge=1, description="every n-th batch raises (HTTP 500)")
    hang_every_n_batches: int | None = Field(None, ge=1, description="every n-th batch sleeps hang_s first")
    hang_s: float = Field(10.0, gt=0, le=3600)


class DynamicBatchingConfig(_Strict):
    """How requests are grouped into engine batches (Triton's dynamic batcher, same names)."""

    max_queue_delay_ms: float = Field(5.0, ge=0, le=10_000)
    latency_target_ms: float | None = Field(
        None, gt=0, le=600_000,
        description="p99 target: batch size and wait are then chosen online to meet it (adaptive batching); "
                    "max_queue_delay_ms and preferred_batch_sizes are not used")
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(256, ge=1, description="queued requests beyond this are answered 503")
    default_timeout_ms: float = Field(30_000, gt=0, description="deadline of a request that sets none")


class CalibrationConfig(_Strict):
    """Images for int8 calibration and for the accuracy report of reduced-precision variants."""

    images: str | None = Field(
        None, description="folder of images (relative to the model folder); default: generated placeholders"
    )
    count: int = Field(300, ge=1, le=100_000, description="calibration images")
    held_out: int = Field(200, ge=1, le=100_000, description="held-out images for the accuracy report")
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="a build below this fails")


class OpenVinoConfig(_Strict):
    """OpenVINO runtime options."""

    performance_hint: Literal["THROUGHPUT", "LATENCY"] = "LATENCY"  # measured: ties at batch 8-16, 1.5x at batch 1
    num_streams: int | None = Field(None, ge=1)
    inference_threads: int | None = Field(None, ge=1)


# Which precisions each engine builds; checked at config load so a typo fails early.
ENGINE_PRECISIONS: dict[str, set[str]] = {
    "onnxruntime": {"fp32", "fp16", "int8"},
    "openvino": {"fp32", "bf16", "int8"},
    "tensorrt": {"fp32", "fp16", "int8"},
    "torch": {"fp32", "bf16", "fp16"},
}


class ModelConfig(_Strict):
    """One model of the repository: ``model_repo/<name>/config.yaml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    source: SourceConfig
    engine: Literal["auto", "onnxruntime", "openvino", "tensorrt", "torch"] = "onnxruntime"
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = "cpu"
    intra_op_threads: int | None = Field(None, ge=1, description="default: all cores")
    max_batch_size: int = Field(16, ge=1, le=1024)
    dynamic_batching: DynamicBatchingConfig = Field(default_factory=DynamicBatchingConfig)
    instance_count: int = Field(1, ge=1, le=64)
    labels: str | None = Field(None, description="label file relative to the model folder; default: from the model")
    preprocess: PreprocessContract | None = Field(None, description="default: the contract the model records")
    softmax_in_model: bool = Field(False, description="the model already ends in softmax")
    fast_jpeg_decode: bool = Field(
        False, description="decode large JPEGs at reduced DCT scale (faster, slightly different tensor)"
    )
    fast_preprocess: bool = Field(
        False, description="resize only the crop window, fused normalize (faster, ~0.006 mean deviation)")
    uint8_input: bool = Field(
        False, description="preprocessing stops at uint8 pixels; the engine normalizes inside the model "
        "(onnxruntime, openvino). OIP tensor requests then send UINT8 [N, H, W, 3] pixels")
    warmup_batch_sizes: list[int] = Field(default_factory=lambda: [1])
    engine_timeout_s: float | None = Field(
        60.0, gt=0, description="watchdog: a batch running longer marks the model not ready until it returns")
    fault_injection: FaultInjectionConfig | None = None
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    openvino: OpenVinoConfig = Field(default_factory=OpenVinoConfig)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.engine != "auto" and self.precision not in ENGINE_PRECISIONS[self.engine]:
            raise ValueError(
                f"engine {self.engine} does not build precision {self.precision}; "
                f"it builds {', '.join(sorted(ENGINE_PRECISIONS[self.engine]))}"
            )
        if self.engine == "torch" and self.source.arch is None:
            raise ValueError("engine torch needs source.arch (it runs the PyTorch model, not an ONNX file)")
        if self.uint8_input and self.engine in ("torch", "tensorrt"):
            raise ValueError(f"uint8_input needs the onnxruntime or openvino engine, not {self.engine}")
        bad = [b for b in self.dynamic_batching.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})")
        return self


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate a ``config.yaml``; the model name defaults to its folder's name."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.parent.name)
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


class ServerSettings(BaseSettings):
    """Server-wide settings; every field can be set as ``RESSERVE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RESSERVE_", extra="forbid")

    model_repo: Path = Path("model_repo")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    models: list[str] | None = Field(None, description="load only these models (default: all)")
    preprocess_threads: int | None = Field(None, ge=1, description="default: the cores")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_multipart_files: int = Field(64, ge=1)
    max_top_k: int = Field(1000, ge=1)
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request headers above this: 431")
    max_connections: int = Field(512, ge=1, description="concurrent connections and requests; beyond: 503")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")
    http_parser: Literal["httptools", "h11"] = Field(
        "httptools", description="httptools is faster; h11 also caps header bytes while parsing")
    control_token: str | None = Field(None, description="bearer token for repository control endpoints")
    allow_repository_control: bool = Field(False, description="enable load/unload without a token")
    graceful_shutdown_s: float = Field(30.0, ge=0)
    build_missing: bool = Field(True, description="build missing or stale artifacts at start")
