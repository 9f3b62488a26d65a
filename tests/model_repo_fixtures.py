"""A tiny valid ONNX image classifier and model-folder helpers, for repository and build tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

NUM_CLASSES = 10


def tiny_classifier(path: Path, seed: int = 0, props: dict[str, str] | None = None) -> Path:
    """A valid image classifier in ONNX: Conv -> BatchNorm -> Relu -> GAP -> Flatten -> Gemm.

    Input ``input`` (N, 3, 224, 224) with a dynamic batch, output ``logits`` (N, 10); the folding
    pass removes its BatchNorm and checks parity in well under a second.
    """
    rng = np.random.default_rng(seed)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    initializers = [
        init("conv_w", rng.standard_normal((4, 3, 3, 3)) * 0.5),
        init("conv_b", rng.standard_normal(4)),
        init("bn_scale", rng.uniform(0.5, 1.5, 4)),
        init("bn_bias", rng.standard_normal(4)),
        init("bn_mean", rng.standard_normal(4) * 0.1),
        init("bn_var", rng.uniform(0.5, 1.5, 4)),
        init("fc_w", rng.standard_normal((NUM_CLASSES, 4))),
        init("fc_b", rng.standard_normal(NUM_CLASSES)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["conv", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    if props:
        helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def messages() -> tuple[list[str], Callable[[str], None]]:
    said: list[str] = []
    return said, said.append
