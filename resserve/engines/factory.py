"""Open an engine from a built artifact: the one map from (engine, precision) to file and engine.

Every version folder holds the folded fp32 ``model.onnx`` (the reference every variant is built
from and measured against) plus, for other variants, the engine's own artifact. The builder
(:mod:`resserve.build.variants`) writes to the paths named here and the server opens them here,
so the two never disagree about where an artifact lives.

Example::

    variant = resolve_variant(config)                   # engine auto resolved for this machine
    engine = open_engine(variant, config, Path("model_repo/resnet50/1"))
    logits = engine.infer(np.zeros((8, 3, 224, 224), np.float32))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from resserve.config import PIXEL_INPUT_ENGINES, ModelConfig
from resserve.engines.base import Engine, PixelInput
from resserve.engines.onnxruntime import OnnxRuntimeEngine, batch_profile
from resserve.engines.select import resolve_engine
from resserve.errors import ConfigError, EngineUnavailableError
from resserve.metadata import read_metadata

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


def resolve_variant(config: ModelConfig) -> Variant:
    """The engine (``auto`` resolved for this machine) and precision a build of ``config`` produces."""
    engine, why = resolve_engine(config.engine, config.precision)
    if config.engine == "auto":
        log.info("model %s: engine auto -> %s (%s)", config.name, engine, why)
    return Variant(engine, config.precision)


def open_engine(variant: Variant, config: ModelConfig, folder: Path, pixels: PixelInput | None = None) -> Engine:
    """A loaded engine for ``variant`` from a built version folder.

    ``pixels``: feed the engine uint8 pixels and normalize inside the model (``uint8_input``).
    """
    artifact = variant.artifact(folder)
    if pixels is not None and variant.engine not in PIXEL_INPUT_ENGINES:
        message = f"model {config.name}: uint8_input needs the {' or '.join(PIXEL_INPUT_ENGINES)} engine, " \
                  f"this variant runs on {variant.engine}"
        if config.engine != "auto":
            raise ConfigError(f"{message}; set uint8_input: false")
        # engine auto picked an engine per machine: the same config still serves, with float32 input.
        log.warning("%s: serving float32 input instead", message)
        pixels = None
    engine: Engine
    if variant.engine == "onnxruntime":
        engine = OnnxRuntimeEngine(artifact, config.device, intra_op_threads=config.intra_op_threads,
                                   fp16=variant.precision == "fp16", int8=variant.precision == "int8",
                                   pixels=pixels, batches=batch_profile(
                                       config.max_batch_size, config.dynamic_batching.preferred_batch_sizes),
                                   int8_exact_kernels=config.onnxruntime.int8_exact_kernels)
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
        width, height = read_metadata(folder / "model.onnx").preprocess.crop_wh
        engine = TorchEngine(config.source.arch, artifact, num_classes=config.source.num_classes,
                             device="cuda" if config.device in ("cuda", "tensorrt") else "cpu",
                             precision=variant.precision, input_size=(height, width))  # type: ignore[arg-type]
    else:
        raise EngineUnavailableError(f"unknown engine {variant.engine!r}")
    engine.load()
    return engine
