"""The engines, one entry each: what config validation, the factory, ``engine: auto`` and the
builder all read.

An entry names the engine, the precisions it builds, where its artifact sits in a version
folder, whether it can take uint8 pixels (normalizing inside the model), how to open it and how
to compile it, and where ``engine: auto`` ranks it. The open and compile steps are named as
``module:function`` and imported only when used, so this table imports nothing heavy, and the
serving side never imports the builder. Adding an engine is one entry here plus its own modules
(the engine, and its compile step in the builder). A leaf: no resserve imports.

Example::

    spec = engine_spec("openvino")
    spec.artifact(Path("model_repo/resnet50-int8/1"), "int8")   # .../openvino/model.xml
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE = "model.onnx"  # every version's folded fp32 ONNX, the reference every variant is built from


@dataclass(frozen=True)
class EngineSpec:
    """One engine: its name, precisions, artifact, pixel input, how to open, compile and rank it.

    ``opener``: ``module:function(variant, config, folder, pixels) -> Engine`` (not yet loaded).
    ``compiler``: ``module:function(variant, config, folder, calibration, cache_dir)``, in the
    builder; None where the build writes nothing more than the reference (or the exporter does).
    ``auto_probe``: ``module:function(precision) -> (ok, why)`` for ``engine: auto``, asked in
    ``auto_rank`` order (lowest first); None: never chosen by auto except as the fallback.
    """

    name: str
    precisions: tuple[str, ...]
    artifact_pattern: str  # inside a version folder; "{precision}" is replaced
    opener: str
    compiler: str | None = None
    pixel_input: bool = False
    auto_rank: int = 100
    auto_probe: str | None = None
    reference_precision: str | None = None  # the precision whose artifact is the reference itself
    # Runs the source model itself: needs ``source.arch``, and the exporter writes its artifact (the weights).
    runs_source_weights: bool = False

    def artifact(self, folder: Path, precision: str) -> Path:
        """Where this engine's artifact for ``precision`` lives inside a version folder."""
        if precision == self.reference_precision:
            return folder / REFERENCE
        return folder / self.artifact_pattern.format(precision=precision)


ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec("onnxruntime", ("fp32", "fp16", "int8"), "model.{precision}.onnx",
               opener="resserve.engines.onnxruntime:open_from_config",
               compiler="resserve.builder.ort_quant:compile_artifact", pixel_input=True, auto_rank=90,
               reference_precision="fp32"),
    EngineSpec("openvino", ("fp32", "bf16", "int8"), "openvino/model.xml",
               opener="resserve.engines.openvino:open_from_config",
               compiler="resserve.builder.compile_openvino:compile_artifact", pixel_input=True, auto_rank=20,
               auto_probe="resserve.engines.select:openvino_runs"),
    EngineSpec("tensorrt", ("fp32", "fp16", "int8"), "tensorrt/model.plan",
               opener="resserve.engines.tensorrt:open_from_config",
               compiler="resserve.builder.compile_tensorrt:compile_artifact", auto_rank=10,
               auto_probe="resserve.engines.select:tensorrt_runs"),
    # The torch engine runs the source model; its artifact (the weights) is written by the exporter.
    EngineSpec("torch", ("fp32", "bf16", "fp16"), "model.safetensors",
               opener="resserve.engines.torch_engine:open_from_config", runs_source_weights=True),
)
ENGINE_NAMES: tuple[str, ...] = tuple(spec.name for spec in ENGINES)
PRECISION_NAMES: tuple[str, ...] = tuple(dict.fromkeys(p for spec in ENGINES for p in spec.precisions))
FALLBACK_ENGINE = "onnxruntime"  # engine auto's answer where no probe says yes
SOURCE_WEIGHT_ENGINES: tuple[str, ...] = tuple(spec.name for spec in ENGINES if spec.runs_source_weights)


def engine_spec(name: str) -> EngineSpec:
    """The entry for ``name``; KeyError names the engines there are."""
    for spec in ENGINES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown engine {name!r}; the engines are {', '.join(ENGINE_NAMES)}")


def resolve(reference: str) -> Callable[..., Any]:
    """The function a ``module:function`` string names, imported now."""
    module, _, attribute = reference.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    return function
