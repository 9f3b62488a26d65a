"""OpenVINO CPU engine over an IR made by :func:`resserve.builder.compile_openvino.compile_openvino`.

Two ways to use the cores. ``LATENCY`` (the default): one stream, one synchronous request that
uses every thread. ``THROUGHPUT``: OpenVINO makes several streams of fewer threads each, and a
stream runs one request at a time, so ``infer`` cuts the batch into one slice per stream, runs
the slices concurrently on their own requests and concatenates them in order.

Why LATENCY by default: on a few cores the two tie at the batch sizes the batcher forms, while
at batch 1 one stream of every thread is faster, since one image cannot be split across streams.
THROUGHPUT is for many-core hosts (figures: docs/engines-and-precision.md, Measured behind the defaults).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from resserve.engine_registry import engine_spec
from resserve.engines.base import Engine, PixelInput, TensorSpec, check_batch_rows
from resserve.engines.hardware import cpu_capabilities, cpu_supports_bf16
from resserve.errors import ConfigError, EngineError, EngineUnavailableError

log = logging.getLogger(__name__)

PerformanceHint = Literal["THROUGHPUT", "LATENCY"]
HINTS = ("THROUGHPUT", "LATENCY")
Precision = Literal[engine_spec("openvino").precisions]  # type: ignore[valid-type]
PRECISIONS: tuple[str, ...] = engine_spec("openvino").precisions
SIDECAR_FILE = "openvino.json"  # beside model.xml: the builder writes it, the engine reads the precision
NO_BF16_MESSAGE = "this CPU has no AMX/AVX512-BF16; use fp32 or int8"


def require_precision(precision: str) -> Precision:
    """Validate ``precision`` and check this CPU can run it; raise a clear error otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not cpu_supports_bf16():
        caps = ", ".join(cpu_capabilities()["optimization_capabilities"])
        raise EngineUnavailableError(
            f"bf16 requested but {NO_BF16_MESSAGE} (OpenVINO CPU capabilities: {caps})"
        )
    return cast(Precision, precision)


def read_sidecar(model_xml: Path) -> dict[str, Any]:
    """The ``openvino.json`` written beside ``model_xml``, or ``{}`` when there is none."""
    path = Path(model_xml).parent / SIDECAR_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _spec(port: Any) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
    return TensorSpec(port.get_any_name(), dims, np.dtype(port.get_element_type().to_dtype()))


class OpenVinoEngine(Engine):
    """One compiled OpenVINO model on the CPU with one infer request per stream.

    Example::

        engine = OpenVinoEngine(Path("ov/model.xml"))        # precision from ov/openvino.json
        engine.load()
        logits = engine.infer(np.zeros((8, 3, 224, 224), np.float32))
    """

    name = "openvino"

    def __init__(
        self,
        path: Path,
        precision: str | None = None,
        *,
        performance_hint: PerformanceHint = "LATENCY",
        num_streams: int | None = None,
        inference_threads: int | None = None,
        cpu_pinning: bool = False,
        pixels: PixelInput | None = None,
    ) -> None:
        self.path = Path(path)
        self.pixels = pixels
        self.requested_precision = precision
        self.precision: str | None = None
        if performance_hint not in HINTS:
            raise ConfigError(
                f"unknown performance_hint {performance_hint!r}; choose one of {', '.join(HINTS)}"
            )
        for label, value in (("num_streams", num_streams), ("inference_threads", inference_threads)):
            if value is not None and value < 1:
                raise ConfigError(f"{label} must be >= 1, got {value}")
        self.performance_hint = performance_hint
        self.num_streams = num_streams
        self.inference_threads = inference_threads
        self.cpu_pinning = cpu_pinning
        self._compiled: Any = None
        self._requests: list[Any] = []
        self._streams = 1
        self._threads = 0
        self._lock = threading.Lock()  # one batch at a time: the requests are shared state

    def _resolve_precision(self) -> str:
        precision = self.requested_precision or read_sidecar(self.path).get("precision") or "fp32"
        return require_precision(str(precision))

    def _config(self, precision: str) -> dict[str, Any]:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        # Force f32 for fp32 and int8: on AMX/AVX512-BF16 CPUs OpenVINO's default inference
        # precision is bf16, which would make "fp32" silently bf16 and run int8's
        # non-quantized layers in bf16. bf16 is the only variant that asks for bf16.
        config: dict[str, Any] = {
            hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
            hints.performance_mode: getattr(hints.PerformanceMode, self.performance_hint),
        }
        # No pinning: in a server the engine shares the cores with preprocessing and HTTP, and
        # threads pinned to a core cannot move away from a busy one.
        config[hints.enable_cpu_pinning] = self.cpu_pinning
        if self.num_streams is not None:
            config[props.streams.num] = self.num_streams
        if self.inference_threads is not None:
            config[props.inference_num_threads] = self.inference_threads
        return config

    def load(self) -> None:
        import openvino as ov

        if not self.path.is_file():
            raise EngineError(f"OpenVINO IR {self.path} does not exist; build it with compile_openvino first")
        if not self.path.with_suffix(".bin").is_file():
            raise EngineError(f"OpenVINO IR {self.path} has no weights file next to it (model.bin)")
        precision = self._resolve_precision()
        try:
            core = ov.Core()
            model = core.read_model(str(self.path))
            if len(model.inputs) != 1:
                raise EngineError(f"expected one image input, {self.path} has {len(model.inputs)}")
            if self.pixels is not None:
                model = _with_pixel_input(model, self.pixels)
            compiled = core.compile_model(model, "CPU", self._config(precision))
            streams = int(compiled.get_property("NUM_STREAMS"))
            threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
            # One request per stream: more would queue behind each other, fewer would idle a stream.
            requests = [compiled.create_infer_request() for _ in range(max(1, streams))]
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"OpenVINO could not load {self.path}: {exc}") from exc
        self.precision, self._compiled, self._requests = precision, compiled, requests
        self._streams, self._threads = max(1, streams), threads
        log.info("loaded %s with OpenVINO %s (%s, %s, %d streams, %d threads)", self.path.name,
                 ov.__version__, precision, self.performance_hint, self._streams, threads)

    @property
    def compiled(self) -> Any:
        if self._compiled is None:
            raise EngineError("engine is not loaded; call load() first")
        return self._compiled

    @property
    def input_spec(self) -> TensorSpec:
        return _spec(self.compiled.input(0))

    @property
    def output_spec(self) -> TensorSpec:
        return _spec(self.compiled.output(0))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # Slices along axis 0 of a C-contiguous array are contiguous, so share_inputs avoids a copy;
        # the batch is not touched until every request has finished.
        parts = np.array_split(batch, min(self._streams, len(batch))) if len(batch) > 1 else [batch]
        if len(parts) == 1:
            request = self._requests[0]
            request.infer({0: batch}, share_inputs=True)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)
        active, started = self._requests[: len(parts)], []
        try:
            for request, part in zip(active, parts, strict=False):
                request.start_async({0: part}, share_inputs=True)
                started.append(request)
        finally:
            # Wait for every started slice even after a failure: a request left running would be
            # busy for the next batch, and its input is the caller's array.
            failures = []
            for request in started:
                try:
                    request.wait()
                except Exception as exc:  # openvino raises RuntimeError subclasses
                    failures.append(exc)
            if failures:
                raise failures[0]
        # Copy out: the request's output buffer is reused by the next call.
        return np.concatenate([np.asarray(r.get_output_tensor(0).data, dtype=np.float32) for r in active])

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._compiled is None:
            raise EngineError("engine is not loaded; call load() first")
        batch = np.ascontiguousarray(batch, dtype=np.uint8 if self.pixels is not None else np.float32)
        if batch.ndim != 4 or len(batch) == 0:
            layout = "N,H,W,3 uint8" if self.pixels is not None else "N,C,H,W"
            raise EngineError(f"openvino needs a non-empty {layout} batch, got shape {batch.shape}")
        with self._lock:
            try:
                out = self._run(batch)
            except Exception as exc:
                raise EngineError(f"openvino failed on a batch of {batch.shape}: {exc}") from exc
        return check_batch_rows(batch, out, self.name)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        # What the plugin really runs non-quantized layers in ("f32" / "bf16"), not just what was asked.
        actual = None
        if self._compiled is not None:
            actual = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        info.update(
            path=str(self.path),
            precision=self.precision,
            inference_precision=actual,
            pixel_input=self.pixels is not None,
            performance_hint=self.performance_hint,
            streams=self._streams,
            threads=self._threads,
            infer_strategy="split across streams" if self._streams > 1 else "single synchronous request",
            optimization_capabilities=cpu_capabilities()["optimization_capabilities"],
        )
        return info

    def runtime(self) -> dict[str, Any]:
        import openvino as ov

        info = super().runtime()
        info.update(engine_version=ov.__version__, precision=self.precision,
                    inference_precision=(self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                                         if self._compiled is not None else None))
        return info

    def close(self) -> None:
        self._requests = []
        self._compiled = None


def open_from_config(variant: Any, config: Any, folder: Path, pixels: PixelInput | None) -> OpenVinoEngine:
    """The engine for a built ``variant`` of ``config`` (the registry's opener; not yet loaded)."""
    ov = config.openvino
    return OpenVinoEngine(variant.artifact(folder), variant.precision, performance_hint=ov.performance_hint,
                          num_streams=ov.num_streams, inference_threads=ov.inference_threads, pixels=pixels)


def _with_pixel_input(model: Any, pixels: PixelInput) -> Any:
    """``model`` taking uint8 (N, H, W, 3) pixels, with conversion, colour swap, normalization and
    layout change prepended by OpenVINO's PrePostProcessor (fused into the graph when compiled)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    if pixels.bgr:
        tensor.set_color_format(ov.preprocess.ColorFormat.RGB)
    ppp.input().model().set_layout(ov.Layout(pixels.layout))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
    if pixels.bgr:
        steps.convert_color(ov.preprocess.ColorFormat.BGR)
    steps.mean(list(pixels.mean)).scale(list(pixels.std))
    return ppp.build()
