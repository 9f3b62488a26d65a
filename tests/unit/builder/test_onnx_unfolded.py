"""What ``--require-folded`` refuses: per-channel arithmetic still reading a Conv after optimizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resserve.builder.onnx_fold import fold_graph, optimize_onnx
from resserve.builder.onnx_fold.unfolded import find_unfolded
from resserve.errors import ExportError

C = 8


def _init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _value(name: str, dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _model(nodes, inputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [_value("y", ["n", "a", "b", "c"])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _conv_inits(rng) -> list[onnx.TensorProto]:
    return [_init("w", rng.standard_normal((C, C, 3, 3)) * 0.3), _init("b", rng.standard_normal(C))]


def _conv(out: str = "c") -> onnx.NodeProto:
    return helper.make_node("Conv", ["x", "w", "b"], [out], name="conv", pads=[1, 1, 1, 1])


def _overridable_scale() -> onnx.ModelProto:
    """Conv -> Mul(scale) where ``scale`` is an initializer that is also a graph input: a default
    the caller may replace at run time, so it is not a constant and cannot be folded."""
    rng = np.random.default_rng(0)
    nodes = [_conv(), helper.make_node("Mul", ["c", "scale"], ["y"], name="mul")]
    inputs = [_value("x", ["N", C, 6, 5]), _value("scale", [1, C, 1, 1])]
    return _model(nodes, inputs, [*_conv_inits(rng), _init("scale", rng.uniform(0.5, 2, (1, C, 1, 1)))])


def test_a_non_constant_per_channel_mul_is_named() -> None:
    folded, report = fold_graph(_overridable_scale())
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Mul"]
    assert [str(u) for u in report.unfolded] == ["Mul 'mul' after Conv 'conv': its operand 'scale' is not a constant"]


def test_require_folded_fails_naming_the_node_and_writes_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_overridable_scale(), str(src))
    with pytest.raises(ExportError, match=r"1 per-channel op\(s\) after a Conv could not be folded: Mul 'mul' "
                                          r"after Conv 'conv': its operand 'scale' is not a constant"):
        optimize_onnx(src, dst, require_folded=True)
    assert not dst.exists()
    report = optimize_onnx(src, dst)  # without the flag it is a report line, not an error
    assert dst.exists() and len(report.unfolded) == 1
    assert report.lines()[-2] == "not folded: Mul 'mul' after Conv 'conv': its operand 'scale' is not a constant"


def test_the_channel_axis_is_followed_through_a_transpose() -> None:
    # Conv -> Transpose(NHWC) -> Mul by a run-time (C,) input: per-channel on the last axis.
    rng = np.random.default_rng(1)
    nodes = [_conv(), helper.make_node("Transpose", ["c"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["t", "gain"], ["m"], name="gain_mul"),
             helper.make_node("Mul", ["m", "mask"], ["y"], name="mask_mul")]
    inputs = [_value("x", ["N", C, 6, 5]), _value("gain", [C]), _value("mask", [6, 5, C])]
    findings = find_unfolded(_model(nodes, inputs, _conv_inits(rng)))
    # The (H, W, C) mask is not per-channel, and it reads the Mul's output, not the Conv's.
    assert [str(u) for u in findings] == ["Mul 'gain_mul' after Conv 'conv': its operand 'gain' is not a constant"]


def test_a_squeeze_excitation_gate_is_not_reported() -> None:
    # x * sigmoid(fc(pool(x))): per-channel in shape, but computed from the conv's own output.
    rng = np.random.default_rng(2)
    nodes = [_conv(), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Conv", ["p", "fc"], ["q"], name="fc"),
             helper.make_node("Sigmoid", ["q"], ["g"]), helper.make_node("Mul", ["c", "g"], ["y"], name="gate")]
    model = _model(nodes, [_value("x", ["N", C, 6, 5])], [*_conv_inits(rng), _init("fc", rng.standard_normal((C, C, 1, 1)))])
    _, report = fold_graph(model)
    assert report.unfolded == () and report.removed == {}


def test_a_constant_mul_on_a_shared_conv_output_is_reported() -> None:
    rng = np.random.default_rng(3)
    nodes = [_conv(), helper.make_node("Mul", ["c", "s"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "c"], ["y"], name="add")]
    model = _model(nodes, [_value("x", ["N", C, 6, 5])], [*_conv_inits(rng), _init("s", rng.uniform(1, 2, (C, 1, 1)))])
    _, report = fold_graph(model)
    assert [(u.node, u.reason) for u in report.unfolded] == [("mul", "the Conv's output is also read by other nodes")]
