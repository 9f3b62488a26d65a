"""ONNX Runtime's TensorRT provider as resserve configures it: the options dict (profile shapes from
the model's batch bounds, caches), int8 kept off that provider, and the provider reported as the
one that runs. Real ONNX files and real ONNX Runtime sessions; the provider itself needs a GPU
(tests/gpu/test_onnxruntime_gpu.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from resserve.config import ModelConfig
from resserve.engines.onnxruntime import (
    PROVIDERS,
    OnnxRuntimeEngine,
    batch_profile,
    image_input,
    resolve_provider,
    tensorrt_provider_options,
)
from resserve.errors import ConfigError, EngineError, EngineUnavailableError
from tests.model_repo_fixtures import tiny_classifier


def test_the_profile_spans_every_batch_and_is_tuned_for_the_largest_preferred_size() -> None:
    assert batch_profile(16, [4, 8, 32]) == (1, 8, 16)
    assert batch_profile(12) == (1, 12, 12)
    assert batch_profile(1, [1]) == (1, 1, 1)
    with pytest.raises(ConfigError):
        batch_profile(0)
    with pytest.raises(ConfigError):
        batch_profile(8, [0])


def test_options_name_the_input_and_its_min_opt_max_shapes(tmp_path: Path) -> None:
    options = tensorrt_provider_options(device_id=1, fp16=True, cache_dir=tmp_path, input_name="input",
                                        sample_shape=(3, 224, 224), batches=(1, 8, 32))
    assert options == {
        "device_id": 1, "trt_fp16_enable": True,
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path),
        "trt_profile_min_shapes": "input:1x3x224x224",
        "trt_profile_opt_shapes": "input:8x3x224x224",
        "trt_profile_max_shapes": "input:32x3x224x224",
    }


def test_the_chain_reads_the_input_from_the_model_file(tmp_path: Path) -> None:
    path = tiny_classifier(tmp_path / "m.onnx")
    assert image_input(onnx.load(str(path))) == ("input", (3, 224, 224))
    engine = OnnxRuntimeEngine(path, "tensorrt", batches=(1, 4, 8), cache_dir=tmp_path / "cache")
    chain = engine._provider_chain("tensorrt", None)
    assert [name for name, _ in chain] == [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
    trt = chain[0][1]
    assert trt["trt_profile_max_shapes"] == "input:8x3x224x224" and trt["trt_profile_opt_shapes"] == "input:4x3x224x224"
    assert (tmp_path / "cache" / "tensorrt").is_dir()


def test_a_model_with_a_dynamic_image_axis_has_no_profile(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", 224])])
    with pytest.raises(EngineError, match="static"):
        image_input(helper.make_model(graph))


def test_int8_never_goes_to_the_tensorrt_provider() -> None:
    with pytest.raises(EngineUnavailableError, match="symmetric signed"):
        resolve_provider("tensorrt", int8=True)
    best = resolve_provider("auto", int8=True)
    assert best != "tensorrt" and PROVIDERS[best] in ort.get_available_providers()
    base = {"name": "m", "source": {"onnx": "m.onnx"}, "engine": "onnxruntime", "precision": "int8"}
    with pytest.raises(ValueError, match="device tensorrt"):
        ModelConfig(**base, device="tensorrt")
    assert ModelConfig(**base, device="cuda").device == "cuda"


def test_the_reported_provider_is_the_one_that_runs(tmp_path: Path) -> None:
    engine = OnnxRuntimeEngine(tiny_classifier(tmp_path / "m.onnx"), "auto", intra_op_threads=1)
    engine.load()
    try:
        active = engine.session.get_providers()[0]
        assert PROVIDERS[engine.provider] == active  # here CPUExecutionProvider: "cpu"
        assert engine.describe()["provider"] == engine.provider
    finally:
        engine.close()
