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


def near_tie_classifier(path: Path) -> Path:
    """Two classes whose logits differ by 0.1%: fp32 always answers class 1, while int8 rounds both
    to the same activation and answers class 0 on most images (a precision the gate must refuse)."""
    def init(name: str, array: object) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    initializers = [
        init("stem_w", np.ones((4, 3, 1, 1)) * np.array([1, 0.5, 0.25, 2])[:, None, None, None]),
        init("stem_b", np.zeros(4)),
        init("head_w", np.array([[1.0] * 4, [1.001] * 4])[:, :, None, None]),
        init("head_b", np.zeros(2)),
    ]
    nodes = [  # named: the int8 build keeps the stem (on the image) fp32 by name and quantizes the rest
        helper.make_node("Conv", ["input", "stem_w", "stem_b"], ["stem"], name="stem"),
        helper.make_node("Relu", ["stem"], ["stem_relu"], name="stem_relu"),
        helper.make_node("Conv", ["stem_relu", "head_w", "head_b"], ["head"], name="head"),
        helper.make_node("Relu", ["head"], ["head_relu"], name="head_relu"),
        helper.make_node("GlobalAveragePool", ["head_relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["logits"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes, "near_tie_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
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


W1, W2_SPREAD, B1, B2 = 0.6, 0.2, 2.0, 0.0


def two_conv_classifier(path: Path, seed: int = 0, classes: int = NUM_CLASSES) -> Path:
    """Conv(3->16) -> Relu -> Conv(16->32) -> Relu -> GAP -> Gemm: the second convolution is quantized
    by resserve's int8 build (the first reads the image with 27 weights a channel and stays fp32).

    Its second convolution's weights share a positive component, as trained filters often do, so
    pairs of u8 x s8 products overflow 16 bits: int8 answers here differ between CPUs whose kernels
    saturate (AVX2) and those that do not (VNNI, AMX), as ResNets' do.
    """
    rng = np.random.default_rng(seed)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    w2 = rng.standard_normal((32, 16, 3, 3)) * W2_SPREAD + 1.0
    initializers = [
        init("w1", rng.standard_normal((16, 3, 3, 3)) * W1),
        init("b1", rng.standard_normal(16) * 0.1 + B1),
        init("w2", w2 / np.sqrt(16 * 9)),
        init("b2", rng.standard_normal(32) * 0.1 - B2),
        init("fc_w", rng.standard_normal((classes, 32))),
        init("fc_b", rng.standard_normal(classes) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[4, 4]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "two_conv_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
