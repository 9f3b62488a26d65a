"""The one place that maps (engine, precision) to an artifact, how to build it and how to open it.

Every version folder holds the folded fp32 ``model.onnx`` (the reference every variant is built
from and measured against) plus, for other variants, the engine's own artifact and an
``accuracy.json`` comparing it with the reference on held-out images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resserve.compile.accuracy import AccuracyReport, compare
from resserve.compile.calibration import calibration_and_held_out
from resserve.config import ModelConfig
from resserve.contract import PreprocessContract
from resserve.engines.base import Engine, PixelInput
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.errors import ConfigError, EngineUnavailableError

log = logging.getLogger(__name__)

REFERENCE = "model.onnx"


@dataclass(frozen=True)
class Variant:
    """A resolved engine and precision for one model config."""

    engine: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.precision}"

    @property
    def needs_calibration(self) -> bool:
        return self.precision == "int8"

    @property
    def is_reference(self) -> bool:
        return self.engine == "onnxruntime" and self.precision == "fp32"

    def artifact(self, folder: Path) -> Path:
        """Where this variant's artifact lives inside a version folder."""
        match (self.engine, self.precision):
            case ("onnxruntime", "fp32"):
                return folder / REFERENCE
            case ("onnxruntime", precision):
                return folder / f"model.{precision}.onnx"
            case ("openvino", _):
                return folder / "openvino" / "model.xml"
            case ("tensorrt", _):
                return folder / "tensorrt" / "model.plan"
            case ("torch", _):
                return folder / "model.safetensors"
        raise EngineUnavailableError(f"unknown engine {self.engine!r}")


def compile_variant(variant: Variant, config: ModelConfig, folder: Path, contract: PreprocessContract,
                    calibration_dir: Path | None) -> AccuracyReport | None:
    """Build ``variant`` from ``folder/model.onnx``; returns its accuracy report (None for the reference)."""
    if variant.is_reference:
        return None
    reference = folder / REFERENCE
    cal = config.calibration
    calibration, held_out = calibration_and_held_out(
        contract, cal.count if variant.needs_calibration else 1, cal.held_out, calibration_dir)
    target = variant.artifact(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    if variant.engine == "onnxruntime":
        if variant.precision == "int8":
            from resserve.compile.onnxruntime_quant import quantize_int8

            quantize_int8(reference, target, calibration)
        else:
            from resserve.compile.onnxruntime_quant import convert_fp16

            convert_fp16(reference, target)
            log.info("%s: fp16 runs on the CUDA provider; no CPU accuracy report", config.name)
            return None
    elif variant.engine == "openvino":
        from resserve.compile.openvino import compile_openvino

        compile_openvino(reference, target.parent, variant.precision,  # type: ignore[arg-type]
                         calibration if variant.needs_calibration else None)
    elif variant.engine == "tensorrt":
        from resserve.compile.tensorrt import build_plan

        build_plan(reference, target.parent, precision=variant.precision,  # type: ignore[arg-type]
                   max_batch_size=config.max_batch_size,
                   preferred_batch_sizes=config.dynamic_batching.preferred_batch_sizes,
                   calibration=calibration if variant.needs_calibration else None)
    elif variant.engine == "torch":
        # The torch engine runs the source model itself; its artifact is written by the exporter.
        pass
    return measure_accuracy(variant, config, folder, held_out)


def measure_accuracy(variant: Variant, config: ModelConfig, folder: Path, held_out: np.ndarray) -> AccuracyReport:
    """Agreement of the built variant with the fp32 reference on held-out images; enforce the floor."""
    reference = OnnxRuntimeEngine(folder / REFERENCE, "cpu")
    reference.load()
    candidate = open_engine(variant, config, folder)
    try:
        images = f"{config.calibration.images}" if config.calibration.images else "generated image-like placeholders"
        report = compare(reference, candidate, held_out, variant=f"{config.name} ({variant.name})",
                         reference_name="onnxruntime-fp32", method=f"held-out images: {images}")
    finally:
        candidate.close()
        reference.close()
    report.write(folder)
    log.info("%s", report.summary())
    report.check(config.calibration.min_top1_agreement)
    return report


def open_engine(variant: Variant, config: ModelConfig, folder: Path, pixels: PixelInput | None = None) -> Engine:
    """A loaded engine for ``variant`` from a built version folder.

    ``pixels``: feed the engine uint8 pixels and normalize inside the model (``uint8_input``).
    """
    artifact = variant.artifact(folder)
    if pixels is not None and variant.engine not in ("onnxruntime", "openvino"):
        message = f"model {config.name}: uint8_input needs the onnxruntime or openvino engine, this variant " \
                  f"runs on {variant.engine}"
        if config.engine != "auto":
            raise ConfigError(f"{message}; set uint8_input: false")
        # engine auto picked an engine per machine: the same config still serves, with float32 input.
        log.warning("%s: serving float32 input instead", message)
        pixels = None
    engine: Engine
    if variant.engine == "onnxruntime":
        engine = OnnxRuntimeEngine(artifact, config.device, intra_op_threads=config.intra_op_threads,
                                   fp16=variant.precision == "fp16", pixels=pixels)
    elif variant.engine == "openvino":
        from resserve.engines.openvino import OpenVinoEngine

        ov = config.openvino
        engine = OpenVinoEngine(artifact, variant.precision, performance_hint=ov.performance_hint,
                                num_streams=ov.num_streams, inference_threads=ov.inference_threads, pixels=pixels)
    elif variant.engine == "tensorrt":
        from resserve.engines.tensorrt import TensorRTEngine

        engine = TensorRTEngine(artifact)
    elif variant.engine == "torch":
        from resserve.engines.torch_engine import TorchEngine

        assert config.source.arch is not None
        engine = TorchEngine(config.source.arch, artifact, num_classes=config.source.num_classes,
                             device="cuda" if config.device in ("cuda", "tensorrt") else "cpu",
                             precision=variant.precision)  # type: ignore[arg-type]
    else:
        raise EngineUnavailableError(f"unknown engine {variant.engine!r}")
    engine.load()
    return engine
