"""Find per-channel arithmetic still reading a Conv's output: what ``--require-folded`` refuses.

From each Conv the walk follows layout-only nodes (Transpose, which moves the channel axis,
Cast, Identity) and reports a BatchNormalization on the channel axis, or an Add/Sub/Mul/Div
whose other operand broadcasts along the channel axis only, wherever that axis now is, and does
not itself depend on the Conv's output. That last rule keeps a squeeze-excitation gate
(``x * sigmoid(fc(pool(x)))``), which no fold can remove, out of the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from resserve.builder.onnx_fold.conv_affine import AFFINE_OPS, per_channel
from resserve.builder.onnx_fold.graph import GraphState, is_op, perm_of
from resserve.builder.onnx_fold.fold_report import UnfoldedArithmetic


@dataclass(frozen=True)
class _Step:
    name: str  # the tensor reached
    axis: int  # where the Conv's channel axis is in it
    shared: bool  # read by more than one node (or visible outside) somewhere on the way
    via: tuple[str, ...]  # layout ops passed


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):
        typed = model
    shapes: dict[str, tuple[int | None, ...]] = {}
    for value in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return shapes


def _name(node: onnx.NodeProto) -> str:
    return node.name or f"(unnamed, output {node.output[0]})"


def _descendants(state: GraphState, start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for user in state.consumers.get(todo.pop(), []):
            for out in user.output:
                if out not in seen:
                    seen.add(out)
                    todo.append(out)
    return seen


def find_unfolded(model: onnx.ModelProto) -> list[UnfoldedArithmetic]:
    """Every Conv still followed by per-channel arithmetic, with the reason it stayed."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    state = GraphState(graph)
    shapes = _shapes(model)
    found: list[UnfoldedArithmetic] = []
    for conv in state.nodes:
        if is_op(conv, "Conv") and len(conv.input) >= 2:
            found += _after_conv(state, shapes, conv)
    return found


def _after_conv(
    state: GraphState, shapes: dict[str, tuple[int | None, ...]], conv: onnx.NodeProto
) -> list[UnfoldedArithmetic]:
    weight = state.const(conv.input[1])
    out_shape = shapes.get(conv.output[0])
    rank = weight.ndim if weight is not None else len(out_shape) if out_shape else None
    if rank is None:
        return []
    channels = weight.shape[0] if weight is not None else out_shape[1] if out_shape else None
    descendants: set[str] | None = None
    found = []
    todo = [_Step(conv.output[0], 1, False, ())]
    while todo:
        step = todo.pop()
        users = state.consumers.get(step.name, [])
        shared = step.shared or len(users) > 1 or step.name in state.protected
        for user in users:
            perm = perm_of(user) if is_op(user, "Transpose") else None
            if perm is not None and len(perm) == rank:
                todo.append(_Step(user.output[0], perm.index(step.axis), shared, (*step.via, "Transpose")))
            elif is_op(user, "Cast", "Identity"):
                todo.append(_Step(user.output[0], step.axis, shared, (*step.via, user.op_type)))
            elif is_op(user, "BatchNormalization") and step.axis == 1 and user.input[0] == step.name:
                params_const = all(state.is_const(name) for name in user.input[1:])
                reason = None if params_const else "its parameters are not constants"
                found.append(_finding(state, conv, user, shared, step.via, reason))
            elif is_op(user, *AFFINE_OPS) and len(user.input) == 2 and user.input[0] != user.input[1]:
                first = user.input[0] == step.name
                other = user.input[1] if first else user.input[0]
                if user.op_type == "Div" and not first:
                    continue  # c / conv is not affine in the conv's output
                value = state.const(other)
                shape = value.shape if value is not None else shapes.get(other)
                if shape is None or None in shape or not per_channel(shape, channels, rank, step.axis):
                    continue
                if descendants is None:
                    descendants = _descendants(state, conv.output[0])
                if other in descendants:
                    continue  # computed from the conv's own output (a gate), not a constant map
                reason = None if value is not None else f"its operand {other!r} is not a constant"
                found.append(_finding(state, conv, user, shared, step.via, reason))
    return found


def _finding(
    state: GraphState, conv: onnx.NodeProto, node: onnx.NodeProto, shared: bool, via: tuple[str, ...],
    reason: str | None,
) -> UnfoldedArithmetic:
    if reason is None:
        if not all(state.is_const(name) for name in conv.input[1:3] if name):
            reason = "the Conv's weight or bias is not a constant"
        elif shared:
            reason = "the Conv's output is also read by other nodes"
        elif via:
            reason = f"it is still behind {' -> '.join(via)}"
        else:
            reason = "not folded"
    return UnfoldedArithmetic(conv=_name(conv), node=_name(node), op_type=node.op_type, reason=reason)
