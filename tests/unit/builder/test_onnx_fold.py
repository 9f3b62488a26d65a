"""Graph-level folding of BatchNorm/affine ops and Transpose pairs, checked with real ORT sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from resserve.builder.onnx_fold import OptimizeReport, compare_onnx_outputs, fold_graph, optimize_onnx
from resserve.builder.onnx_fold.fold_parity import _input_shape
from resserve.errors import ExportError, ParityError

RNG_SEED = 1234
C_IN, C_OUT = 8, 8


def _model(nodes, inputs, outputs, inits=(), name: str = "g") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _tensor(name: str, shape=None, dims=None):
    """A float value_info; without a shape, a symbolic rank-4 one (the checker needs a shape)."""
    if shape is None and dims is None:
        dims = ["n", "c", "h", "w"]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims if dims is not None else shape)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _fold_and_compare(model: onnx.ModelProto, shape=(2, C_IN, 6, 5)) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Fold, run the checker, and assert every output matches the original (rtol 1e-5 of max|out|)."""
    before = model.SerializeToString()
    folded, stats = fold_graph(model)
    assert model.SerializeToString() == before, "fold_graph must not mutate its input"
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(RNG_SEED).standard_normal(shape).astype(np.float32)
    name = model.graph.input[0].name
    for want, got in zip(_run(model, {name: x}), _run(folded, {name: x}), strict=True):
        assert want.shape == got.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.max(np.abs(want))))
    return folded, stats


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _conv(rng, name: str, out: str, x: str = "x", *, bias: bool = True, group: int = 1, c_out: int = C_OUT):
    """A 3x3 conv node and its initializers."""
    inits = [_init(f"{name}_w", rng.standard_normal((c_out, C_IN // group, 3, 3)) * 0.3)]
    inputs = [x, f"{name}_w"]
    if bias:
        inits.append(_init(f"{name}_b", rng.standard_normal(c_out)))
        inputs.append(f"{name}_b")
    node = helper.make_node("Conv", inputs, [out], name=name, pads=[1, 1, 1, 1], group=group)
    return node, inits


def _bn(rng, name: str, x: str, out: str, c: int = C_OUT, epsilon: float = 1e-3):
    inits = [
        _init(f"{name}_scale", rng.uniform(0.5, 1.5, c)),
        _init(f"{name}_beta", rng.standard_normal(c)),
        _init(f"{name}_mean", rng.standard_normal(c)),
        _init(f"{name}_var", rng.uniform(0.5, 1.5, c)),
    ]
    node = helper.make_node(
        "BatchNormalization", [x] + [t.name for t in inits], [out], name=name, epsilon=epsilon
    )
    return node, inits


@pytest.mark.parametrize(("bias", "group"), [(True, 1), (False, 1), (True, 4), (False, 4)])
def test_conv_batchnorm_relu_folds(bias: bool, group: int) -> None:
    rng = np.random.default_rng(0)
    conv, conv_inits = _conv(rng, "conv", "c", bias=bias, group=group)
    bn, bn_inits = _bn(rng, "bn", "c", "b")
    relu = helper.make_node("Relu", ["b"], ["y"])
    model = _model(
        [conv, bn, relu], [_tensor("x", [2, C_IN, 6, 5])], [_tensor("y", None)], conv_inits + bn_inits
    )
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv", "Relu"]
    assert report.removed == {"BatchNormalization": 1} and report.convs_folded == report.convs == 1
    assert not report.unfolded
    # BN parameters are gone; only the folded weight and bias remain.
    assert len(folded.graph.initializer) == 2
    assert folded.graph.node[0].output[0] == "b"


def test_batchnorm_parameters_behind_identity_nodes_fold() -> None:
    # The TorchScript exporter routes deduplicated initializers through Identity nodes.
    rng = np.random.default_rng(5)
    conv, conv_inits = _conv(rng, "conv", "c", bias=False)
    bn, bn_inits = _bn(rng, "bn", "c", "y")
    ident = helper.make_node("Identity", ["bn_scale"], ["bn_scale_alias"])
    bn.input[1] = "bn_scale_alias"
    model = _model([ident, conv, bn], [_tensor("x", [2, C_IN, 6, 5])], [_tensor("y", None)], conv_inits + bn_inits)
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv"]
    assert report.removed == {"BatchNormalization": 1, "Identity": 1}
    assert {p.name: p.removed for p in report.passes if p.removed} == {
        "eliminate_identity": {"Identity": 1}, "fold_into_convs": {"BatchNormalization": 1}}


def test_tf_style_mul_add_folds_fully() -> None:
    rng = np.random.default_rng(1)
    conv, inits = _conv(rng, "conv", "c")
    inits += [
        _init("m", rng.uniform(0.5, 2, (1, C_OUT, 1, 1))),
        _init("a", rng.standard_normal((C_OUT, 1, 1))),
    ]
    nodes = [conv, helper.make_node("Mul", ["c", "m"], ["cm"]), helper.make_node("Add", ["a", "cm"], ["y"])]
    model = _model(nodes, [_tensor("x", [2, C_IN, 6, 5])], [_tensor("y", [2, C_OUT, 6, 5])], inits)
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv"]
    assert report.removed == {"Add": 1, "Mul": 1} and report.convs_folded == 1
    assert [o.name for o in folded.graph.output] == ["y"]


def test_batchnorm_then_affine_chain_and_scalar() -> None:
    rng = np.random.default_rng(2)
    conv, inits = _conv(rng, "conv", "c", bias=False)
    bn, bn_inits = _bn(rng, "bn", "c", "b")
    inits += [*bn_inits, _init("s", np.array(1.7)), _init("one", np.ones(1))]
    nodes = [
        conv,
        bn,
        helper.make_node("Mul", ["b", "s"], ["bs"]),
        helper.make_node("Add", ["bs", "one"], ["y"]),
    ]
    model = _model(nodes, [_tensor("x", [2, C_IN, 6, 5])], [_tensor("y", None)], inits)
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv"]
    assert report.removed == {"Add": 1, "BatchNormalization": 1, "Mul": 1}


@pytest.mark.parametrize(
    ("op", "conv_first"), [("Sub", True), ("Sub", False), ("Div", True), ("Mul", False), ("Add", True)]
)
def test_sub_div_from_constant_nodes(op: str, conv_first: bool) -> None:
    rng = np.random.default_rng(3)
    conv, inits = _conv(rng, "conv", "c")
    value = rng.uniform(0.5, 2, (1, C_OUT, 1, 1)).astype(np.float32)
    const = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(value, "k"))
    inputs = ["c", "k"] if conv_first else ["k", "c"]
    model = _model(
        [const, conv, helper.make_node(op, inputs, ["y"])],
        [_tensor("x", [2, C_IN, 6, 5])],
        [_tensor("y", None)],
        inits,
    )
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv"], "the orphaned Constant node must be removed too"
    assert report.removed == {"Constant": 1, op: 1}


def test_constant_value_float_and_conv_weight_from_constant_node() -> None:
    rng = np.random.default_rng(4)
    weight = (rng.standard_normal((C_OUT, C_IN, 3, 3)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w")),
        helper.make_node("Constant", [], ["k"], value_float=0.25),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["k", "c"], ["y"]),
    ]
    model = _model(nodes, [_tensor("x", [2, C_IN, 6, 5])], [_tensor("y", None)])
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv"] and report.removed == {"Constant": 2, "Sub": 1}


def test_div_constant_by_conv_is_not_folded() -> None:
    rng = np.random.default_rng(5)
    conv, inits = _conv(rng, "conv", "c")
    inits.append(_init("k", np.full((C_OUT, 1, 1), 2.0)))
    model = _model(
        [conv, helper.make_node("Div", ["k", "c"], ["y"])],
        [_tensor("x", [2, C_IN, 6, 5])],
        [_tensor("y", None)],
        inits,
    )
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv", "Div"] and report.removed == {} and report.convs_folded == 0
    assert not report.unfolded, "k / conv is not affine in the conv output: nothing to fold"


def test_vector_constant_broadcasting_along_width_is_not_folded() -> None:
    # Output is (N, C_OUT, 6, C_OUT): a (C_OUT,) constant is legal but scales along W, not channels.
    rng = np.random.default_rng(6)
    conv, inits = _conv(rng, "conv", "c")
    inits += [_init("m", rng.uniform(0.5, 2, C_OUT)), _init("a", rng.standard_normal(C_OUT))]
    nodes = [conv, helper.make_node("Mul", ["c", "m"], ["cm"]), helper.make_node("Add", ["cm", "a"], ["y"])]
    model = _model(nodes, [_tensor("x", [2, C_IN, 6, C_OUT])], [_tensor("y", None)], inits)
    folded, report = _fold_and_compare(model, shape=(2, C_IN, 6, C_OUT))
    assert _ops(folded) == ["Conv", "Mul", "Add"]
    assert report.removed == {} and not report.unfolded


def test_rank5_constant_is_not_folded() -> None:
    rng = np.random.default_rng(7)
    conv, inits = _conv(rng, "conv", "c")
    inits.append(_init("m", rng.uniform(0.5, 2, (1, 1, C_OUT, 1, 1))))
    model = _model(
        [conv, helper.make_node("Mul", ["c", "m"], ["y"])],
        [_tensor("x", [2, C_IN, 6, 5])],
        [_tensor("y", [1, 2, C_OUT, 6, 5])],
        inits,
    )
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv", "Mul"] and report.removed == {} and not report.unfolded


def test_nhwc_input_with_softmax_head() -> None:
    rng = np.random.default_rng(8)
    conv, inits = _conv(rng, "conv", "c", x="nchw")
    inits[0] = _init("conv_w", rng.standard_normal((C_OUT, 3, 3, 3)) * 0.3)
    inits += [
        _init("m", rng.uniform(0.5, 2, (C_OUT, 1, 1))),
        _init("a", rng.standard_normal((1, C_OUT, 1, 1))),
        _init("fc_w", rng.standard_normal((C_OUT, 10))),
        _init("fc_b", rng.standard_normal(10)),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        conv,
        helper.make_node("Mul", ["c", "m"], ["cm"]),
        helper.make_node("Add", ["cm", "a"], ["ca"]),
        helper.make_node("Relu", ["ca"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    model = _model(nodes, [_tensor("x", None, ["N", 9, 7, 3])], [_tensor("probs", ["N", 10])], inits)
    folded, report = _fold_and_compare(model, shape=(2, 9, 7, 3))
    assert _ops(folded) == ["Transpose", "Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm", "Softmax"]
    assert report.removed == {"Add": 1, "Mul": 1}
    dims = folded.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 9, 7, 3]
    # With symbolic H/W the parity helper must still build an NHWC input (2, 224, 224, 3).
    for graph in (model.graph, folded.graph):
        dims = graph.input[0].type.tensor_type.shape.dim
        dims[1].dim_param, dims[2].dim_param = "H", "W"
    assert compare_onnx_outputs(model, folded, rtol=1e-5, seed=0) <= 1e-5


def _transpose_model(second_perm: list[int]) -> onnx.ModelProto:
    rng = np.random.default_rng(9)
    conv, inits = _conv(rng, "conv", "c")
    nodes = [
        conv,
        helper.make_node("Transpose", ["c"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=second_perm),
        helper.make_node("Relu", ["t2"], ["y"]),
    ]
    vi = [_tensor("t1", [2, 6, 5, C_OUT])]
    model = _model(nodes, [_tensor("x", [2, C_IN, 6, 5])], [_tensor("y", None)], inits)
    model.graph.value_info.extend(vi)
    return model


def test_cancelling_transpose_pair_is_removed() -> None:
    folded, report = _fold_and_compare(_transpose_model([0, 3, 1, 2]))
    assert _ops(folded) == ["Conv", "Relu"]
    assert report.removed == {"Transpose": 2}
    assert not folded.graph.value_info, "value_info of removed tensors must be dropped"


def test_non_cancelling_transpose_pair_is_merged() -> None:
    folded, report = _fold_and_compare(_transpose_model([0, 2, 3, 1]))
    # One Transpose with the composed perm, pushed below the Relu to the graph output.
    assert _ops(folded) == ["Conv", "Relu", "Transpose"] and report.removed == {"Transpose": 1}
    assert list(folded.graph.node[2].attribute[0].ints) == [0, 3, 1, 2]
    assert folded.graph.node[2].output[0] == "y"


def test_transpose_pair_feeding_graph_output_is_kept() -> None:
    model = _transpose_model([0, 3, 1, 2])
    del model.graph.node[-1]
    model.graph.output[0].name = "t2"
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv"] and report.removed == {"Transpose": 2}
    assert folded.graph.node[0].output[0] == "t2", "the graph output keeps its name"


def test_conv_with_two_consumers_is_not_folded() -> None:
    rng = np.random.default_rng(10)
    conv, inits = _conv(rng, "conv", "c")
    bn, bn_inits = _bn(rng, "bn", "c", "b")
    nodes = [conv, bn, helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["b", "r"], ["y"])]
    model = _model(nodes, [_tensor("x", [2, C_IN, 6, 5])], [_tensor("y", None)], inits + bn_inits)
    folded, report = _fold_and_compare(model)
    assert "BatchNormalization" in _ops(folded) and report.removed == {}
    assert [str(u) for u in report.unfolded] == [
        "BatchNormalization 'bn' after Conv 'conv': the Conv's output is also read by other nodes"]


def test_conv_output_that_is_a_graph_output_is_not_folded() -> None:
    rng = np.random.default_rng(11)
    conv, inits = _conv(rng, "conv", "c")
    bn, bn_inits = _bn(rng, "bn", "c", "y")
    model = _model(
        [conv, bn],
        [_tensor("x", [2, C_IN, 6, 5])],
        [_tensor("c", None), _tensor("y", None)],
        inits + bn_inits,
    )
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv", "BatchNormalization"] and report.removed == {}
    assert [(u.node, u.reason) for u in report.unfolded] == [("bn", "the Conv's output is also read by other nodes")]


def test_shared_weight_with_two_batchnorms() -> None:
    rng = np.random.default_rng(12)
    conv_a, inits = _conv(rng, "conv", "ca")
    conv_b = helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["cb"], pads=[1, 1, 1, 1])
    bn_a, bn_a_inits = _bn(rng, "bn_a", "ca", "ba")
    bn_b, bn_b_inits = _bn(rng, "bn_b", "cb", "bb")
    nodes = [conv_a, conv_b, bn_a, bn_b, helper.make_node("Add", ["ba", "bb"], ["y"])]
    model = _model(
        nodes, [_tensor("x", [2, C_IN, 6, 5])], [_tensor("y", None)], inits + bn_a_inits + bn_b_inits
    )
    folded, report = _fold_and_compare(model)
    assert _ops(folded) == ["Conv", "Conv", "Add"] and report.removed == {"BatchNormalization": 2}
    assert report.convs_folded == 2
    weights = {n.input[1] for n in folded.graph.node if n.op_type == "Conv"}
    assert len(weights) == 2, "each conv needs its own folded weight"
    assert len(folded.graph.initializer) == 4


def _small_resnet(rng: np.random.Generator) -> onnx.ModelProto:
    """conv-bn-relu, a residual conv-bn, GAP, FC, Softmax; symbolic batch and spatial dims."""
    stem, inits = _conv(rng, "stem", "s", c_out=C_IN)
    inits[0] = _init("stem_w", rng.standard_normal((C_IN, 3, 3, 3)) * 0.3)
    bn1, bn1_inits = _bn(rng, "bn1", "s", "s_bn", c=C_IN)
    body, body_inits = _conv(rng, "body", "b", x="s_relu", bias=False, c_out=C_IN)
    bn2, bn2_inits = _bn(rng, "bn2", "b", "b_bn", c=C_IN)
    inits += bn1_inits + body_inits + bn2_inits
    inits += [_init("fc_w", rng.standard_normal((C_IN, 10))), _init("fc_b", rng.standard_normal(10))]
    nodes = [
        stem,
        bn1,
        helper.make_node("Relu", ["s_bn"], ["s_relu"]),
        body,
        bn2,
        helper.make_node("Add", ["b_bn", "s_relu"], ["res"]),
        helper.make_node("Relu", ["res"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    inputs = [_tensor("x", None, ["N", 3, "H", "W"])]
    return _model(nodes, inputs, [_tensor("probs", ["N", 10])], inits, name="tiny_resnet")


def test_optimize_onnx_end_to_end(tmp_path: Path) -> None:
    model = _small_resnet(np.random.default_rng(13))
    helper.set_model_props(model, {"producer.note": "kept"})
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    report = optimize_onnx(src, dst)
    assert report.removed == {"BatchNormalization": 2} and report.convs_folded == 2
    assert report.parity_rel_max_diff is not None and report.parity_rel_max_diff <= 1e-4
    saved = onnx.load(str(dst))
    onnx.checker.check_model(saved, full_check=True)
    props = {p.key: p.value for p in saved.metadata_props}
    assert props == {"producer.note": "kept", "resserve.folded": "true"}
    assert "BatchNormalization" not in _ops(saved) and _ops(saved)[-1] == "Softmax"
    assert compare_onnx_outputs(model, saved, rtol=1e-4, seed=3) <= 1e-4


def test_compare_onnx_outputs_detects_a_different_graph() -> None:
    model = _small_resnet(np.random.default_rng(14))
    other = _small_resnet(np.random.default_rng(15))
    with pytest.raises(ParityError):
        compare_onnx_outputs(model, other, rtol=1e-4, seed=0)


def test_compare_onnx_outputs_catches_small_errors_with_the_same_top5() -> None:
    # Scaling the FC weight by 1.01 keeps every logit's rank (same top-5) but moves the softmax;
    # the 0.01 base keeps logits small so the softmax is not saturated and the change shows.
    def scaled_fc(factor: float) -> onnx.ModelProto:
        model = _small_resnet(np.random.default_rng(14))
        fc = next(t for t in model.graph.initializer if t.name == "fc_w")
        fc.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fc) * np.float32(factor), "fc_w"))
        return model

    model, scaled = scaled_fc(0.01), scaled_fc(0.0101)
    with pytest.raises(ParityError, match="exceeds"):
        compare_onnx_outputs(model, scaled, rtol=1e-4, seed=0)
    assert compare_onnx_outputs(model, scaled, rtol=0.5, seed=0) > 1e-4


@pytest.mark.parametrize(
    ("dims", "shape"),
    [
        (["N", 3, "H", "W"], [2, 3, 224, 224]),
        (["N", "H", "W", 3], [2, 224, 224, 3]),
        ([1, 3, 32, 32], [1, 3, 32, 32]),
        (["N", 10], [2, 10]),
    ],
)
def test_parity_input_shape_for_symbolic_dims(dims: list[int | str], shape: list[int]) -> None:
    assert _input_shape(_tensor("x", None, dims)) == shape


def test_optimize_onnx_rejects_a_non_onnx_file(tmp_path: Path) -> None:
    src = tmp_path / "not_a_model.onnx"
    src.write_bytes(b"this is not an onnx model at all")
    with pytest.raises(ExportError):
        optimize_onnx(src, tmp_path / "out.onnx")
    with pytest.raises(ExportError):
        optimize_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
