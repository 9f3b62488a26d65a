"""Graphs in a converter's NHWC pattern: Transposes pushed through elementwise ops until they cancel,
nop Casts dropped, then the per-channel arithmetic folded into the Convs; checked in ONNX Runtime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from resserve.builder.onnx_fold import OptimizeReport, fold_graph

C = 8
NCHW, NHWC = [0, 3, 1, 2], [0, 2, 3, 1]  # the perms that produce each layout


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _value(name: str, dims=None) -> onnx.ValueInfoProto:
    """A float value_info; without dims a symbolic rank-4 shape (the checker wants a shape)."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims or ["n", "a", "b", "c"])


def _init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


def _attr(node: onnx.NodeProto, name: str):
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input; a symbolic dim (the batch) is 2."""
    rng = np.random.default_rng(0)
    return {value.name: rng.standard_normal([d.dim_value or 2 for d in value.type.tensor_type.shape.dim])
            .astype(np.float32) for value in model.graph.input}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _optimize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Optimize, run the checker, and assert every output matches (atol 1e-5 of max|out|)."""
    folded, report = fold_graph(model)
    onnx.checker.check_model(folded, full_check=True)
    feeds = _feeds(model)
    for want, got in zip(_run(model, feeds), _run(folded, feeds), strict=True):
        assert want.shape == got.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.max(np.abs(want))))
    return folded, report


def _conv(rng, name: str, x: str, out: str, c_in: int = C, k: int = 3, bias: bool = False):
    inits = [_init(f"{name}_w", rng.standard_normal((C, c_in, k, k)) * 0.3)]
    if bias:
        inits.append(_init(f"{name}_b", rng.standard_normal(C)))
    node = helper.make_node("Conv", [x, *(t.name for t in inits)], [out], name=name, pads=[k // 2] * 4)
    return [node], inits


def _transpose(x: str, out: str, perm: list[int]) -> onnx.NodeProto:
    return helper.make_node("Transpose", [x], [out], name=f"T_{out}", perm=perm)


def _cast(x: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Cast", [x], [out], name=f"cast_{out}", to=TensorProto.FLOAT)


def _issue_conv(rng, name: str, x: str, out: str, c_in: int = C):
    """The issue's chain after one conv: Conv (NCHW) -> Transpose(0,2,3,1) -> Cast -> Add(bias[C])
    -> Cast -> Sub(mean[C]) -> Mul(scale[C]) -> Add(beta[C]) -> Cast -> Cast; output in NHWC."""
    nodes, inits = _conv(rng, name, x, f"{name}_c", c_in=c_in)
    p = name
    inits += [_init(f"{p}_bias", rng.standard_normal(C)), _init(f"{p}_mean", rng.standard_normal(C)),
              _init(f"{p}_scale", rng.uniform(0.5, 1.5, C)), _init(f"{p}_beta", rng.standard_normal(C))]
    nodes += [
        _transpose(f"{p}_c", f"{p}_t", NHWC),
        _cast(f"{p}_t", f"{p}_k1"),
        helper.make_node("Add", [f"{p}_k1", f"{p}_bias"], [f"{p}_a"], name=f"{p}_add_bias"),
        _cast(f"{p}_a", f"{p}_k2"),
        helper.make_node("Sub", [f"{p}_k2", f"{p}_mean"], [f"{p}_s"], name=f"{p}_sub_mean"),
        helper.make_node("Mul", [f"{p}_s", f"{p}_scale"], [f"{p}_m"], name=f"{p}_mul_scale"),
        helper.make_node("Add", [f"{p}_m", f"{p}_beta"], [f"{p}_b"], name=f"{p}_add_beta"),
        _cast(f"{p}_b", f"{p}_k3"),
        _cast(f"{p}_k3", out),
    ]
    return nodes, inits


def test_the_issues_chain_with_a_residual_add_folds_completely() -> None:
    rng = np.random.default_rng(0)
    n1, i1 = _issue_conv(rng, "conv1", "x", "bn1")
    n2, i2 = _issue_conv(rng, "conv2", "u1", "bn2")
    n3, i3 = _conv(rng, "conv3", "u2", "y", k=1, bias=True)
    nodes = [
        *n1, helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),  # r1: NHWC, read twice
        _transpose("r1", "u1", NCHW), *n2,
        helper.make_node("Add", ["bn2", "r1"], ["res"], name="residual"),  # the residual add in NHWC
        helper.make_node("Relu", ["res"], ["r2"], name="relu2"),
        _transpose("r2", "u2", NCHW), *n3,
    ]
    model = _model(nodes, [_value("x", ["N", C, 6, 5])], [_value("y", ["N", C, 6, 5])], i1 + i2 + i3)
    assert _ops(model) == {"Conv": 3, "Transpose": 4, "Cast": 8, "Add": 5, "Sub": 2, "Mul": 2, "Relu": 2}
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Conv", "Add", "Relu", "Conv"]
    assert report.removed == {"Add": 4, "Cast": 8, "Mul": 2, "Sub": 2, "Transpose": 4}
    assert report.ops_after == {"Add": 1, "Conv": 3, "Relu": 2}
    assert (report.convs, report.convs_folded) == (3, 2)
    assert {p.name: p.removed for p in report.passes if p.removed} == {
        "eliminate_nop_cast": {"Cast": 8},
        "push_transposes": {"Transpose": 4},
        "fold_into_convs": {"Add": 4, "Sub": 2, "Mul": 2},
    }
    assert {p.library for p in report.passes} == {"onnxoptimizer", "resserve"}
    assert not report.unfolded
    assert [o.name for o in folded.graph.output] == ["y"]


def test_unary_ops_prelu_and_max_let_transposes_through() -> None:
    rng = np.random.default_rng(1)
    n1, i1 = _conv(rng, "conv1", "x", "c1", bias=True)
    n2, i2 = _conv(rng, "conv2", "u", "y")
    consts = [_init("lo", -0.5), _init("hi", 4.0), _init("slope", rng.uniform(0, 0.3, C)),
              _init("floor", rng.standard_normal(C) * 0.1)]
    nodes = [
        *n1, _transpose("c1", "t", NHWC),
        helper.make_node("LeakyRelu", ["t"], ["a"], alpha=0.2),
        helper.make_node("Clip", ["a", "lo", "hi"], ["b"]),
        helper.make_node("HardSigmoid", ["b"], ["c"], alpha=0.3, beta=0.4),
        helper.make_node("PRelu", ["c", "slope"], ["d"]),
        helper.make_node("Max", ["d", "floor"], ["e"]),
        helper.make_node("Sigmoid", ["e"], ["f"]),
        _transpose("f", "u", NCHW), *n2,
    ]
    model = _model(nodes, [_value("x", ["N", C, 6, 5])], [_value("y", None)], i1 + i2 + consts)
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == [
        "Conv", "LeakyRelu", "Clip", "HardSigmoid", "PRelu", "Max", "Sigmoid", "Conv"]
    assert report.removed == {"Transpose": 2}
    slope = next(t for t in folded.graph.initializer if t.name == folded.graph.node[4].input[1])
    assert list(slope.dims) == [1, C, 1, 1], "a (C,) constant on the NHWC last axis is per-channel in NCHW"


def test_a_full_rank_constant_is_transposed_with_the_data() -> None:
    rng = np.random.default_rng(2)
    n1, i1 = _conv(rng, "conv1", "x", "c1")
    n2, i2 = _conv(rng, "conv2", "u", "y")
    nodes = [*n1, _transpose("c1", "t", NHWC), helper.make_node("Add", ["pos", "t"], ["a"]),
             _transpose("a", "u", NCHW), *n2]
    model = _model(nodes, [_value("x", ["N", C, 6, 5])], [_value("y", None)],
                   [*i1, *i2, _init("pos", rng.standard_normal((6, 5, C)))])
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Add", "Conv"]
    assert report.removed == {"Transpose": 2} and report.convs_folded == 0
    pos = next(t for t in folded.graph.initializer if t.name in folded.graph.node[1].input)
    assert list(pos.dims) == [1, C, 6, 5]


def _pattern(rng, between: list[onnx.NodeProto], extra_inputs=(), extra_inits=()) -> onnx.ModelProto:
    """conv1 -> Transpose(NHWC) -> ``between`` (reads "t", writes "z") -> Transpose(NCHW) -> conv2."""
    n1, i1 = _conv(rng, "conv1", "x", "c1")
    n2, i2 = _conv(rng, "conv2", "u", "y")
    nodes = [*n1, _transpose("c1", "t", NHWC), *between, _transpose("z", "u", NCHW), *n2]
    inputs = [_value("x", [2, C, 6, 6]), *extra_inputs]
    return _model(nodes, inputs, [_value("y", None)], [*i1, *i2, *extra_inits])


@pytest.mark.parametrize("case", ["plain input", "rank 5 constant", "two perms", "softmax", "shared with softmax"])
def test_what_cannot_be_proven_is_left_alone(case: str) -> None:
    rng = np.random.default_rng(3)
    between, inputs, inits = [], [], []
    if case == "plain input":  # the other side of the Add was never transposed: nothing to cancel
        between = [helper.make_node("Add", ["t", "side"], ["z"])]
        inputs = [_value("side", [2, 6, 6, C])]
    elif case == "rank 5 constant":  # moving it would change the Add's output rank
        between = [helper.make_node("Add", ["t", "k"], ["z5"]), helper.make_node("Squeeze", ["z5", "ax"], ["z"])]
        inits = [_init("k", rng.standard_normal((1, 1, 1, 1, C))),
                 numpy_helper.from_array(np.array([0], dtype=np.int64), "ax")]
    elif case == "two perms":  # NHWC + NWHC: no single Transpose below the Add is equivalent
        between = [_transpose("c1", "t2", [0, 3, 2, 1]), helper.make_node("Add", ["t", "t2"], ["z"])]
    elif case == "softmax":  # not elementwise
        between = [helper.make_node("Softmax", ["t"], ["z"], axis=3)]
    else:  # the Relu could take the Transpose only by copying it: the Softmax still reads it
        between = [helper.make_node("Relu", ["t"], ["r"]), helper.make_node("Softmax", ["t"], ["s"], axis=3),
                   helper.make_node("Add", ["r", "s"], ["z"])]
    model = _pattern(rng, between, inputs, inits)
    before = _ops(model)
    folded, report = _optimize(model)
    assert _ops(folded) == before and report.removed == {} and report.added == {}


def _head(rng, tail: list[onnx.NodeProto], extra_inits=(), opset: int = 17, out_dims=None):
    """conv -> Transpose(NHWC) -> Relu -> ``tail`` (reads "r", writes "y")."""
    n1, i1 = _conv(rng, "conv1", "x", "c1")
    nodes = [*n1, _transpose("c1", "t", NHWC), helper.make_node("Relu", ["t"], ["r"]), *tail]
    return _model(nodes, [_value("x", [2, C, 6, 5])], [_value("y", out_dims)], [*i1, *extra_inits], opset=opset)


def test_spatial_mean_without_kept_dims_then_matmul_needs_no_transpose() -> None:
    rng = np.random.default_rng(4)
    model = _head(rng, [helper.make_node("ReduceMean", ["r"], ["p"], axes=[1, 2], keepdims=0),
                        helper.make_node("MatMul", ["p", "fc"], ["y"])],
                  extra_inits=[_init("fc", rng.standard_normal((C, 10)))], out_dims=["N", 10])
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "ReduceMean", "MatMul"]
    assert _attr(folded.graph.node[2], "axes") == [2, 3]
    assert report.removed == {"Transpose": 1}


@pytest.mark.parametrize("reader", ["Flatten", "Reshape"])
def test_spatial_mean_with_kept_dims_then_flatten_or_reshape(reader: str) -> None:
    rng = np.random.default_rng(5)
    axes = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")
    shape = numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape")
    last = (helper.make_node("Flatten", ["p"], ["f"]) if reader == "Flatten"
            else helper.make_node("Reshape", ["p", "shape"], ["f"]))
    model = _head(rng, [helper.make_node("ReduceMean", ["r", "axes"], ["p"], keepdims=1), last,
                        helper.make_node("Gemm", ["f", "fc"], ["y"])],
                  extra_inits=[axes, shape, _init("fc", rng.standard_normal((C, 10)))], opset=18,
                  out_dims=["N", 10])
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "ReduceMean", reader, "Gemm"]
    assert report.removed == {"Transpose": 1}


def test_a_mean_that_reorders_the_kept_axes_keeps_a_smaller_transpose() -> None:
    rng = np.random.default_rng(6)
    model = _head(rng, [helper.make_node("ReduceMean", ["r"], ["y"], axes=[1], keepdims=0)],
                  out_dims=["N", "W", "C"])
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "ReduceMean", "Transpose"]
    assert _attr(folded.graph.node[3], "perm") == [0, 2, 1]
    assert folded.graph.node[3].output[0] == "y" and report.removed == {}


def test_a_transpose_at_the_graph_output_moves_there_and_keeps_the_name() -> None:
    rng = np.random.default_rng(7)
    model = _head(rng, [helper.make_node("Sigmoid", ["r"], ["y"])])
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Sigmoid", "Transpose"]
    assert folded.graph.node[-1].output[0] == "y" and report.removed == {} and report.added == {}


def test_a_pad_in_nhwc_moves_its_widths_with_the_axes() -> None:
    # tf2onnx's ZeroPadding2D before a max pool: Transpose(NHWC) -> Pad -> Transpose(NCHW) -> MaxPool.
    rng = np.random.default_rng(8)
    n1, i1 = _conv(rng, "conv1", "x", "c1")
    pads = numpy_helper.from_array(np.array([0, 1, 2, 0, 0, 3, 4, 0], dtype=np.int64), "pads")
    nodes = [*n1, _transpose("c1", "t", NHWC), helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Pad", ["r", "pads"], ["p"], mode="constant"),
             _transpose("p", "u", NCHW), helper.make_node("MaxPool", ["u"], ["y"], kernel_shape=[3, 3], strides=[2, 2])]
    model = _model(nodes, [_value("x", [2, C, 6, 5])], [_value("y")], [*i1, pads])
    folded, report = _optimize(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Pad", "MaxPool"]
    moved = next(t for t in folded.graph.initializer if t.name == folded.graph.node[2].input[1])
    assert numpy_helper.to_array(moved).tolist() == [0, 0, 1, 2, 0, 0, 3, 4]
    assert report.removed == {"Transpose": 2}


def test_a_pad_that_names_its_axes_is_left_alone() -> None:
    rng = np.random.default_rng(9)
    n1, i1 = _conv(rng, "conv1", "x", "c1")
    consts = [numpy_helper.from_array(np.array([1, 2, 3, 4], dtype=np.int64), "pads"),
              numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")]
    nodes = [*n1, _transpose("c1", "t", NHWC), helper.make_node("Pad", ["t", "pads", "", "axes"], ["p"]),
             _transpose("p", "u", NCHW), helper.make_node("Relu", ["u"], ["y"])]
    model = _model(nodes, [_value("x", [2, C, 6, 5])], [_value("y")], [*i1, *consts], opset=18)
    folded, report = _optimize(model)
    assert _ops(folded) == _ops(model) and report.removed == {}
