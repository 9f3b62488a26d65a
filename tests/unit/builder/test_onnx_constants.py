"""Constant subgraphs evaluated at optimize time (ONNX's reference runtime), and the Pads they free."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from resserve.builder.onnx_fold import OptimizeReport, fold_graph

C = 8


def _i64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _f32(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _const(out: str, tensor: onnx.TensorProto) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [out], value=tensor)


def _model(nodes, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _optimize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OptimizeReport]:
    folded, report = fold_graph(model)
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, C, 6, 5)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want, got = (ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                 .run(None, {"x": x})[0] for m in (model, folded))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
    return folded, report


def _torch_pads(prefix: str, widths: list[int], out: str) -> list[onnx.NodeProto]:
    """How a PyTorch re-export computes ``F.pad`` widths at run time (the onnx2torch graph's nodes):
    ConstantOfShape -> Concat -> Reshape(-1, 2) -> Slice(reverse) -> Transpose -> Reshape(-1)."""
    p = prefix
    return [
        _const(f"{p}_n", _i64("n", [4])), _const(f"{p}_w", _i64("w", widths)),
        helper.make_node("ConstantOfShape", [f"{p}_n"], [f"{p}_zeros"], value=_i64("v", [0])),
        helper.make_node("Concat", [f"{p}_w", f"{p}_zeros"], [f"{p}_cat"], axis=0),
        _const(f"{p}_s1", _i64("s", [-1, 2])), helper.make_node("Reshape", [f"{p}_cat", f"{p}_s1"], [f"{p}_r"]),
        _const(f"{p}_st", _i64("a", [-1])), _const(f"{p}_en", _i64("b", [-(2**63) + 1])),
        _const(f"{p}_ax", _i64("c", [0])), _const(f"{p}_sp", _i64("d", [-1])),
        helper.make_node("Slice", [f"{p}_r", f"{p}_st", f"{p}_en", f"{p}_ax", f"{p}_sp"], [f"{p}_sl"]),
        helper.make_node("Transpose", [f"{p}_sl"], [f"{p}_t"], perm=[1, 0]),
        _const(f"{p}_s2", _i64("e", [-1])), helper.make_node("Reshape", [f"{p}_t", f"{p}_s2"], [out]),
    ]


def test_run_time_pad_widths_fold_and_the_pad_joins_its_conv() -> None:
    rng = np.random.default_rng(0)
    nodes = [*_torch_pads("pad", [0, 1, 0, 1], "pads"), _const("zero", _f32("z", 0.0)),
             helper.make_node("Pad", ["x", "pads", "zero"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1])]
    model = _model(nodes, [_f32("w", rng.standard_normal((C, C, 3, 3)))])
    assert len(model.graph.node) == 17
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    pads = next(a for a in folded.graph.node[0].attribute if a.name == "pads")
    assert list(pads.ints) == [1, 1, 2, 2], "the Pad's (H, W) end widths of 1 join the conv's own 1"
    assert {p.name: p.removed for p in report.passes if p.removed} == {
        "fold_constants": {"Constant": 9, "ConstantOfShape": 1, "Concat": 1, "Reshape": 2, "Slice": 1,
                           "Transpose": 1},  # the Pad's value Constant goes once the Pad has
        "fuse_pad_into_conv": {"Pad": 1},
    }
    assert report.ops_after == {"Conv": 1}


def test_a_weight_transposed_in_the_graph_becomes_a_foldable_constant() -> None:
    # A converter that stores HWIO weights transposes them at run time; BatchNorm then cannot fold
    # until the weight is a constant.
    rng = np.random.default_rng(1)
    bn = [_f32(n, v) for n, v in (("s", rng.uniform(0.5, 1.5, C)), ("b", rng.standard_normal(C)),
                                  ("m", rng.standard_normal(C)), ("v", rng.uniform(0.5, 1.5, C)))]
    nodes = [helper.make_node("Transpose", ["w_hwio"], ["w"], perm=[3, 2, 0, 1]),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn")]
    model = _model(nodes, [_f32("w_hwio", rng.standard_normal((3, 3, C, C)) * 0.3), *bn])
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert report.removed == {"BatchNormalization": 1, "Transpose": 1} and report.convs_folded == 1


def test_random_ops_and_a_pad_before_max_pool_stay() -> None:
    # A zero Pad is not MaxPool's own padding (-inf), and RandomUniform is not a constant.
    nodes = [_const("pads", _i64("p", [0, 0, 1, 1, 0, 0, 1, 1])),
             helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
             helper.make_node("MaxPool", ["p"], ["m"], kernel_shape=[3, 3]),
             helper.make_node("RandomUniform", [], ["noise"], shape=[1], dtype=TensorProto.FLOAT, seed=1.0),
             helper.make_node("Mul", ["noise", "zero"], ["nz"]),
             helper.make_node("Add", ["m", "nz"], ["y"])]
    model = _model(nodes, [_f32("zero", [0.0])])
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Constant", "Pad", "MaxPool", "RandomUniform", "Mul", "Add"]
    assert report.removed == {}


def test_a_pad_naming_its_axes_is_not_fused_into_the_conv() -> None:
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv")]
    model = _model(nodes, [_i64("pads", [1, 1, 1, 1]), _i64("axes", [2, 3]),
                           _f32("w", rng.standard_normal((C, C, 3, 3)))], opset=18)
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Pad", "Conv"] and report.removed == {}
