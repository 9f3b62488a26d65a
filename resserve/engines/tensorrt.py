"""TensorRT engine: runs a ``model.plan`` built by :func:`resserve.builder.compile_tensorrt.build_plan`.

Plans are tied to the TensorRT version and GPU model that built them, so ``load`` reads the
``plan.json`` beside the plan first and refuses a mismatch with a message that says to rebuild,
instead of letting ``deserialize_cuda_engine`` fail obscurely. CUDA memory and the stream come
from cuda-python (:mod:`resserve.engines.cuda_runtime`), not torch: the GPU runtime image has no
torch. TensorRT and cuda-python are imported lazily so this module imports anywhere.

Example::

    engine = TensorRTEngine(Path("model_repo/resnet50/1/model.plan"))
    engine.load()
    logits = engine.infer(np.zeros((8, 3, 224, 224), np.float32))
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from resserve.engine_registry import engine_spec
from resserve.engines.base import Engine, TensorSpec, check_batch_rows
from resserve.engines.hardware import gpu_identity, require_tensorrt
from resserve.errors import EngineError, EngineUnavailableError

log = logging.getLogger(__name__)

Precision = Literal[engine_spec("tensorrt").precisions]  # type: ignore[valid-type]
PRECISIONS: tuple[str, ...] = engine_spec("tensorrt").precisions
PLAN_FILE = "model.plan"
RECORD_FILE = "plan.json"


@dataclass(frozen=True)
class ProfileShapes:
    """The optimization profile's (min, opt, max) input shapes, NCHW."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


class PlanRecord(BaseModel):
    """``plan.json``: what built the plan, so a loader can tell whether it may run it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: Precision
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    onnx_sha256: str
    calibration_sha256: str | None = None

    @property
    def shapes(self) -> ProfileShapes:
        return ProfileShapes(self.min_shape, self.opt_shape, self.max_shape)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / RECORD_FILE
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def read(cls, folder: Path) -> PlanRecord | None:
        """The record, None where there is none; EngineUnavailableError (asking for a rebuild) where it
        is corrupt or written by an older resserve with other fields."""
        path = Path(folder) / RECORD_FILE
        if not path.is_file():
            return None
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and ValidationError too
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineUnavailableError(f"{path} is unreadable or from another resserve version ({first}); "
                                         "rebuild the plan with `resserve build --force`") from exc


def plan_matches(record: PlanRecord, *, trt_version: str, gpu_name: str, compute_capability: str,
                 key: str | None = None) -> tuple[bool, str]:
    """Whether this TensorRT and GPU may run ``record``'s plan (and, given ``key``, reuse it)."""
    if record.trt_version != trt_version:
        return False, f"plan built with TensorRT {record.trt_version}, this is TensorRT {trt_version}"
    if record.compute_capability != compute_capability:
        return False, (f"plan built for compute capability {record.compute_capability}, "
                       f"this GPU has {compute_capability}")
    if record.gpu_name != gpu_name:
        return False, f"plan built on {record.gpu_name}, this GPU is {gpu_name}"
    if key is not None and record.key != key:
        return False, "plan built from other inputs (ONNX file, precision, shapes or calibration data)"
    return True, "plan matches"


_LOGGER: Any = None


def trt_logger() -> Any:
    """One process-wide TensorRT logger that forwards to Python logging (TRT wants a single one)."""
    global _LOGGER
    if _LOGGER is None:
        import tensorrt as trt

        class _Forward(trt.ILogger):  # type: ignore[misc]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        _LOGGER = _Forward()
    return _LOGGER


def plan_tensor_dtype(trt: Any, trt_dtype: Any) -> np.dtype | str:
    """numpy's dtype for a plan's tensor, or TensorRT's own name where numpy has none (BF16, FP8,
    INT4: ``trt.nptype`` raises TypeError for those)."""
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError:
        return str(getattr(trt_dtype, "name", trt_dtype))


class TensorRTEngine(Engine):
    """One execution context over a deserialized plan, with buffers for the profile's max batch.

    Host buffers are pinned so the copies are truly asynchronous; device buffers are allocated
    once at the largest batch and reused, so ``infer`` allocates nothing on the GPU.
    """

    name = "tensorrt"

    def __init__(self, path: Path, *, device_id: int = 0) -> None:
        self.path = Path(path)
        self.device_id = device_id
        self.record: PlanRecord | None = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, Any] = {}
        self._names: tuple[str, str] = ("", "")
        self._shapes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # input (C, H, W), output (classes,)
        self._max_batch = 0
        self._gpu = ""

    def load(self) -> None:
        require_tensorrt(f"load the TensorRT plan {self.path}")
        if not self.path.is_file():
            raise EngineError(f"TensorRT plan {self.path} does not exist; build it with `resserve build`")
        record = PlanRecord.read(self.path.parent)
        if record is None:
            raise EngineUnavailableError(f"{self.path} has no plan.json beside it (which TensorRT and GPU "
                                         "built it?); rebuild it with `resserve build --force`")
        import tensorrt as trt

        from resserve.engines import cuda_runtime as cuda

        cuda.use_device(self.device_id)
        gpu_name, capability = gpu_identity(self.device_id)
        ok, why = plan_matches(record, trt_version=trt.__version__, gpu_name=gpu_name,
                               compute_capability=capability)
        if not ok:
            raise EngineUnavailableError(f"{self.path} cannot run here: {why}; "
                                         "rebuild it on this machine with `resserve build --force`")
        runtime = trt.Runtime(trt_logger())
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.path}; see the TensorRT log above")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{self.path} has inputs {inputs}, outputs {outputs}; expected one each")
        for name in names:
            dtype = plan_tensor_dtype(trt, engine.get_tensor_dtype(name))
            if dtype != np.float32:
                raise EngineError(f"{self.path}: tensor {name} is {dtype}; resserve plans are float32")
        (in_name,), (out_name,) = inputs, outputs
        _, _, max_shape = (tuple(s) for s in engine.get_tensor_profile_shape(in_name, 0))
        context = engine.create_execution_context()
        if context is None:
            raise EngineError(f"TensorRT could not create a context for {self.path} (out of GPU memory?)")
        if not context.set_input_shape(in_name, max_shape):
            raise EngineError(f"TensorRT rejected the profile's own max shape {max_shape}")
        out_shape = tuple(context.get_tensor_shape(out_name))
        self._release_buffers()
        # One at a time into self._buffers: if an allocation fails, close() frees the ones made.
        self._buffers["host_in"] = cuda.PinnedArray(max_shape)
        self._buffers["host_out"] = cuda.PinnedArray(out_shape)
        self._buffers["dev_in"] = cuda.DeviceBuffer(int(np.prod(max_shape)) * 4)
        self._buffers["dev_out"] = cuda.DeviceBuffer(int(np.prod(out_shape)) * 4)
        self._stream = cuda.Stream()
        self._engine, self._context, self.record = engine, context, record
        self._names = (in_name, out_name)
        self._shapes = (tuple(max_shape[1:]), tuple(out_shape[1:]))
        self._max_batch = int(max_shape[0])
        self._gpu = gpu_name
        log.info("loaded TensorRT %s plan %s on %s (batch 1..%d)", record.precision, self.path, gpu_name,
                 self._max_batch)

    def _require(self) -> None:
        if self._context is None:
            raise EngineError("engine is not loaded; call load() first")

    @property
    def input_spec(self) -> TensorSpec:
        self._require()
        return TensorSpec(self._names[0], (-1, *self._shapes[0]), np.dtype(np.float32))

    @property
    def output_spec(self) -> TensorSpec:
        self._require()
        return TensorSpec(self._names[1], (-1, *self._shapes[1]), np.dtype(np.float32))

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        """One chunk of at most the profile's max batch: H2D, execute, D2H on one stream."""
        from resserve.engines import cuda_runtime as cuda

        rows = len(chunk)
        buffers, context = self._buffers, self._context
        host_in, host_out = buffers["host_in"], buffers["host_out"]
        host_in.array[:rows] = chunk  # the pinned buffer, in place
        cuda.use_device(self.device_id)  # CUDA's current device is per thread: the batcher's thread
        cuda.copy_to_device(buffers["dev_in"], host_in, chunk.nbytes, self._stream)
        if not context.set_input_shape(self._names[0], chunk.shape):
            raise EngineError(f"TensorRT rejected input shape {chunk.shape}")
        context.set_tensor_address(self._names[0], buffers["dev_in"].ptr)
        context.set_tensor_address(self._names[1], buffers["dev_out"].ptr)
        if not context.execute_async_v3(self._stream.handle):
            raise EngineError(f"TensorRT failed to enqueue a batch of {rows}; see the TensorRT log")
        out_bytes = rows * int(np.prod(self._shapes[1])) * 4
        cuda.copy_to_host(host_out, buffers["dev_out"], out_bytes, self._stream)
        self._stream.synchronize()
        return host_out.array[:rows].copy()  # the pinned buffer is reused next call

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self._require()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self._shapes[0]:
            expected = ", ".join(map(str, self._shapes[0]))
            raise EngineError(f"expected input (N, {expected}), got {batch.shape}")
        try:
            step = self._max_batch
            chunks = [self._run(batch[i : i + step]) for i in range(0, len(batch), step)]
        except EngineError:
            raise
        except Exception as exc:  # TensorRT's own errors are RuntimeErrors
            raise EngineError(f"TensorRT failed on a batch of {batch.shape}: {exc}") from exc
        out = np.concatenate(chunks) if chunks else np.empty((0, *self._shapes[1]), np.float32)
        return check_batch_rows(batch, out, self.name)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = super().describe() if self._context is not None else {"engine": self.name}
        record = self.record
        info.update(
            path=str(self.path),
            device_id=self.device_id,
            gpu=self._gpu or None,
            trt_version=record.trt_version if record else None,
            compute_capability=record.compute_capability if record else None,
            precision=record.precision if record else None,
            profile=({"min": list(record.min_shape), "opt": list(record.opt_shape),
                      "max": list(record.max_shape)} if record else None),
        )
        return info

    def runtime(self) -> dict[str, Any]:
        info = super().runtime()
        record = self.record
        info.update(engine_version=record.trt_version if record else None,
                    isa=f"cuda-sm{record.compute_capability}" if record else "cuda",
                    precision=record.precision if record else None,
                    inference_precision=record.precision if record else None)
        return info

    def _release_buffers(self) -> None:
        for buffer in self._buffers.values():
            buffer.close()
        self._buffers = {}

    def close(self) -> None:
        try:
            if self._stream is not None:
                try:
                    self._stream.synchronize()  # a sticky CUDA error raises here: still release below
                finally:
                    self._stream.close()
        finally:
            self._context = self._engine = self._stream = None
            self._release_buffers()


def open_from_config(variant: Any, config: Any, folder: Path, pixels: Any) -> TensorRTEngine:
    """The engine for a built ``variant`` of ``config`` (the registry's opener; not yet loaded)."""
    return TensorRTEngine(variant.artifact(folder))
