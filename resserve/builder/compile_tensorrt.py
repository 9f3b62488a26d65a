"""Folded ONNX -> TensorRT plan (``model.plan`` + ``plan.json``), with timing and int8 caches.

A plan only runs on the TensorRT version and GPU model that built it, so ``plan.json`` records
both and a loader refuses a mismatching plan instead of crashing in ``deserialize_cuda_engine``.
The pure parts (profile shapes, cache keys, records, calibration batching) need neither
TensorRT nor CUDA and are unit-tested everywhere; ``build_plan`` imports both lazily and raises
:class:`EngineUnavailableError` where they are absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from resserve.engines.factory import REFERENCE, Variant
from resserve.engines.hardware import gpu_identity, require_tensorrt
from resserve.engines.onnxruntime import batch_profile, image_input
from resserve.engines.tensorrt import (
    PLAN_FILE,
    PRECISIONS,
    RECORD_FILE,
    PlanRecord,
    Precision,
    ProfileShapes,
    plan_matches,
    trt_logger,
)
from resserve.errors import ConfigError, EngineUnavailableError, ExportError
from resserve.files import sha256_file

if TYPE_CHECKING:
    from resserve.config import ModelConfig

log = logging.getLogger(__name__)

TIMING_CACHE_FILE = "timing.cache"
MAX_CALIBRATION_BATCH = 16
_KEY_SCHEMA = 1


def profile_shapes(input_shape_chw: tuple[int, int, int], max_batch_size: int,
                   preferred_batch_sizes: Sequence[int] = ()) -> ProfileShapes:
    """Batch 1 .. ``max_batch_size``, tuned for the largest preferred size that fits.

    TensorRT picks kernels for ``opt``; the batcher dispatches at preferred sizes, so that is
    the shape worth being fastest at. Preferred sizes above the maximum are ignored.
    """
    if len(input_shape_chw) != 3 or any(not isinstance(d, int) or d < 1 for d in input_shape_chw):
        raise ConfigError(f"input shape must be three positive ints (C, H, W), got {input_shape_chw}")
    low, opt, high = batch_profile(max_batch_size, preferred_batch_sizes)  # the same as ONNX Runtime's provider
    chw = tuple(input_shape_chw)
    return ProfileShapes((low, *chw), (opt, *chw), (high, *chw))


SUPPORTED_MAJORS = (10, 11)


def trt_major(trt_version: str) -> int:
    """TensorRT's major version from its version string; ConfigError where it cannot be read."""
    try:
        return int(trt_version.split(".")[0])
    except ValueError as exc:
        raise ConfigError(f"cannot read TensorRT's version {trt_version!r}") from exc


def unsupported_build(trt_version: str) -> str | None:
    """Why resserve's builder cannot build with this TensorRT, or None if it can (every precision)."""
    try:
        major = trt_major(trt_version)
    except ConfigError as exc:
        return str(exc)
    if major not in SUPPORTED_MAJORS:
        return (f"TensorRT {trt_version} is a major resserve has not been written for (it builds with "
                f"{' and '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}); pip install 'tensorrt>=10,<12'")
    return None


def strongly_typed(trt_version: str) -> bool:
    """TensorRT 11 builds only strongly typed networks: no precision flags, no calibrator. The
    precision comes from the ONNX itself (:func:`typed_onnx`). TensorRT 10 takes flags and calibrates."""
    return trt_major(trt_version) >= 11


def typed_onnx(reference: Path, folder: Path, precision: str, calibration: np.ndarray | None) -> Path:
    """The ONNX a strongly typed build of ``precision`` parses: the fp32 reference itself; fp16
    weights with float32 input and output (Casts at each end); or explicit symmetric s8 Q/DQ
    calibrated on ``calibration``. All run in ONNX Runtime on the CPU too (their parity is tested)."""
    from resserve.builder.ort_quant import convert_fp16, quantize_int8

    if precision == "fp32":
        return Path(reference)
    if precision == "fp16":
        return convert_fp16(reference, Path(folder) / "typed-fp16.onnx")
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ConfigError("int8 needs calibration images for its Q/DQ scales")
        return quantize_int8(reference, Path(folder) / "typed-int8-qdq.onnx", calibration, activation_type="s8",
                             weight_type="s8", symmetric=True)
    raise ConfigError(f"unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def plan_cache_key(onnx_sha256: str, precision: str, shapes: ProfileShapes, trt_version: str, gpu_name: str,
                   compute_capability: str, *, calibration_sha256: str | None = None) -> str:
    """sha256 over everything a plan depends on: equal keys mean the plan can be reused."""
    fields = {
        "schema": _KEY_SCHEMA, "onnx_sha256": onnx_sha256, "precision": precision,
        "min": list(shapes.min), "opt": list(shapes.opt), "max": list(shapes.max),
        "trt_version": trt_version, "gpu_name": gpu_name, "compute_capability": compute_capability,
        "calibration_sha256": calibration_sha256,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def calibration_batch_size(image_count: int, max_batch_size: int) -> int:
    """Calibration batch: at most the profile's max and 16 (memory), at most the image count."""
    return max(1, min(image_count, max_batch_size, MAX_CALIBRATION_BATCH))


def calibration_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Contiguous float32 ``(batch_size, C, H, W)`` chunks of ``images``.

    A calibrator hands TensorRT one fixed batch shape, so a last partial batch is dropped
    (padding would repeat images and skew the activation histograms).
    """
    if images.ndim != 4:
        raise ConfigError(f"calibration images must be (N, C, H, W), got shape {images.shape}")
    if batch_size < 1:
        raise ConfigError(f"calibration batch size must be >= 1, got {batch_size}")
    if len(images) < batch_size:
        raise ConfigError(f"{len(images)} calibration images are fewer than one batch of {batch_size}")
    full = len(images) - len(images) % batch_size
    if full < len(images):
        log.info("calibration: dropping the last %d images (not a full batch)", len(images) - full)
    for start in range(0, full, batch_size):
        yield np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)


def _fast(builder: Any, attribute: str, capability: str) -> bool:
    """``builder.platform_has_fast_*`` (deprecated in TensorRT 10), else a capability rule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        value = getattr(builder, attribute, None)
    if value is not None:
        return bool(value)
    major, minor = (int(p) for p in capability.split("."))
    return (major, minor) >= ((6, 1) if attribute.endswith("int8") else (7, 0))


def _make_calibrator(trt: Any, batches: list[np.ndarray], cache: Path) -> Any:
    """An entropy calibrator feeding ``batches`` from one device buffer, caching its table."""
    from resserve.engines import cuda_runtime as cuda

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._pending = iter(batches)
            self._buffer = cuda.DeviceBuffer(batches[0].nbytes)

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._pending, None)
            if batch is None:
                return None
            cuda.copy_array_to_device(self._buffer, batch)  # synchronous: TensorRT reads it on its own stream
            return [self._buffer.ptr]  # one pointer per input; the network has one

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.write_bytes(bytes(memoryview(data)))

        def close(self) -> None:
            self._buffer.close()

    return _Calibrator()


def _parse(trt: Any, builder: Any, onnx_path: Path) -> tuple[Any, Any, Any]:
    """The parsed network and its single image input; every parser error is logged."""
    flags = 0  # explicit batch is the only mode in TensorRT 10; 8.x must ask for it
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger())
    parsed = parser.parse_from_file(str(onnx_path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    for error in errors:
        log.error("TensorRT ONNX parser, %s: %s", onnx_path.name, error)
    if not parsed or errors:
        first = errors[0] if errors else "none reported"
        raise ExportError(f"TensorRT could not parse {onnx_path} ({len(errors)} errors, first: {first})")
    if network.num_inputs != 1:
        raise ExportError(f"{onnx_path} has {network.num_inputs} inputs; a resserve plan takes one image")
    tensor = network.get_input(0)
    if len(tensor.shape) != 4 or any(d < 1 for d in tuple(tensor.shape)[1:]):
        raise ExportError(f"input {tensor.name} has shape {tuple(tensor.shape)}; need (N, C, H, W), "
                          "C, H and W static")
    return network, tensor, parser  # the parser owns weights the network refers to: keep it alive


def _set_timing_cache(config: Any, path: Path) -> None:
    """Reuse the timing cache of earlier builds (kernel timings: most of a rebuild's time)."""
    try:
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        reused = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except (RuntimeError, TypeError, ValueError) as exc:  # a corrupt file
        log.warning("timing cache %s is unreadable: %s", path, exc)
        reused = False
    if not reused:
        log.warning("timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def reuse_plan(output_dir: Path, cache_dir: Path | None, key: str, *, trt_version: str, gpu_name: str,
               compute_capability: str) -> Path | None:
    """``output_dir/model.plan`` where a plan with ``key`` is already there or in ``cache_dir`` (copied
    over with its record); None where it must be built. A corrupt or old record counts as none."""
    for folder in (output_dir, cache_dir):
        if folder is None or not (Path(folder) / PLAN_FILE).is_file():
            continue
        try:
            record = PlanRecord.read(folder)
        except EngineUnavailableError as exc:
            log.info("not reusing %s: %s", folder, exc)
            continue
        if record is None:
            continue
        ok, why = plan_matches(record, trt_version=trt_version, gpu_name=gpu_name,
                               compute_capability=compute_capability, key=key)
        if not ok:
            log.info("not reusing the TensorRT plan in %s: %s", folder, why)
            continue
        if Path(folder) != Path(output_dir):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / PLAN_FILE, Path(output_dir) / PLAN_FILE)
            shutil.copyfile(Path(folder) / RECORD_FILE, Path(output_dir) / RECORD_FILE)
        log.info("reusing TensorRT plan from %s (key %s)", folder, key[:12])
        return Path(output_dir) / PLAN_FILE
    return None


def keep_in_cache(output_dir: Path, cache_dir: Path | None) -> None:
    """Copy the plan and its record into ``cache_dir`` (the record last: a half copy is never reused)."""
    if cache_dir is None or Path(cache_dir) == Path(output_dir):
        return
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    (Path(cache_dir) / RECORD_FILE).unlink(missing_ok=True)
    shutil.copyfile(Path(output_dir) / PLAN_FILE, Path(cache_dir) / PLAN_FILE)
    shutil.copyfile(Path(output_dir) / RECORD_FILE, Path(cache_dir) / RECORD_FILE)


def build_plan(onnx_path: Path, output_dir: Path, *, precision: Precision, max_batch_size: int,
               preferred_batch_sizes: Sequence[int] = (), calibration: np.ndarray | None = None,
               workspace_gb: float = 4.0, device_id: int = 0, force: bool = False,
               cache_dir: Path | None = None) -> Path:
    """Build (or reuse, when a ``plan.json``'s key matches) ``output_dir/model.plan``; return its path.

    ``cache_dir``: where the timing cache, the int8 calibration table and a copy of the plan live
    across builds (``resserve build`` stages every build in a fresh folder, so caches kept beside
    the plan would never be read again); default ``output_dir``."""
    require_tensorrt("build a TensorRT plan")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and (calibration is None or len(calibration) == 0):
        raise ConfigError("int8 needs calibration images (calibration=, an (N, C, H, W) float32 batch)")
    onnx_path, output_dir = Path(onnx_path), Path(output_dir)
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file {onnx_path} does not exist")
    import tensorrt as trt

    from resserve.engines.cuda_runtime import use_device

    if (why := unsupported_build(trt.__version__)) is not None:
        raise EngineUnavailableError(why)
    output_dir.mkdir(parents=True, exist_ok=True)
    plan_path = output_dir / PLAN_FILE
    use_device(device_id)
    calibrator = None
    try:
        gpu_name, capability = gpu_identity(device_id)
        builder = trt.Builder(trt_logger())
        typed = strongly_typed(trt.__version__)
        onnx_sha, calib_sha = sha256_file(onnx_path), None
        if precision == "int8":
            calibration = np.ascontiguousarray(calibration, dtype=np.float32)
            calib_sha = hashlib.sha256(calibration.tobytes()).hexdigest()
        _, chw = image_input(onnx.load(str(onnx_path), load_external_data=False))
        shapes = profile_shapes(chw, max_batch_size, preferred_batch_sizes)  # type: ignore[arg-type]
        key = plan_cache_key(onnx_sha, precision, shapes, trt.__version__, gpu_name, capability,
                             calibration_sha256=calib_sha)
        caches = Path(cache_dir) if cache_dir is not None else output_dir
        caches.mkdir(parents=True, exist_ok=True)
        if not force and (reused := reuse_plan(output_dir, cache_dir, key, trt_version=trt.__version__,
                                               gpu_name=gpu_name, compute_capability=capability)):
            return reused
        # TensorRT 11: the precision is in the ONNX (fp16 weights, or Q/DQ); TensorRT 10: flags below.
        source = typed_onnx(onnx_path, caches, precision, calibration) if typed else onnx_path
        network, tensor, _parser = _parse(trt, builder, source)
        if tuple(tensor.shape)[1:] != tuple(chw):
            raise ExportError(f"TensorRT reads input {tensor.name} as {tuple(tensor.shape)}, the ONNX says {chw}")
        for wanted, attribute in (("fp16", "platform_has_fast_fp16"), ("int8", "platform_has_fast_int8")):
            if precision == wanted and not _fast(builder, attribute, capability):
                raise EngineUnavailableError(f"{gpu_name} (compute capability {capability}) has no fast "
                                             f"{wanted.upper()}; build a higher precision instead")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, shapes.min, shapes.opt, shapes.max)
        if config.add_optimization_profile(profile) < 0:
            raise ExportError(f"TensorRT rejected the optimization profile {shapes}")
        if precision in ("fp16", "int8") and not typed:
            config.set_flag(trt.BuilderFlag.FP16)  # layers int8 cannot run fall back to fp16, not fp32
        if precision == "int8" and not typed:
            assert calibration is not None and calib_sha is not None
            size = calibration_batch_size(len(calibration), max_batch_size)
            batches = list(calibration_batches(calibration, size))
            fixed = (size, *chw)
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(tensor.name, fixed, fixed, fixed)
            # Named by model and data, so a table from other images or another model is never read.
            tag = hashlib.sha256((onnx_sha + calib_sha).encode()).hexdigest()[:16]
            with warnings.catch_warnings():  # implicit int8 calibration is deprecated in TensorRT 10
                warnings.simplefilter("ignore", DeprecationWarning)
                calibrator = _make_calibrator(trt, batches, caches / f"calibration-{tag}.cache")
                config.set_flag(trt.BuilderFlag.INT8)
                config.int8_calibrator = calibrator
                if not config.set_calibration_profile(calib_profile):
                    raise ExportError(f"TensorRT rejected the calibration profile {fixed}")
        timing_path = caches / TIMING_CACHE_FILE
        _set_timing_cache(config, timing_path)

        log.info("building TensorRT %s plan for %s on %s (batch %d..%d, opt %d)", precision, onnx_path.name,
                 gpu_name, shapes.min[0], shapes.max[0], shapes.opt[0])
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"TensorRT failed to build a {precision} plan from {onnx_path}; see the log")
        staging = plan_path.with_suffix(".plan.tmp")
        staging.write_bytes(bytes(memoryview(serialized)))
        (output_dir / RECORD_FILE).unlink(missing_ok=True)  # never an old record beside a new plan
        staging.replace(plan_path)
        timing_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    finally:
        if calibrator is not None:
            calibrator.close()
    PlanRecord(key=key, trt_version=trt.__version__, gpu_name=gpu_name, compute_capability=capability,
               precision=precision, min_shape=shapes.min, opt_shape=shapes.opt, max_shape=shapes.max,
               onnx_sha256=onnx_sha, calibration_sha256=calib_sha).write(output_dir)
    keep_in_cache(output_dir, cache_dir)
    log.info("wrote %s (%d bytes)", plan_path, plan_path.stat().st_size)
    return plan_path


def compile_artifact(variant: Variant, config: ModelConfig, folder: Path, calibration: np.ndarray | None,
                     cache_dir: Path | None) -> bool:
    """The registry's compile step for tensorrt: a plan for this GPU, cached in ``cache_dir``."""
    build_plan(folder / REFERENCE, variant.artifact(folder).parent, precision=variant.precision,  # type: ignore[arg-type]
               max_batch_size=config.max_batch_size,
               preferred_batch_sizes=config.dynamic_batching.preferred_batch_sizes,
               calibration=calibration, cache_dir=cache_dir)
    return True
