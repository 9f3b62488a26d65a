"""``resserve optimize`` on graphs real converters wrote (tests/fixtures/converters, a Keras ResNet
with random weights through tf2onnx, and re-exported through onnx2torch and PyTorch), checked
against the Keras model's own logits from the manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from resserve.builder.onnx_fold import optimize_onnx
from resserve.builder.logit_parity import compare_logits

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "converters"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

_HEAD = {"Conv": 8, "MatMul": 1, "MaxPool": 1, "Pad": 1, "Relu": 7}
# Node counts after optimizing: 8 Convs, 3 residual Adds and the classifier's bias Add, the Pad
# before the max pool (a zero Pad is not MaxPool's padding) and, for NHWC input, the Transpose at
# the input.
EXPECTED_AFTER: dict[str, dict[str, int]] = {
    "keras_resnet_tf2onnx.onnx": _HEAD | {"Add": 4, "GlobalAveragePool": 1, "Squeeze": 1, "Transpose": 1},
    "keras_resnet_tf2onnx_unoptimized.onnx": _HEAD | {"Add": 4, "ReduceMean": 1, "Transpose": 1},
    "keras_resnet_tf2onnx_no_bn_fusion.onnx": _HEAD | {"Add": 4, "GlobalAveragePool": 1, "Squeeze": 1,
                                                       "Transpose": 1},
    "keras_resnet_affine_tf2onnx.onnx": _HEAD | {"Add": 4, "GlobalAveragePool": 1, "Squeeze": 1, "Transpose": 1},
    "keras_resnet_affine_tf2onnx_unoptimized.onnx": _HEAD | {"Add": 4, "ReduceMean": 1, "Transpose": 1},
    "keras_resnet_onnx2torch.onnx": _HEAD | {"Add": 4, "Constant": 1, "ReduceMean": 1, "Transpose": 1},
}
# Convs that absorb BatchNorm or its arithmetic: none where tf2onnx already fused them.
EXPECTED_FOLDED = {"keras_resnet_tf2onnx.onnx": 0}


def _reference_input(layout: str) -> np.ndarray:
    """The manifest's input formula, (2, 64, 64, 3) NHWC; NCHW files take it transposed."""
    shape = MANIFEST["reference"]["input"]["shape"]
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    x = (np.sin(0.37 * i + 0.5) * 1.5 + 0.25 * np.cos(0.011 * i)).reshape(shape).astype(np.float32)
    return x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=lambda e: e["file"])
def test_converter_graph_optimizes_with_keras_parity(entry: dict, tmp_path: Path) -> None:
    src, out = FIXTURES / entry["file"], tmp_path / entry["file"]
    assert entry["file"] in EXPECTED_AFTER, f"{entry['file']} is new in the manifest: add its expected counts"
    assert _ops(onnx.load(str(src))) == entry["op_counts"], "the fixture is the one the manifest describes"
    report = optimize_onnx(src, out, require_folded=True)
    optimized = onnx.load(str(out))
    assert _ops(optimized) == EXPECTED_AFTER[entry["file"]]
    assert report.ops_before == dict(sorted(entry["op_counts"].items()))
    assert report.convs_folded == EXPECTED_FOLDED.get(entry["file"], 8) and not report.unfolded
    inputs = {i.name for i in optimized.graph.input}
    assert all(n.input[0] in inputs for n in optimized.graph.node if n.op_type == "Transpose"), \
        "a Transpose is left only at the input boundary"
    x = _reference_input(entry["input_layout"])
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {entry["input"]["name"]: x})
    # The affine Keras model is the same function as the BatchNorm one (the manifest records 0 difference).
    want = np.asarray(MANIFEST["reference"]["logits"], dtype=np.float32)
    compare_logits(f"optimized {entry['file']} vs Keras", want, got, rtol=MANIFEST["reference"]["tolerance"]["max"])
