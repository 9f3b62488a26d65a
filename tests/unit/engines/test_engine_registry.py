"""The engine registry: every entry's functions exist, and config, the factory and the builder read it."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from resserve.config import ENGINE_PRECISIONS, PIXEL_INPUT_ENGINES, EngineName, ModelConfig, PrecisionName
from resserve.engine_registry import ENGINE_NAMES, ENGINES, REFERENCE, engine_spec, resolve
from resserve.engines.factory import Variant
from resserve.errors import EngineUnavailableError


@pytest.mark.parametrize("spec", ENGINES, ids=lambda s: s.name)
def test_every_named_function_imports_and_is_callable(spec) -> None:
    for reference in (spec.opener, spec.compiler, spec.auto_probe):
        if reference is not None:
            assert callable(resolve(reference)), reference


def test_config_validates_against_the_registry() -> None:
    assert get_args(EngineName) == ENGINE_NAMES
    assert set(get_args(PrecisionName)) == {p for spec in ENGINES for p in spec.precisions}
    assert ENGINE_PRECISIONS == {spec.name: spec.precisions for spec in ENGINES}
    assert PIXEL_INPUT_ENGINES == ("onnxruntime", "openvino")
    with pytest.raises(ValueError, match="engine torch does not build precision int8"):
        ModelConfig(name="m", source={"arch": "resnet18", "random_weights": True}, engine="torch", precision="int8")


def test_artifacts_come_from_the_registry() -> None:
    folder = Path("v1")
    assert Variant("onnxruntime", "fp32").artifact(folder) == folder / REFERENCE
    assert Variant("onnxruntime", "int8").artifact(folder) == folder / "model.int8.onnx"
    assert Variant("openvino", "bf16").artifact(folder) == folder / "openvino" / "model.xml"
    assert Variant("tensorrt", "fp16").artifact(folder) == folder / "tensorrt" / "model.plan"
    assert Variant("torch", "bf16").artifact(folder) == folder / "model.safetensors"
    with pytest.raises(EngineUnavailableError, match="unknown engine 'mxnet'; the engines are onnxruntime"):
        Variant("mxnet", "fp32").artifact(folder)
    with pytest.raises(KeyError):
        engine_spec("mxnet")
