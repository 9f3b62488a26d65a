"""int8 (static, QDQ) and fp16 variants of a folded ResNet ONNX file, for ONNX Runtime.

int8 uses ONNX Runtime's own ``quantize_static``: QDQ format, per-channel symmetric s8 weights,
u8 activations. u8 is the default because x86 CPUs with VNNI/AMX run u8 x s8 convolutions on the
fast path (s8 x s8 was no faster than fp32). ``reduce_range``, asymmetric weights and per-tensor
weights changed nothing in speed; ``ActivationSymmetric`` was slower and less accurate, so none
is exposed. Calibration defaults to the 99.999th percentile: closer to fp32 on held-out images
than min-max, at twice the calibration time; ORT's entropy calibrator, with its fixed 128 bins,
gave min-max's ranges (figures: docs/engines-and-precision.md, Measured behind the defaults). Ranges are collected a few chunks at a time, so
hundreds of calibration images never hold every activation in memory at once.

fp16 is for the CUDA provider: weights float16, input and output kept float32 (a Cast at each
end) so the serving path and its preprocessing stay unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from resserve.engines.factory import REFERENCE, Variant
from resserve.errors import ExportError

if TYPE_CHECKING:
    from resserve.config import ModelConfig

log = logging.getLogger(__name__)

ActivationType = Literal["u8", "s8"]
WeightType = Literal["s8", "u8"]
Method = Literal["minmax", "entropy", "percentile"]

_QUANT_TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
DEFAULT_CHUNK = 8
# Chunks whose activations the calibrator holds at once: 16 images, ~3 GB for ResNet-50.
CHUNKS_PER_COLLECT = 2


class BatchCalibrationReader(CalibrationDataReader):
    """Feeds a preprocessed (N, C, H, W) float32 batch to ``input_name`` in chunks of ``batch_size``.

    ``len()`` and ``set_range()`` count chunks: ONNX Runtime's strided calibration
    (``CalibStridedMinMax``, used for every method) collects ranges a few chunks at a time.
    """

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = DEFAULT_CHUNK) -> None:
        if images.ndim != 4 or len(images) == 0:
            raise ExportError(f"calibration needs a non-empty (N, C, H, W) batch, got shape {images.shape}")
        if batch_size < 1:
            raise ExportError(f"calibration batch size must be >= 1, got {batch_size}")
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self._chunks = -(-len(self.images) // batch_size)
        self._next, self._end = 0, self._chunks

    def __len__(self) -> int:
        return self._chunks

    def get_next(self) -> dict[str, np.ndarray] | None:  # type: ignore[override]
        if self._next >= self._end:
            return None
        start = self._next * self.batch_size
        self._next += 1
        return {self.input_name: self.images[start : start + self.batch_size]}

    def rewind(self) -> None:
        """Start again from the first chunk, over all chunks."""
        self._next, self._end = 0, self._chunks

    def set_range(self, start_index: int, end_index: int) -> None:
        """Yield chunks ``start_index`` .. ``end_index`` (exclusive) next."""
        self._next, self._end = max(0, start_index), min(end_index, self._chunks)


def _load_checked(src: Path) -> onnx.ModelProto:
    """The source model, or an ExportError that says what is wrong with it."""
    if not Path(src).is_file():
        raise ExportError(f"ONNX file {src} does not exist")
    try:
        model = onnx.load(str(src))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ExportError(f"{src} is not a valid ONNX model: {exc}") from exc
    return model


def _image_input(model: onnx.ModelProto) -> str:
    """Name of the single graph input that is not an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"expected one image input, the model has {len(inputs)}: {inputs}")
    return inputs[0]


def _save_with_metadata(model: onnx.ModelProto, source: onnx.ModelProto, dst: Path, **extra: str) -> None:
    """Save ``model`` with the source's resserve metadata (arch, preprocessing, labels) and the variant's."""
    props = {p.key: p.value for p in source.metadata_props}
    props.update({p.key: p.value for p in model.metadata_props})
    props.update({f"resserve.{k}": v for k, v in extra.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))


# A convolution reading the image with this few weights per output channel stays fp32.
STEM_FAN_IN_FP32 = 27


def _kept_fp32(model: onnx.ModelProto) -> list[str]:
    """Nodes the quantizer leaves in fp32, by name.

    The classifier head (see resserve.builder.compile_openvino: same reason), and a narrow convolution on
    the image itself: the 3x3 on 3 channels that starts ResNet-D's and ResNet-RS's deep stem.
    Quantized, that layer alone broke int8 agreement on ResNet-D on an AVX2 CPU, where u8 x s8
    products are summed in 16 bits (docs/engines-and-precision.md, int8 and the deep stem); it
    is a fraction of a percent of the network's operations. ResNet-B's 7x7 stem (147 weights
    per channel) quantizes well and stays int8.
    """
    image = _image_input(model)
    weights = {t.name: t.dims for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            kept.append(node.name)
        elif node.op_type == "Conv" and node.input[0] == image and len(node.input) > 1:
            dims = weights.get(node.input[1])
            if dims is not None and int(np.prod(dims[1:])) <= STEM_FAN_IN_FP32:
                kept.append(node.name)
    return kept


def _stride(chunks: int) -> int:
    """Largest chunk count <= CHUNKS_PER_COLLECT dividing ``chunks`` (ORT requires a divisor)."""
    return max(s for s in range(1, min(CHUNKS_PER_COLLECT, chunks) + 1) if chunks % s == 0)


def quantize_int8(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    *,
    activation_type: ActivationType = "u8",
    weight_type: WeightType = "s8",
    per_channel: bool = True,
    method: Method = "percentile",
    batch_size: int = DEFAULT_CHUNK,
    symmetric: bool = False,
    reduce_range: bool = False,
) -> Path:
    """Static int8 quantization of ``src`` into ``dst`` (QDQ, dynamic batch), calibrated on ``calibration``.

    ``calibration``: preprocessed float32 images, (N, 3, H, W), a few hundred representative
    ones for real use. ``symmetric``: s8 activations and weights with zero points 0, the only
    Q/DQ TensorRT runs (explicit quantization); slower on the CPU than the default.
    ``reduce_range``: 7-bit weights, which cannot saturate 16-bit pair sums (measured against
    ONNX Runtime's exact kernels in loadtests/reports/2026-12-07-int8-portability). Returns ``dst``.
    """
    if activation_type not in _QUANT_TYPES or weight_type not in _QUANT_TYPES:
        raise ExportError(
            f"int8 types are u8 or s8, got activations {activation_type!r}, weights {weight_type!r}"
        )
    if symmetric and (activation_type, weight_type) != ("s8", "s8"):
        raise ExportError(f"symmetric quantization is s8 x s8, got activations {activation_type}, weights {weight_type}")
    if method not in _METHODS:
        raise ExportError(f"calibration method must be one of {', '.join(_METHODS)}, got {method!r}")
    calibration = np.asarray(calibration)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ExportError(
            f"calibration needs a non-empty (N, C, H, W) image batch, got shape {calibration.shape}"
        )
    if not np.isfinite(calibration).all():
        raise ExportError("calibration images contain NaN or infinite values")
    source = _load_checked(src)
    # ORT's strided calibration stacks chunks: they must all have one size, so the last partial
    # chunk is dropped (at most batch_size - 1 images).
    batch_size = min(batch_size, len(calibration))
    usable = len(calibration) - len(calibration) % batch_size
    if usable < len(calibration):
        log.info("calibrating on %d of %d images (whole chunks of %d)", usable, len(calibration), batch_size)
    calibration = calibration[:usable]
    reader = BatchCalibrationReader(calibration, _image_input(source), batch_size)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # The calibrators print progress to stdout; keep it out of the server's and the CLI's output.
    chatter = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="resserve-quant-") as tmp, contextlib.redirect_stdout(chatter):
        prepared, quantized_path = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        try:
            # Shape inference gives the quantizer every tensor's type (and silences ORT's
            # "run pre-processing" warning); the folded export needs no further graph rewrites.
            quant_pre_process(str(src), str(prepared), skip_optimization=True)
            quantize_static(
                str(prepared),
                str(quantized_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=_QUANT_TYPES[activation_type],
                weight_type=_QUANT_TYPES[weight_type],
                calibrate_method=_METHODS[method],
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"CalibStridedMinMax": _stride(len(reader)),
                               **({"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {})},
                nodes_to_exclude=_kept_fp32(onnx.load(str(prepared))),
            )
            quantized = onnx.load(str(quantized_path))
        except Exception as exc:
            raise ExportError(f"int8 quantization of {src} failed: {exc}") from exc
    log.debug("onnxruntime calibration output:\n%s", chatter.getvalue())
    description = (f"static QDQ{', symmetric' if symmetric else ''}{', reduced range' if reduce_range else ''}, "
                   f"{activation_type} activations, {weight_type} weights "
                   f"{'per channel' if per_channel else 'per tensor'}, {method} on {len(calibration)} images")
    _save_with_metadata(quantized, source, dst, precision="int8", quantization=description)
    log.info("quantized %s -> %s: %s", src, dst, description)
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """float16 copy of ``src`` for the CUDA provider, float32 input and output kept. Returns ``dst``."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    source = _load_checked(src)
    try:
        model = convert_float_to_float16(source, keep_io_types=True)
        # The converter appends the input and output Casts after the nodes that use them.
        OnnxModel.graph_topological_sort(model.graph)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ExportError(f"fp16 conversion of {src} failed: {exc}") from exc
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _save_with_metadata(model, source, dst, precision="fp16")
    log.info("converted %s -> %s (fp16 weights, float32 input and output)", src, dst)
    return dst


def compile_artifact(variant: Variant, config: ModelConfig, folder: Path, calibration: np.ndarray | None,
                     cache_dir: Path | None) -> bool:
    """The registry's compile step for onnxruntime: int8 by static QDQ quantization, fp16 by
    conversion; False: no CPU accuracy report (fp16 runs on the CUDA provider)."""
    target = variant.artifact(folder)
    if variant.precision == "int8":
        assert calibration is not None
        quantize_int8(folder / REFERENCE, target, calibration)
        return True
    convert_fp16(folder / REFERENCE, target)
    log.info("%s: fp16 runs on the CUDA provider; no CPU accuracy report", config.name)
    return False
