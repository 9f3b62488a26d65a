"""Changing a setting a build depends on rebuilds it, for every engine; serving settings never do
(issue 15: TensorRT plans depend on max_batch_size and preferred_batch_sizes, and the old
hand-written whitelist left them out, so changing them never rebuilt the plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resserve.builder.build_pipeline import BuildPipeline
from resserve.config import ModelConfig
from resserve.repository import ModelRepository

# One config per engine, with the device and precision that engine builds.
ENGINES: dict[str, dict[str, Any]] = {
    "onnxruntime-fp32": {"engine": "onnxruntime", "precision": "fp32"},
    "onnxruntime-int8": {"engine": "onnxruntime", "precision": "int8"},
    "openvino-int8": {"engine": "openvino", "precision": "int8"},
    "openvino-bf16": {"engine": "openvino", "precision": "bf16"},
    "tensorrt-fp16": {"engine": "tensorrt", "precision": "fp16", "device": "tensorrt"},
    "torch-fp32": {"engine": "torch", "precision": "fp32", "source": {"arch": "resnet18", "random_weights": True}},
}
# (dotted path, new value, which variants it must rebuild)
REDUCED = {"onnxruntime-int8", "openvino-int8", "openvino-bf16", "tensorrt-fp16"}
BUILD_INPUTS: list[tuple[str, Any, set[str]]] = [
    ("precision", None, set(ENGINES)),  # each to another precision its engine builds
    ("source.seed", 7, set(ENGINES)),
    ("calibration.count", 17, REDUCED),
    ("calibration.held_out", 33, REDUCED),
    ("calibration.images", "calibration-images", REDUCED),
    ("max_batch_size", 4, {"tensorrt-fp16"}),
    ("dynamic_batching.preferred_batch_sizes", [2], {"tensorrt-fp16"}),
    ("device", "cuda", {"tensorrt-fp16"}),
]
SERVING_ONLY: list[tuple[str, Any]] = [
    ("dynamic_batching.max_queue_delay_ms", 50.0), ("dynamic_batching.max_queue_size", 8),
    ("dynamic_batching.default_timeout_ms", 5.0), ("instance_count", 3), ("intra_op_threads", 1),
    ("warmup_batch_sizes", [1, 2]), ("engine_timeout_s", 5.0), ("calibration.min_top1_agreement", 0.1),
    ("openvino.performance_hint", "THROUGHPUT"), ("fast_preprocess", True), ("softmax_in_model", True),
]
OTHER_PRECISION = {"onnxruntime": {"fp32": "int8", "int8": "fp32"}, "openvino": {"int8": "bf16", "bf16": "int8"},
                   "tensorrt": {"fp16": "int8"}, "torch": {"fp32": "bf16"}}


def config_for(variant: str, **changes: Any) -> ModelConfig:
    raw: dict[str, Any] = {"name": "m", "source": {"onnx": "source.onnx"}, **ENGINES[variant]}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return ModelConfig.model_validate(raw)


@pytest.fixture
def builder(tmp_path: Path) -> BuildPipeline:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "source.onnx").write_bytes(b"not really onnx: only its bytes are hashed")
    return BuildPipeline(ModelRepository(tmp_path))


@pytest.mark.parametrize("variant", sorted(ENGINES))
@pytest.mark.parametrize(("field", "value", "rebuilds"), BUILD_INPUTS, ids=[b[0] for b in BUILD_INPUTS])
def test_build_inputs_rebuild_exactly_the_variants_that_use_them(builder: BuildPipeline, variant: str, field: str,
                                                                 value: Any, rebuilds: set[str]) -> None:
    base = config_for(variant)
    if field == "precision":
        value = OTHER_PRECISION[base.engine][base.precision]
    if field == "device" and base.engine != "tensorrt":
        value = "cuda" if base.engine != "openvino" else "auto"
    changed = config_for(variant, **{field: value})
    differs = builder.content_hash(changed) != builder.content_hash(base)
    assert differs == (variant in rebuilds), f"{field} -> {value!r} on {variant}"


@pytest.mark.parametrize("variant", sorted(ENGINES))
@pytest.mark.parametrize(("field", "value"), SERVING_ONLY, ids=[s[0] for s in SERVING_ONLY])
def test_serving_settings_never_rebuild(builder: BuildPipeline, variant: str, field: str, value: Any) -> None:
    base = config_for(variant)
    assert builder.content_hash(config_for(variant, **{field: value})) == builder.content_hash(base)


def test_build_spec_is_declared_beside_the_fields() -> None:
    spec = config_for("tensorrt-fp16").build_spec("tensorrt")
    assert set(spec) == {"source", "engine", "precision", "device", "max_batch_size", "dynamic_batching",
                         "calibration"}
    assert spec["dynamic_batching"] == {"preferred_batch_sizes": []}
    assert set(spec["calibration"]) == {"images", "count", "held_out", "check_images"}
    assert set(config_for("onnxruntime-fp32").build_spec("onnxruntime")) == {"source", "engine", "precision"}
