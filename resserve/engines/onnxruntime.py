"""ONNX Runtime engine: the CPU provider everywhere, CUDA and TensorRT providers where present.

Provider names users write are short (``cpu``, ``cuda``, ``tensorrt``); ``auto`` takes the best
one installed, in the order TensorRT > CUDA > CPU, and logs why. A provider asked for by name
that is absent is an error that says how to get it, never a silent CPU fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from resserve.engines.base import Engine, PixelInput, TensorSpec, check_batch_rows
from resserve.engines.hardware import available_cores, isa_class, ort_int8_kernels_saturate
from resserve.engines.pixel_graph import with_pixel_input
from resserve.errors import ConfigError, EngineError, EngineUnavailableError

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")
# ONNX Runtime's session option for exact int8 kernels on x86-64 CPUs whose u8 x s8 kernels add
# pairs of products in 16 bits (AVX2, AVX-512 without VNNI): the same file then gives the same
# answers as on VNNI and AMX (figures: docs/engines-and-precision.md, int8 on every CPU).
EXACT_INT8_OPTION = "session.x64quantprecision"
Int8Kernels = Literal["exact", "exact (x64quantprecision)", "saturating"]
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


SHORT_NAMES = {full: short for short, full in PROVIDERS.items()}
# What ONNX Runtime's TensorRT provider runs as int8: explicit Q/DQ networks with symmetric signed
# activations. resserve's ONNX Runtime int8 build makes unsigned (asymmetric) activations, the
# CPU's fast path, so int8 never goes through that provider: a config error, or skipped by auto.
TENSORRT_INT8_REFUSAL = ("ONNX Runtime's TensorRT provider runs int8 only from symmetric signed (s8) Q/DQ "
                         "activations, and resserve's onnxruntime int8 build makes unsigned ones for the CPU")


def resolve_provider(requested: str, *, int8: bool = False) -> str:
    """Short provider name to use: the requested one if installed, the best one for ``auto``
    (never TensorRT for an int8 model, see TENSORRT_INT8_REFUSAL)."""
    installed = set(ort.get_available_providers())
    if requested == "tensorrt" and int8:
        raise EngineUnavailableError(f"{TENSORRT_INT8_REFUSAL}; use provider 'cuda' or engine 'tensorrt'")
    if requested == "auto":
        order = [n for n in AUTO_ORDER if not (int8 and n == "tensorrt")]
        if int8 and PROVIDERS["tensorrt"] in installed:
            log.info("onnxruntime provider auto: not tensorrt for an int8 model (%s)", TENSORRT_INT8_REFUSAL)
        for name in order:
            if PROVIDERS[name] in installed:
                skipped = [n for n in order[: order.index(name)]]
                why = f" ({', '.join(skipped)} not installed)" if skipped else ""
                log.info("onnxruntime provider auto -> %s%s", name, why)
                return name
    if requested not in PROVIDERS:
        raise EngineUnavailableError(
            f"unknown onnxruntime provider {requested!r}; choose auto, {', '.join(PROVIDERS)}"
        )
    if PROVIDERS[requested] not in installed:
        hint = (
            "install onnxruntime-gpu instead of onnxruntime (pip install 'resserve[gpu]') on a machine "
            "with an NVIDIA GPU, CUDA 12 and cuDNN 9"
            if requested in ("cuda", "tensorrt")
            else "reinstall onnxruntime"
        )
        if requested == "tensorrt":
            hint += ", plus the TensorRT libraries (pip install tensorrt)"
        raise EngineUnavailableError(
            f"onnxruntime provider {PROVIDERS[requested]} is not available here "
            f"(installed: {', '.join(sorted(installed))}); {hint}, or use provider 'cpu'"
        )
    return requested


QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                           "MatMulInteger"})


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the graph runs int8 kernels (static QDQ, QOperator or integer ops)."""
    return any(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def batch_profile(max_batch_size: int, preferred_batch_sizes: Sequence[int] = ()) -> tuple[int, int, int]:
    """(min, opt, max) batch of a TensorRT optimization profile: 1 .. ``max_batch_size``, tuned for
    the largest preferred size that fits (the batcher dispatches at preferred sizes)."""
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if any(b < 1 for b in preferred_batch_sizes):
        raise ConfigError(f"preferred batch sizes must be >= 1, got {list(preferred_batch_sizes)}")
    fitting = [b for b in preferred_batch_sizes if b <= max_batch_size]
    return 1, (max(fitting) if fitting else max_batch_size), max_batch_size


def image_input(model: onnx.ModelProto) -> tuple[str, tuple[int, ...]]:
    """The single input's name and its shape without the batch axis (every other axis static)."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise EngineError(f"expected one image input, the model has {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    rest = tuple(d.dim_value for d in dims[1:])
    if len(dims) < 2 or any(not d.HasField("dim_value") or d.dim_value < 1 for d in dims[1:]):
        raise EngineError(f"input {inputs[0].name}: every axis but the batch must be static for TensorRT profiles")
    return inputs[0].name, rest


def tensorrt_provider_options(*, device_id: int, fp16: bool, cache_dir: Path, input_name: str,
                              sample_shape: tuple[int, ...], batches: tuple[int, int, int]) -> dict[str, Any]:
    """ONNX Runtime TensorRT provider options: engine and timing caches, and an explicit optimization
    profile over the model's batch bounds, so ONNX Runtime builds one engine for every batch the
    batcher can send instead of rebuilding it (for seconds to minutes) at each new, larger batch."""

    def shape(batch: int) -> str:
        return f"{input_name}:" + "x".join(str(d) for d in (batch, *sample_shape))

    low, opt, high = batches
    return {
        "device_id": device_id,
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": shape(low),
        "trt_profile_opt_shapes": shape(opt),
        "trt_profile_max_shapes": shape(high),
    }


class OnnxRuntimeEngine(Engine):
    """One ``InferenceSession`` over an ONNX file.

    Example::

        engine = OnnxRuntimeEngine(Path("resnet50.onnx"), provider="cpu", intra_op_threads=2)
        engine.load()
        logits = engine.infer(np.zeros((8, 3, 224, 224), np.float32))
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        provider: str = "auto",
        *,
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
        device_id: int = 0,
        fp16: bool = False,
        int8: bool | None = None,
        cache_dir: Path | None = None,
        pixels: PixelInput | None = None,
        batches: tuple[int, int, int] = (1, 16, 16),
        int8_exact_kernels: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        self.path = Path(path)
        self.pixels = pixels
        self.requested_provider = provider
        self.intra_op_threads = intra_op_threads or available_cores()
        self.allow_spinning = allow_spinning
        self.device_id = device_id
        self.fp16 = fp16
        self.int8 = int8  # None: read from the file (quantized operators) at load
        self.batches = batches  # (min, opt, max) batch of the TensorRT provider's profile
        self.int8_exact_kernels = int8_exact_kernels
        self.int8_kernels: Int8Kernels | None = None  # what the CPU provider runs, once loaded
        self.cache_dir = cache_dir or self.path.parent / "ort_cache"
        self.provider: str | None = None
        self._session: ort.InferenceSession | None = None
        self._specs: tuple[TensorSpec, TensorSpec] | None = None  # read once: infer runs per batch

    def _provider_chain(self, provider: str, model: onnx.ModelProto | None) -> list[tuple[str, dict[str, Any]]]:
        chain: list[tuple[str, dict[str, Any]]] = []
        if provider == "tensorrt":
            trt_cache = self.cache_dir / "tensorrt"
            trt_cache.mkdir(parents=True, exist_ok=True)
            name, sample = image_input(model if model is not None else onnx.load(str(self.path)))
            chain.append((PROVIDERS["tensorrt"], tensorrt_provider_options(
                device_id=self.device_id, fp16=self.fp16, cache_dir=trt_cache, input_name=name,
                sample_shape=sample, batches=self.batches)))
        if provider in ("tensorrt", "cuda"):
            # CUDA behind TensorRT runs the nodes TensorRT rejects.
            chain.append((PROVIDERS["cuda"], {"device_id": self.device_id}))
        chain.append((PROVIDERS["cpu"], {}))
        return chain

    def load(self) -> None:
        if not self.path.is_file():
            raise EngineError(f"ONNX file {self.path} does not exist; run `resserve build` or `resserve export`")
        proto = None
        if self.int8 is None or self.pixels is not None:
            try:
                proto = onnx.load(str(self.path))
            except Exception as exc:
                raise EngineError(f"onnxruntime could not load {self.path}: {exc}") from exc
            if self.int8 is None:
                self.int8 = is_quantized(proto)
        provider = resolve_provider(self.requested_provider, int8=bool(self.int8))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads win a little latency but steal the cores preprocessing needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        int8_kernels = self._int8_kernels(provider)
        if int8_kernels == "exact (x64quantprecision)":
            options.add_session_config_entry(EXACT_INT8_OPTION, "1")
        try:
            proto = with_pixel_input(proto, self.pixels) if self.pixels is not None and proto is not None else None
            chain = self._provider_chain(provider, proto)
            model: str | bytes = str(self.path) if proto is None else proto.SerializeToString()
            session = ort.InferenceSession(
                model,
                sess_options=options,
                providers=[name for name, _ in chain],
                provider_options=[opts for _, opts in chain],
            )
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"onnxruntime could not load {self.path}: {exc}") from exc
        active = session.get_providers()
        if PROVIDERS[provider] not in active:
            # The provider is installed but failed to initialise (no GPU, missing CUDA libraries).
            message = f"onnxruntime provider {PROVIDERS[provider]} failed to initialise; active: {active}"
            if self.requested_provider != "auto":
                raise EngineUnavailableError(message + "; see onnxruntime's log above for the cause")
            # ONNX Runtime itself falls down the chain (TensorRT -> CUDA -> CPU): report what runs.
            log.warning("%s; running on %s", message, active[0])
        self.provider = SHORT_NAMES.get(active[0], active[0])
        self.int8_kernels = int8_kernels if self.provider == "cpu" else None
        self._session = session
        self._specs = None
        log.info("loaded %s with %s (%d intra-op threads)", self.path.name, active[0], self.intra_op_threads)

    def _int8_kernels(self, provider: str) -> Int8Kernels | None:
        """Which int8 CPU kernels this session gets: exact ones where the CPU's own are exact (VNNI,
        AMX), ONNX Runtime's exact x64 mode where they saturate (``auto``), or as configured."""
        if not self.int8 or provider != "cpu":
            return None
        if self.int8_exact_kernels == "on":
            return "exact (x64quantprecision)"
        saturate = ort_int8_kernels_saturate()
        if not saturate:
            return "exact"
        if self.int8_exact_kernels == "off":
            log.warning("%s: int8 kernels saturate on this CPU (%s) and int8_exact_kernels is off: "
                        "answers differ from VNNI/AMX machines", self.path.name, isa_class())
            return "saturating"
        log.info("%s: this CPU's (%s) u8 x s8 kernels saturate; using ONNX Runtime's exact int8 kernels (%s)",
                 self.path.name, isa_class(), EXACT_INT8_OPTION)
        return "exact (x64quantprecision)"

    def runtime(self) -> dict[str, Any]:
        info = super().runtime()
        precision = "int8" if self.int8 else "fp16" if self.fp16 else "fp32"
        info.update(engine_version=ort.__version__, provider=self.provider, precision=precision,
                    inference_precision="f16" if self.fp16 else "f32", int8_kernels=self.int8_kernels)
        return info

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise EngineError("engine is not loaded; call load() first")
        return self._session

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise EngineError(f"unsupported tensor type {arg.type} for {arg.name}")
        return TensorSpec(arg.name, shape, np.dtype(dtype))

    def _io_specs(self) -> tuple[TensorSpec, TensorSpec]:
        if self._specs is None:
            inputs = self.session.get_inputs()
            if len(inputs) != 1:
                raise EngineError(f"expected one image input, the model has {len(inputs)}")
            self._specs = (self._spec(inputs[0]), self._spec(self.session.get_outputs()[0]))
        return self._specs

    @property
    def input_spec(self) -> TensorSpec:
        return self._io_specs()[0]

    @property
    def output_spec(self) -> TensorSpec:
        return self._io_specs()[1]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        spec = self.input_spec
        if batch.dtype != spec.dtype:
            batch = batch.astype(spec.dtype)
        try:
            (out,) = self.session.run([self.output_spec.name], {spec.name: batch})
        except Exception as exc:
            raise EngineError(f"onnxruntime failed on a batch of {batch.shape}: {exc}") from exc
        return check_batch_rows(batch, out, self.name)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            path=str(self.path),
            provider=self.provider,
            active_providers=self.session.get_providers() if self._session else [],
            intra_op_threads=self.intra_op_threads,
            pixel_input=self.pixels is not None,
            int8_kernels=self.int8_kernels,
        )
        return info

    def close(self) -> None:
        self._session = None
        self._specs = None


def open_from_config(variant: Any, config: Any, folder: Path, pixels: PixelInput | None) -> OnnxRuntimeEngine:
    """The engine for a built ``variant`` of ``config`` (the registry's opener; not yet loaded)."""
    return OnnxRuntimeEngine(variant.artifact(folder), config.device, intra_op_threads=config.intra_op_threads,
                             fp16=variant.precision == "fp16", int8=variant.precision == "int8", pixels=pixels,
                             batches=batch_profile(config.max_batch_size,
                                                   config.dynamic_batching.preferred_batch_sizes),
                             int8_exact_kernels=config.onnxruntime.int8_exact_kernels)
