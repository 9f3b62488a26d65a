"""Compile a folded ONNX model into an OpenVINO IR for the CPU: fp32, bf16 or int8 (NNCF PTQ).

Why three precisions from two IRs: bf16 is not a property of the IR but a runtime hint
(``INFERENCE_PRECISION_HINT``), so fp32 and bf16 save the same float32 graph and the chosen
precision travels in ``openvino.json`` next to ``model.xml`` (and in the IR's rt_info) for the
engine to read. int8 is a different graph: NNCF inserts FakeQuantize nodes calibrated on images
the caller has already preprocessed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from resserve.engines.factory import REFERENCE, Variant
from resserve.engines.openvino import SIDECAR_FILE, Precision, require_precision
from resserve.errors import ConfigError, ExportError

if TYPE_CHECKING:
    from resserve.config import ModelConfig

log = logging.getLogger(__name__)

PRESETS = ("performance", "mixed")
MODEL_FILE = "model.xml"
RT_INFO_KEY = ["resserve", "precision"]
# Calibrating one image per item keeps memory flat for any calibration size and lets NNCF's
# subset_size count images, not batches.
CALIBRATION_ITEM_BATCH = 1


def _check_calibration(calibration: np.ndarray | None) -> np.ndarray:
    if calibration is None:
        raise ConfigError("int8 quantization needs calibration images (preprocessed float32 N,3,H,W); "
                          "pass calibration=... or choose fp32/bf16")
    calibration = np.asarray(calibration)
    if calibration.ndim != 4 or len(calibration) < 1:
        raise ConfigError(f"calibration must be a non-empty N,C,H,W batch, got shape {calibration.shape}")
    return np.ascontiguousarray(calibration, dtype=np.float32)


def _ensure_dynamic_batch(model: Any, onnx_path: Path) -> None:
    """Make dim 0 of the single input dynamic (third-party files often fix it to 1)."""
    import openvino as ov

    if len(model.inputs) != 1:
        raise ExportError(f"{onnx_path} has {len(model.inputs)} inputs; resserve serves one image input")
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or len(shape) < 1:
        raise ExportError(f"{onnx_path}: input rank is unknown ({shape}); expected N,C,H,W")
    if shape[0].is_dynamic:
        return
    dims = [ov.Dimension(-1)] + [shape[i] for i in range(1, len(shape))]
    try:
        model.reshape({model.input(0): ov.PartialShape(dims)})
    except Exception as exc:  # openvino raises RuntimeError subclasses with the failing node
        raise ExportError(
            f"{onnx_path} has a fixed batch {shape} that OpenVINO cannot make dynamic: {exc}"
        ) from exc
    log.info("made the batch dimension of %s dynamic (was %s)", onnx_path.name, shape)


def _batch_is_dynamic(model: Any) -> bool:
    return bool(model.input(0).get_partial_shape()[0].is_dynamic)


def _quantize(model: Any, calibration: np.ndarray, preset: str) -> Any:
    import nncf

    step = CALIBRATION_ITEM_BATCH
    items = [calibration[i : i + step] for i in range(0, len(calibration), step)]
    presets = nncf.QuantizationPreset
    nncf_preset = presets.PERFORMANCE if preset == "performance" else presets.MIXED
    try:
        # model_type=None: a CNN, not a transformer (that would add transformer-specific ignored scopes).
        # The classifier head (the only MatMul of a ResNet, <0.1% of its FLOPs) stays fp32: its
        # input is pooled features whose picture-dependent part is small next to their common
        # mean, and per-tensor int8 there cost points of top-1 agreement (docs/engines-and-precision.md).
        return nncf.quantize(
            model, nncf.Dataset(items), preset=nncf_preset, subset_size=len(items), model_type=None,
            ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False),
        )
    except Exception as exc:
        raise ExportError(f"NNCF int8 quantization failed: {exc}") from exc


def compile_openvino(
    onnx_path: Path,
    output_dir: Path,
    precision: Precision,
    calibration: np.ndarray | None = None,
    *,
    preset: Literal["performance", "mixed"] = "performance",
) -> Path:
    """Convert ``onnx_path`` to ``output_dir/model.xml`` (+ ``.bin``) at ``precision``; return the xml path.

    ``calibration`` (int8 only, required there): preprocessed float32 images, N,3,H,W.
    ``preset``: NNCF's ``performance`` (symmetric activations, fastest on CPU) or ``mixed``
    (asymmetric activations; try it when int8 agreement is short of the floor).
    """
    import openvino as ov

    onnx_path, output_dir = Path(onnx_path), Path(output_dir)
    require_precision(precision)
    if preset not in PRESETS:
        raise ConfigError(f"unknown NNCF preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX file {onnx_path} does not exist; run `resserve export` first")
    images = _check_calibration(calibration) if precision == "int8" else None

    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise ExportError(f"OpenVINO could not convert {onnx_path}: {exc}") from exc
    _ensure_dynamic_batch(model, onnx_path)
    if images is not None:
        model = _quantize(model, images, preset)
    model.set_rt_info(precision, RT_INFO_KEY)

    output_dir.mkdir(parents=True, exist_ok=True)
    xml = output_dir / MODEL_FILE
    # compress_to_fp16=False: the default halves the .bin by storing fp16 weights, which would make
    # the "fp32" variant lossy before any runtime precision applies.
    ov.save_model(model, str(xml), compress_to_fp16=False)
    # Read back what is on disk: the batch must stay dynamic through NNCF and serialization.
    if not _batch_is_dynamic(ov.Core().read_model(str(xml))):
        raise ExportError(f"{xml}: the saved IR has a static batch dimension; the batcher needs it dynamic")

    sidecar: dict[str, Any] = {"precision": precision, "source": onnx_path.name, "openvino": ov.__version__}
    if images is not None:
        import nncf

        sidecar.update(nncf=nncf.__version__, preset=preset, calibration_images=len(images))
    (output_dir / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2))
    log.info("compiled %s to %s (%s)", onnx_path.name, xml, precision)
    return xml


def compile_artifact(variant: Variant, config: ModelConfig, folder: Path, calibration: np.ndarray | None,
                     cache_dir: Path | None) -> bool:
    """The registry's compile step for openvino: the IR (and its sidecar) beside the reference."""
    compile_openvino(folder / REFERENCE, variant.artifact(folder).parent, variant.precision,  # type: ignore[arg-type]
                     calibration)
    return True
