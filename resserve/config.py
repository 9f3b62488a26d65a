"""Configuration as validated pydantic models: the model repository's ``config.yaml`` and the server.

A bad value fails at load with the file and the field named, never later during a request.

Example ``model_repo/resnet50/config.yaml``::

    source: {arch: resnet50, weights: "torchvision:ResNet50_Weights.IMAGENET1K_V2", fallback_random: true}
    engine: onnxruntime
    max_batch_size: 16
    dynamic_batching: {max_queue_delay_ms: 5, preferred_batch_sizes: [8, 16], max_queue_size: 256}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from resserve.engine_registry import ENGINE_NAMES, ENGINES, PRECISION_NAMES, SOURCE_WEIGHT_ENGINES
from resserve.contract import PreprocessContract
from resserve.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Declared beside each field a build depends on (ModelConfig.build_spec): "always"; "reduced"
# (below fp32: calibration and the accuracy report); an engine's name (only its artifacts depend
# on it); "nested" (a section some of whose fields are inputs).
def _build_input(when: str) -> dict[str, Any]:
    return {"build_input": when}


def _build_spec(section: BaseModel, engine: str, reduced: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for name, info in type(section).model_fields.items():
        extra = info.json_schema_extra
        when = extra.get("build_input") if isinstance(extra, dict) else None
        value = getattr(section, name)
        if when == "nested":
            if inner := _build_spec(value, engine, reduced):
                spec[name] = inner
        elif when == "always" or (when == "reduced" and reduced) or when == engine:
            spec[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return spec


# Weights given by name rather than by file: fetched into a cache, never relative to a model folder.
WEIGHTS_NAME_PREFIXES = ("torchvision:", "timm:")


def is_weights_name(weights: str) -> bool:
    """Whether ``weights`` names published weights (``torchvision:...``, ``timm:...``), not a file."""
    return weights.startswith(WEIGHTS_NAME_PREFIXES)


class SourceConfig(_Strict):
    """Where the model comes from: an architecture and weights, or an ONNX file."""

    arch: str | None = Field(None, description="resnet18 ... wide_resnet101_2; timm's resnet50d, seresnet50, resnetrs50 ...")
    weights: str | None = Field(
        None, description=".pth/.safetensors path, torchvision:<Enum>.<MEMBER> or timm:<model>.<tag>")
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
    preferred_batch_sizes: list[int] = Field(default_factory=list, json_schema_extra=_build_input("tensorrt"))
    max_queue_size: int = Field(256, ge=1, description="images (or tensor rows) queued at once; beyond, requests are answered 503")
    default_timeout_ms: float = Field(30_000, gt=0, description="deadline of a request that sets none")


class CalibrationConfig(_Strict):
    """Images for int8 calibration and for the accuracy report of reduced-precision variants."""

    images: str | None = Field(
        None, description="folder of images (relative to the model folder); default: generated placeholders",
        json_schema_extra=_build_input("reduced"),
    )
    count: int = Field(300, ge=1, le=100_000, description="calibration images", json_schema_extra=_build_input("reduced"))
    held_out: int = Field(200, ge=1, le=100_000, description="held-out images for the accuracy report",
                          json_schema_extra=_build_input("reduced"))
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="a build below this fails")
    check_images: int = Field(
        32, ge=0, le=1024, description="held-out images stored with the artifact (JPEG crops, ~15 kB each, and both "
        "models' logits) for the load-time check on another CPU; 0: none", json_schema_extra=_build_input("reduced"))
    load_check: Literal["auto", "always", "off"] = Field(
        "auto", description="re-check agreement on the stored images before the model turns ready: auto, when "
        "the accuracy report was measured on another instruction-set class (AVX2, AVX-512, VNNI, AMX); always; "
        "off")


class OnnxRuntimeConfig(_Strict):
    """ONNX Runtime options."""

    int8_exact_kernels: Literal["auto", "on", "off"] = Field(
        "auto", description="exact int8 CPU kernels (session.x64quantprecision): auto, where this CPU's u8 x s8 "
        "kernels saturate (AVX2, AVX-512 without VNNI; probed at load); on: everywhere (slower on VNNI); off: never")


class OpenVinoConfig(_Strict):
    """OpenVINO runtime options."""

    performance_hint: Literal["THROUGHPUT", "LATENCY"] = "LATENCY"  # why: resserve/engines/openvino.py
    num_streams: int | None = Field(None, ge=1)
    inference_threads: int | None = Field(None, ge=1)


class VersionPolicy(_Strict):
    """Which built versions serve at once (Triton's version_policy): the newest ``latest``, ``all``,
    or the ``specific`` ones. Read at load; changing it rebuilds nothing."""

    latest: int | None = Field(None, ge=1, le=100)
    all: bool = False
    specific: list[int] | None = Field(None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        given = (self.latest is not None) + self.all + (self.specific is not None)
        if given > 1:
            raise ValueError("give one of version_policy.latest, .all or .specific")
        if given == 0:
            self.latest = 1
        if self.specific is not None and any(v < 1 for v in self.specific):
            raise ValueError("version_policy.specific lists version numbers (1 and up)")
        return self

    def choose(self, built: Sequence[str]) -> list[str]:
        """The built versions (numeric strings, oldest first) this policy serves, oldest first."""
        if self.all:
            return list(built)
        if self.specific is not None:
            wanted = {str(v) for v in self.specific}
            return [v for v in built if v in wanted]
        return list(built)[-(self.latest or 1):]


class ShadowConfig(_Strict):
    """Mirror a share of requests to a candidate; the client always gets the primary's answer."""

    target: str = Field(description='a version of this model ("2"), or "model:<name>" (another model, same labels)')
    fraction: float = Field(gt=0, le=1)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not ((value.isascii() and value.isdigit()) or (value.startswith("model:") and len(value) > len("model:"))):
            raise ValueError(f'shadow.target is a version number ("2") or "model:<name>", not {value!r}')
        return value

    @property
    def version(self) -> str | None:
        """The candidate version of this model, or None for another model."""
        return self.target if self.target.isascii() and self.target.isdigit() else None

    @property
    def model(self) -> str | None:
        return None if self.target.isascii() and self.target.isdigit() else self.target.removeprefix("model:")


class PromoteConfig(_Strict):
    """Act on the shadow comparison once ``min_compared`` images were compared."""

    min_compared: int = Field(500, ge=1)
    min_top1_agreement: float = Field(0.99, ge=0, le=1)
    max_p99_ratio: float = Field(1.25, gt=0, description="candidate p99 / primary p99")
    action: Literal["promote", "report"] = "promote"


class TrafficConfig(_Strict):
    """Where unversioned requests go, and what is compared on the side. Read at load; changing it
    rebuilds nothing."""

    split: dict[str, int] | None = Field(
        None, description='unversioned requests by weight over versions ({"1": 90, "2": 10}); default: the newest')
    shadow: ShadowConfig | None = None
    promote: PromoteConfig | None = None

    @field_validator("split")
    @classmethod
    def _split(cls, split: dict[str, int] | None) -> dict[str, int] | None:
        if split is None:
            return None
        if not split or any(not (v.isascii() and v.isdigit()) for v in split) or any(w < 0 for w in split.values()) \
                or sum(split.values()) <= 0:
            raise ValueError("traffic.split maps version numbers to weights (0 or more, at least one above 0)")
        return {str(int(v)): w for v, w in split.items()}

    @model_validator(mode="after")
    def _promote_needs_a_version(self) -> TrafficConfig:
        if self.promote is not None and self.shadow is None:
            raise ValueError("traffic.promote acts on a shadow comparison: give traffic.shadow too")
        if self.promote is not None and self.promote.action == "promote" and self.shadow is not None \
                and self.shadow.version is None:
            raise ValueError("traffic.promote action promote takes a version of this model as shadow.target; "
                             "another model can only be reported on (action: report)")
        return self


# The engines and what each builds come from the one registry (resserve/engine_registry.py); the
# Literal types give pydantic its validation and messages.
ENGINE_PRECISIONS: dict[str, tuple[str, ...]] = {spec.name: spec.precisions for spec in ENGINES}
EngineName = Literal[ENGINE_NAMES]  # type: ignore[valid-type]
PrecisionName = Literal[PRECISION_NAMES]  # type: ignore[valid-type]
# The engines that can normalize inside the model, fed uint8 pixels (uint8_input).
PIXEL_INPUT_ENGINES: tuple[str, ...] = tuple(spec.name for spec in ENGINES if spec.pixel_input)


class ModelConfig(_Strict):
    """One model of the repository: ``model_repo/<name>/config.yaml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    source: SourceConfig = Field(json_schema_extra=_build_input("always"))
    engine: Literal["auto", EngineName] = Field("onnxruntime", json_schema_extra=_build_input("always"))
    precision: PrecisionName = Field("fp32", json_schema_extra=_build_input("always"))
    # A TensorRT plan is built for one GPU and one set of optimization profiles.
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = Field("cpu", json_schema_extra=_build_input("tensorrt"))
    intra_op_threads: int | None = Field(None, ge=1, description="default: all cores")
    max_batch_size: int = Field(16, ge=1, le=1024, json_schema_extra=_build_input("tensorrt"))
    dynamic_batching: DynamicBatchingConfig = Field(default_factory=DynamicBatchingConfig,
                                                    json_schema_extra=_build_input("nested"))
    instance_count: int = Field(1, ge=1, le=64)
    labels: str | None = Field(None, description="label file inside the model folder (a relative path); "
                                                 "default: from the model")
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
    gpu_decode: bool = Field(
        False, description="decode JPEGs with nvJPEG and preprocess on the GPU (torch with CUDA and torchvision); "
        "headers are checked by Pillow first, other formats and EXIF-rotated JPEGs take the CPU path")
    warmup_batch_sizes: list[int] = Field(default_factory=lambda: [1])
    engine_timeout_s: float | None = Field(
        60.0, gt=0, description="watchdog: a batch running longer marks the model not ready until it returns")
    fault_injection: FaultInjectionConfig | None = None
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, json_schema_extra=_build_input("nested"))
    openvino: OpenVinoConfig = Field(default_factory=OpenVinoConfig)
    onnxruntime: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig)

    def build_spec(self, engine: str) -> dict[str, Any]:
        """The settings a build on ``engine`` depends on, as declared beside each field: what the
        build's content hash covers. Everything else (batching delays, instances, labels, threads,
        the agreement floor) is read at load: changing it needs a reload, never a rebuild."""
        return _build_spec(self, engine, self.precision != "fp32")

    @field_validator("labels")
    @classmethod
    def _labels_inside_the_folder(cls, value: str | None) -> str | None:
        if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts or not value.strip()):
            raise ValueError(f"labels must be a file inside the model folder (a relative path without '..'), "
                             f"not {value!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.engine != "auto" and self.precision not in ENGINE_PRECISIONS[self.engine]:
            raise ValueError(
                f"engine {self.engine} does not build precision {self.precision}; "
                f"it builds {', '.join(sorted(ENGINE_PRECISIONS[self.engine]))}"
            )
        if self.engine in SOURCE_WEIGHT_ENGINES and self.source.arch is None:
            raise ValueError(f"engine {self.engine} needs source.arch (it runs the PyTorch model, not an ONNX file)")
        if self.uint8_input and self.engine not in ("auto", *PIXEL_INPUT_ENGINES):
            raise ValueError(f"uint8_input needs the {' or '.join(PIXEL_INPUT_ENGINES)} engine, not {self.engine}")
        if self.engine == "onnxruntime" and self.precision == "int8" and self.device == "tensorrt":
            raise ValueError("engine onnxruntime, precision int8 cannot run on device tensorrt: ONNX Runtime's "
                             "TensorRT provider takes int8 only as symmetric signed Q/DQ, and resserve's "
                             "onnxruntime int8 build is unsigned for the CPU; use device cuda, or engine tensorrt")
        if self.gpu_decode and self.uint8_input:
            raise ValueError("gpu_decode makes the float input tensor on the GPU; it cannot feed a uint8_input model")
        bad = [b for b in self.dynamic_batching.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})")
        return self


def default_cache(url: str) -> Path:
    """Where a remote repository is mirrored: ``$TMPDIR/resserve-remote-<uid>-<hash of the URL>``,
    per user and per repository; one level, so no folder above it is another user's to swap."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"resserve-remote-{os.getuid()}-{digest}"


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
        raise ConfigError(f"{path}: {validation_problems(exc.errors())}") from exc


def validation_problems(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's (or FastAPI's) errors as one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in errors)


class ServerSettings(BaseSettings):
    """Server-wide settings; every field can be set as ``RESSERVE_<FIELD>`` in the environment."""

    # hide_input_in_errors: a bad token or key list is never echoed into a log.
    model_config = SettingsConfigDict(env_prefix="RESSERVE_", extra="forbid", hide_input_in_errors=True)

    model_repo: Path = Path("model_repo")
    model_repo_url: str | None = Field(
        None, description="set by giving model_repo as a URL (s3://, gs://, https://...): the repository is "
                          "mirrored into repository_cache, each file checked against its build record")
    model_repo_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec filesystem options for a remote model_repo (JSON), e.g. "
                                          '{"endpoint_url": "http://minio:9000"}; credentials: as the SDK reads them')
    repository_cache: Path | None = Field(
        None, description="where a remote model_repo is mirrored; default: $TMPDIR/resserve-remote-<uid>-<hash>")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="serve OIP v2 over gRPC on this port too (Triton's 8001); default: off")
    grpc_host: str | None = Field(None, description="address gRPC listens on; default: host")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve /metrics and the health probes on this port (Triton's 8002) "
                                          "and no longer /metrics on port; default: off (/metrics on port)")
    grpc_max_streams_per_connection: int = Field(
        100, ge=1, description="concurrent calls one gRPC connection may open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)")
    grpc_max_connection_idle_s: float = Field(
        300.0, gt=0, description="a gRPC connection without calls for this long is closed (GOAWAY)")
    grpc_max_connection_age_s: float = Field(
        1800.0, gt=0, description="a gRPC connection is closed after this long (calls in flight get graceful_shutdown_s), "
                                  "so clients reconnect and spread over new pods")
    models: list[str] | None = Field(None, description="load only these models (default: all)")
    preprocess_threads: int | None = Field(None, ge=1, description="default: the cores")
    inline_preprocess_max_pixels: int = Field(
        16384, ge=0,
        description="images of at most this many pixels (header) and bytes are decoded on the event loop, not "
                    "handed to a preprocessing thread: the hand-off costs more than such a decode; 0: never")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    # A progressive JPEG's decode cost grows with its scans, not its pixels: one 469 KiB 6000x6000
    # file with a scan repeated 5,000 times cost 20 s of CPU. Encoders write about 10.
    max_jpeg_scans: int = Field(100, ge=1, description="most scans a JPEG may have (counted in its bytes before decoding)")
    max_multipart_files: int = Field(64, ge=1)
    max_top_k: int = Field(1000, ge=1)
    max_images_per_request: int = Field(
        64, ge=1, description="images (or tensor rows) in one request, on every protocol; never above a model's "
        "max_queue_size; beyond: 413, checked before any decode")
    max_body_memory_bytes: int = Field(
        1024 * 1024 * 1024, ge=1024 * 1024,
        description="memory that request bodies in flight and their parse copies may hold, across HTTP, gRPC and "
                    "multipart (a JSON body counts 18 times its size, others 3); reserved before a body is read; "
                    "beyond: 503 with Retry-After (gRPC waits for room); never below one JSON body of max_body_bytes")
    body_timeout_s: float = Field(
        60.0, gt=0, description="a request body (a gRPC call's message) must arrive whole within this from the "
                                "request's start; beyond: 408 (gRPC: DEADLINE_EXCEEDED)")
    max_decompressed_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="a gzip/deflate body may inflate to this; beyond: 413")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="a request's line and headers above this: 431, counted as they arrive")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's line and headers must arrive within this of its first byte (the "
                                "connection's start, for its first request); beyond: 408 and close")
    max_connections: int = Field(
        512, ge=1, description="concurrent connections and requests; beyond: 503 (never for /v2/health/*)")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")
    http_parser: Literal["httptools", "h11"] = Field(
        "httptools", description="httptools is faster; both are held to max_header_bytes and header_timeout_s")
    control_token: str | None = Field(None, description="bearer token for repository control endpoints")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="keys for the inference and metadata endpoints ('Authorization: Bearer <key>' or "
                    "'X-API-Key: <key>'); several at once for rotation; a JSON list or comma-separated; "
                    "empty: no authentication")
    api_keys_file: Path | None = Field(
        None, description="a file of API keys, one per line (a mounted Kubernetes Secret); added to api_keys")
    auth_health: bool = Field(False, description="/v2/health/* need an API key too (kubelet probes send none)")
    auth_metrics: bool = Field(False, description="/metrics needs an API key too")
    allow_repository_control: bool = Field(False, description="enable load/unload without a token")
    graceful_shutdown_s: float = Field(30.0, ge=0)
    access_log: bool = Field(
        True, description="one log line per request (method, path, status, duration, request id); "
                          "not for health probes and /metrics")
    build_missing: bool = Field(True, description="build missing or stale artifacts at start, behind the open port")
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        1, description="server processes sharing the HTTP (and gRPC) port, each with its own engines, batcher "
                       "and preprocessing; auto: one per core")
    worker_timeout_s: float = Field(
        30.0, gt=0, description="with several workers, a worker whose heartbeat stopped this long after it was "
                                "ready (a stuck event loop) is killed and restarted, as gunicorn's timeout does")
    pin_workers: bool = Field(
        True, description="with several workers, give each its own share of the cores, so that engine and "
                          "preprocessing threads (which default to the cores a process may use) never oversubscribe them")
    repository_poll_s: float | None = Field(
        None, gt=0, description="read the repository again this often: new built versions load under each model's "
                                "version_policy, versions leaving it drain and unload, traffic and promotions "
                                "follow config.yaml and release.json; default: off")
    first_models: list[str] = Field(
        default_factory=lambda: ["resnet50"],
        description="built and loaded first at start (then fp32 models, then reduced precision, in repository order)")

    @model_validator(mode="before")
    @classmethod
    def _remote_repository(cls, data: Any) -> Any:
        """``model_repo`` given as a URL: served from its local mirror, never built into."""
        if isinstance(data, dict):
            repo = data.get("model_repo")
            if repo is not None and "://" in str(repo) and not str(repo).startswith("file://"):
                url = str(repo).rstrip("/")
                data = {**data, "model_repo_url": url, "build_missing": False,
                        "model_repo": data.get("repository_cache") or default_cache(url)}
        return data

    @field_validator("control_token")
    @classmethod
    def _token_not_blank(cls, token: str | None) -> str | None:
        if token is not None and not token.strip():
            raise ValueError("RESSERVE_CONTROL_TOKEN is set but blank (an unset secret?): a blank token would "
                             "accept 'Authorization: Bearer ' with nothing after it; set a real token, or unset "
                             "it to disable repository control")
        return None if token is None else token.strip()

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, raw: Any) -> Any:
        """``RESSERVE_API_KEYS`` as a JSON list (``["k1", "k2"]``) or comma-separated (``k1,k2``)."""
        if not isinstance(raw, str):
            return raw
        if raw.strip().startswith("["):
            try:
                return json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"RESSERVE_API_KEYS looks like a JSON list but is not one: {exc}") from exc
        return raw.split(",")

    @field_validator("api_keys")
    @classmethod
    def _api_keys_not_blank(cls, keys: list[str]) -> list[str]:
        return _checked_keys(keys, "RESSERVE_API_KEYS")

    @model_validator(mode="after")
    def _read_api_keys_file(self) -> ServerSettings:
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"RESSERVE_API_KEYS_FILE {self.api_keys_file}: cannot read it: {exc}") from exc
            keys = [line for line in lines if line.strip()]  # a trailing newline is no key
            if not keys:
                raise ValueError(f"RESSERVE_API_KEYS_FILE {self.api_keys_file} holds no key (an unset secret?)")
            self.api_keys = list(dict.fromkeys([*self.api_keys, *_checked_keys(keys, str(self.api_keys_file))]))
        return self


def _checked_keys(keys: list[str], source: str) -> list[str]:
    """Keys without surrounding whitespace; a blank one is refused (it would let a bare ``Bearer`` in)."""
    blank = [i + 1 for i, key in enumerate(keys) if not key.strip()]
    if blank:
        raise ValueError(f"{source}: key {', '.join(map(str, blank))} of {len(keys)} is blank (an unset secret? "
                         "a stray comma?); blank keys are refused")
    return [key.strip() for key in keys]
