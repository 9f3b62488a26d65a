"""Engines behind one interface; :func:`create_engine` builds one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resserve.engines.base import Engine, TensorSpec
from resserve.errors import EngineUnavailableError

ENGINES = ("onnxruntime", "openvino", "tensorrt")


def create_engine(kind: str, path: Path, **options: Any) -> Engine:
    """An unloaded engine of ``kind`` over the artifact at ``path`` (the torch engine takes an
    architecture too: see :class:`resserve.engines.torch_engine.TorchEngine`)."""
    if kind == "onnxruntime":
        from resserve.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, **options)
    if kind == "openvino":
        from resserve.engines.openvino import OpenVinoEngine

        return OpenVinoEngine(path, **options)
    if kind == "tensorrt":
        from resserve.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(path, **options)
    raise EngineUnavailableError(f"unknown engine {kind!r}; available: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "TensorSpec", "create_engine"]
