"""Open an engine from a built artifact, as the engine registry (:mod:`resserve.engine_registry`) says.

Every version folder holds the folded fp32 ``model.onnx`` (the reference every variant is built
from and measured against) plus, for other variants, the engine's own artifact. The builder
(:mod:`resserve.builder.variants`) writes to the paths the registry names and the server opens
them through it, so the two never disagree about where an artifact lives.

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
from resserve.engine_registry import REFERENCE, engine_spec, resolve
from resserve.engines.base import Engine, PixelInput
from resserve.engines.select import resolve_engine
from resserve.errors import ConfigError, EngineUnavailableError

log = logging.getLogger(__name__)

__all__ = ["REFERENCE", "Variant", "open_engine", "resolve_variant"]


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
        """This variant's artifact is the folded fp32 reference itself (nothing to compile or measure)."""
        return engine_spec(self.engine).reference_precision == self.precision

    def artifact(self, folder: Path) -> Path:
        """Where this variant's artifact lives inside a version folder (the registry says)."""
        try:
            spec = engine_spec(self.engine)
        except KeyError as exc:
            raise EngineUnavailableError(str(exc.args[0])) from exc
        return spec.artifact(folder, self.precision)


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
    if pixels is not None and variant.engine not in PIXEL_INPUT_ENGINES:
        message = f"model {config.name}: uint8_input needs the {' or '.join(PIXEL_INPUT_ENGINES)} engine, " \
                  f"this variant runs on {variant.engine}"
        if config.engine != "auto":
            raise ConfigError(f"{message}; set uint8_input: false")
        # engine auto picked an engine per machine: the same config still serves, with float32 input.
        log.warning("%s: serving float32 input instead", message)
        pixels = None
    try:
        spec = engine_spec(variant.engine)
    except KeyError as exc:
        raise EngineUnavailableError(str(exc.args[0])) from exc
    engine: Engine = resolve(spec.opener)(variant, config, folder, pixels)
    try:
        engine.load()
    except BaseException:
        engine.close()  # what a failed load allocated (TensorRT's pinned and device buffers)
        raise
    return engine
