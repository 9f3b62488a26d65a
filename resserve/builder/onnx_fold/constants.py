"""Evaluate nodes whose inputs are all constants once, at optimize time, with ONNX's reference runtime.

A re-export through PyTorch computes a Pad's widths at run time (ConstantOfShape, Concat,
Reshape, Slice, Transpose of small integer tensors), and some converters transpose a Conv
weight in the graph. Folded into initializers, the Pad becomes fusable into its Conv
(onnxoptimizer's ``fuse_pad_into_conv``) and the weight readable by :mod:`conv_affine`.
:class:`onnx.reference.ReferenceEvaluator` defines each op's semantics exactly, opset included.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from resserve.builder.onnx_fold.graph import DEFAULT_DOMAINS, GraphState

# Not constant even with constant inputs, or not worth a node of its own here.
_SKIP = frozenset({
    "Constant", "Identity", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Multinomial", "Bernoulli", "If", "Loop", "Scan",
})
# A folded output is stored in the file: never turn a small graph into a large one.
_MAX_ELEMENTS = 1 << 24


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray], opsets: dict[str, int]) -> list[np.ndarray] | None:
    names = [f"in{i}" for i in range(len(values))]
    inner = onnx.NodeProto()
    inner.CopyFrom(node)
    slot = iter(names)
    for i, name in enumerate(node.input):
        inner.input[i] = next(slot) if name else ""
    inner.ClearField("output")
    inner.output.extend(f"out{i}" for i in range(len(node.output)))
    graph = helper.make_graph(
        [inner], "fold", [], [helper.make_empty_tensor_value_info(o) for o in inner.output],
        initializer=[numpy_helper.from_array(v, n) for v, n in zip(values, names, strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    try:
        outputs = ReferenceEvaluator(model).run(None, {})
    except Exception:  # an op the reference runtime lacks or rejects: leave the node to the runtime
        return None
    if not all(isinstance(o, np.ndarray) and o.size <= _MAX_ELEMENTS for o in outputs):
        return None
    return [np.asarray(o) for o in outputs]


def fold_constants(state: GraphState) -> int:
    """Replace every standard node computed from constants alone by initializers; return the count."""
    folded = 0
    for node in list(state.nodes):
        if node.domain not in DEFAULT_DOMAINS or node.op_type in _SKIP:
            continue
        inputs = [name for name in node.input if name]
        if not inputs or not all(state.is_const(name) for name in inputs):
            continue
        if any(out in state.protected for out in node.output):
            continue  # an initializer cannot stand for a graph output everywhere
        values = [state.const(name) for name in inputs]
        if any(v is None for v in values):
            continue
        outputs = _evaluate(node, values, state.opsets)  # type: ignore[arg-type]
        if outputs is None:
            continue
        for name, value in zip(node.output, outputs, strict=True):
            if name:  # an optional output nobody named
                state.inits[name] = numpy_helper.from_array(value, name)
        state.remove(node)
        state.reindex()
        folded += 1
    return folded

