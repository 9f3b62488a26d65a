"""Push layout Transposes forward through elementwise ops until they meet their inverse and cancel.

A converter that keeps the source framework's NHWC layout wraps every NCHW ``Conv`` in
``Transpose(0,3,1,2)`` before and ``Transpose(0,2,3,1)`` after, with the BatchNorm arithmetic,
activations and residual adds in between, in NHWC. Moving ``Transpose(perm)`` below an op that
works elementwise does not change the result: ``op(T(x)) == T(op(x))`` for a unary op,
``op(T(x), c) == T(op(x, T⁻¹(c)))`` for a constant ``c`` (broadcast to full rank first: a (C,)
vector on the NHWC last axis becomes (1, C, 1, 1)), and ``op(T(x), T(y)) == T(op(x, y))``. Pushed
to the end of such a stretch, the Transpose meets the next ``Transpose(0,3,1,2)`` and both go, and
the per-channel constants now follow their Conv directly, where :mod:`conv_affine` folds them.

A move is made only when it removes at least one Transpose it reads (so the count never grows,
and the pass ends); onnxoptimizer's ``fuse_consecutive_transposes`` cancels only pairs where the
first has a single reader, so the cancel here also handles a Transpose read by several nodes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from resserve.builder.onnx_fold.graph import GraphState, attribute, is_op, perm_of

# Elementwise in their first input; any other input must be a constant scalar (Clip's bounds).
UNARY_OPS = frozenset({
    "Abs", "Cast", "Ceil", "Celu", "Clip", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "Identity", "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round",
    "Selu", "Sigmoid", "Sign", "Softplus", "Softsign", "Sqrt", "Tanh",
})
# Elementwise with numpy broadcasting over all inputs.
BROADCAST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu", "Sum"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"})


def compose(first: list[int], second: list[int]) -> list[int]:
    """The perm of ``Transpose(Transpose(x, first), second)``."""
    return [first[axis] for axis in second]


def inverse(perm: list[int]) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


def push_transposes(state: GraphState) -> int:
    """Cancel, merge and push Transposes until none moves; return the number of rewrites."""
    rewrites = 0
    # Each rewrite removes a Transpose or moves one strictly forward: the bound is a backstop.
    for _ in range(4 * len(state.nodes) + 16):
        if not _one_rewrite(state):
            break
        state.reindex()
        rewrites += 1
    return rewrites


def _one_rewrite(state: GraphState) -> bool:
    for node in state.nodes:
        if is_op(node, "Transpose"):
            if _drop_if_identity(state, node) or _cancel_or_merge(state, node):
                return True
        elif is_op(node, "Flatten", "Reshape"):
            if _skip_unit_transpose(state, node):
                return True
        elif is_op(node, *UNARY_OPS, *BROADCAST_OPS, *REDUCE_OPS, "Pad") and len(node.output) == 1:
            if _push_below(state, node):
                return True
    return False


def _feeding_transpose(state: GraphState, name: str) -> onnx.NodeProto | None:
    producer = state.producers.get(name)
    if producer is None or not is_op(producer, "Transpose") or perm_of(producer) is None:
        return None
    return producer


def _dies_without(state: GraphState, transpose: onnx.NodeProto, reader: onnx.NodeProto) -> bool:
    """True if ``reader`` is the only node that reads ``transpose`` and nothing else can see it."""
    out = transpose.output[0]
    return out not in state.protected and all(user is reader for user in state.consumers.get(out, []))


def _drop_if_identity(state: GraphState, node: onnx.NodeProto) -> bool:
    """Remove a Transpose that keeps every axis in place, also one that writes a graph output
    (there its producer takes over the output's name, as eliminate_nop_transpose does not)."""
    perm = perm_of(node)
    if perm is None or perm != sorted(perm):
        return False
    src, dst = node.input[0], node.output[0]
    if dst not in state.protected:
        state.rename_uses(dst, src)
        state.remove(node)
        return True
    producer = state.producers.get(src)
    if producer is None or state.sole_consumer(src) is not node:
        return False
    producer.output[list(producer.output).index(src)] = dst
    state.remove(node)
    return True


def _cancel_or_merge(state: GraphState, second: onnx.NodeProto) -> bool:
    first = _feeding_transpose(state, second.input[0])
    perm = perm_of(second)
    if first is None or perm is None or len(perm) != len(perm_of(first) or []):
        return False
    combined = compose(perm_of(first) or [], perm)
    first_dies = _dies_without(state, first, second)
    if combined == sorted(combined):
        if second.output[0] in state.protected:
            return False  # dropping it would rename a graph output
        state.rename_uses(second.output[0], first.input[0])
        state.remove(second)
    else:
        second.input[0] = first.input[0]
        second.attribute.remove(attribute(second, "perm"))
        second.attribute.append(helper.make_attribute("perm", combined))
    if first_dies:
        state.remove(first)
    return True


def _push_below(state: GraphState, node: onnx.NodeProto) -> bool:
    """Rewrite ``node(T(x), ...)`` as ``T(node(x, ...))`` when every data input is so transposed."""
    data_slots = [i for i, name in enumerate(node.input) if name and not state.is_const(name)]
    if not data_slots or (node.op_type in UNARY_OPS | REDUCE_OPS | {"Pad"} and data_slots != [0]):
        return False
    feeders = [_feeding_transpose(state, node.input[i]) for i in data_slots]
    if any(f is None for f in feeders):
        return False
    perm = perm_of(feeders[0])
    if any(perm_of(f) != perm for f in feeders) or perm is None:
        return False
    dying = {id(f): f for f in feeders if _dies_without(state, f, node)}
    if not dying:
        return False  # the new Transpose below would add one: not worth it
    if node.op_type in REDUCE_OPS:
        below = _reduced(state, node, perm)
    elif node.op_type == "Pad":
        below = _padded(state, node, perm)
    else:
        below = _elementwise(state, node, perm)
    if below is None:
        return False
    inner, after = below
    for slot, feeder in zip(data_slots, feeders, strict=True):
        inner.input[slot] = feeder.input[0]
    state.replace(node, inner, *after)
    state.remove(*dying.values())
    return True


def _renamed_copy(state: GraphState, node: onnx.NodeProto) -> onnx.NodeProto:
    inner = onnx.NodeProto()
    inner.CopyFrom(node)
    inner.output[0] = state.fresh(f"{node.output[0]}_pre_transpose")
    if node.name:
        inner.name = state.fresh(node.name)
    return inner


def _transpose(state: GraphState, src: str, dst: str, perm: list[int]) -> onnx.NodeProto:
    return helper.make_node("Transpose", [src], [dst], name=state.fresh(f"{dst}_transpose"), perm=perm)


def _elementwise(
    state: GraphState, node: onnx.NodeProto, perm: list[int]
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    rank = len(perm)
    constants: dict[int, str] = {}
    for slot, name in enumerate(node.input):
        if not name or not state.is_const(name):
            continue
        value = state.const(name)
        if value is None or value.ndim > rank:
            return None  # unreadable, or it would raise the output's rank
        if node.op_type in UNARY_OPS:
            if value.size != 1:
                return None
            continue  # a scalar bound is layout-free
        if value.size == 1:
            continue  # broadcasts the same way in any layout
        full = value.reshape((1,) * (rank - value.ndim) + value.shape)
        constants[slot] = state.add_const(np.ascontiguousarray(full.transpose(inverse(perm))), f"{name}_nchw")
    inner = _renamed_copy(state, node)
    for slot, name in constants.items():
        inner.input[slot] = name
    return inner, [_transpose(state, inner.output[0], node.output[0], perm)]


def _padded(
    state: GraphState, node: onnx.NodeProto, perm: list[int]
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """``Pad(T(x), pads)`` as ``T(Pad(x, pads'))``: each axis's widths move with the axis.

    Every mode (constant, reflect, edge, wrap) pads each axis on its own, so only the widths move;
    a Pad naming its ``axes`` (opset 18) is left alone.
    """
    rank = len(perm)
    if len(node.input) > 3 and node.input[3]:
        return None
    from_input = len(node.input) > 1 and bool(node.input[1])
    attr = attribute(node, "pads")
    pads = state.const(node.input[1]) if from_input else None if attr is None else np.asarray(attr.ints)
    if pads is None or pads.size != 2 * rank:
        return None
    begin, end = pads.reshape(-1)[:rank], pads.reshape(-1)[rank:]
    moved = np.zeros(2 * rank, dtype=np.int64)
    for axis, source in enumerate(perm):
        moved[source], moved[rank + source] = begin[axis], end[axis]
    inner = _renamed_copy(state, node)
    if from_input:
        inner.input[1] = state.add_const(moved, f"{node.input[1]}_nchw")
    else:
        inner.attribute.remove(attribute(inner, "pads"))
        inner.attribute.append(helper.make_attribute("pads", [int(v) for v in moved]))
    return inner, [_transpose(state, inner.output[0], node.output[0], perm)]


def _reduce_axes(state: GraphState, node: onnx.NodeProto) -> tuple[list[int] | None, bool]:
    """The node's axes (None: all) and whether they come from an input (opset 18) or an attribute."""
    if len(node.input) > 1 and node.input[1]:
        value = state.const(node.input[1])
        return (None if value is None else [int(a) for a in value.reshape(-1)]), True
    attr = attribute(node, "axes")
    return (list(attr.ints) if attr is not None else []), False


def _reduced(
    state: GraphState, node: onnx.NodeProto, perm: list[int]
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """``reduce(T(x), axes)`` as ``reduce(x, perm[axes])``, then a Transpose only if one is needed."""
    rank = len(perm)
    axes, from_input = _reduce_axes(state, node)
    if axes is None:
        return None
    keepdims = attribute(node, "keepdims")
    keep = keepdims is None or keepdims.i != 0
    noop = attribute(node, "noop_with_empty_axes")
    if not axes and noop is not None and noop.i != 0:
        return None  # an identity on T(x): nothing gained by moving it
    inner = _renamed_copy(state, node)
    if not axes:  # every axis: the result's layout is all ones, or a scalar
        inner.output[0] = node.output[0]
        return inner, []
    axes = sorted({a % rank for a in axes})
    moved = sorted(perm[a] for a in axes)
    if from_input:
        inner.input[1] = state.add_const(np.asarray(moved, dtype=np.int64), f"{node.input[1]}_nchw")
    else:
        inner.attribute.remove(attribute(inner, "axes"))
        inner.attribute.append(helper.make_attribute("axes", moved))
    if keep:
        return inner, [_transpose(state, inner.output[0], node.output[0], perm)]
    # Dropped axes: the kept ones come out in x's order; restore T(x)'s order if it differs.
    kept = [perm[i] for i in range(rank) if i not in axes]
    order = [sorted(kept).index(a) for a in kept]
    if order == sorted(order):
        inner.output[0] = node.output[0]
        return inner, []
    return inner, [_transpose(state, inner.output[0], node.output[0], order)]


def _unit_axes(state: GraphState, name: str, rank: int) -> set[int]:
    """Axes of ``name`` known to have size 1 without shape inference: a kept-dims reduction's."""
    producer = state.producers.get(name)
    if producer is None:
        return set()
    if is_op(producer, "GlobalAveragePool", "GlobalMaxPool"):
        return set(range(2, rank))
    if not is_op(producer, *REDUCE_OPS):
        return set()
    keepdims = attribute(producer, "keepdims")
    axes, _ = _reduce_axes(state, producer)
    if (keepdims is not None and keepdims.i == 0) or not axes:
        return set()
    return {a % rank for a in axes}


def _skip_unit_transpose(state: GraphState, node: onnx.NodeProto) -> bool:
    """``Flatten``/``Reshape`` of ``T(y)`` reads ``y`` directly when ``T`` only moves size-1 axes.

    Such a Transpose keeps the memory order, so a reshape of either gives the same tensor, as long
    as Flatten splits both at the same size and Reshape copies no input dim (a 0) that moved. This
    is the end of an NHWC graph: a spatial mean with kept dims, then Flatten, then the classifier.
    """
    transpose = _feeding_transpose(state, node.input[0])
    if transpose is None:
        return False
    perm = perm_of(transpose) or []
    units = _unit_axes(state, transpose.input[0], len(perm))
    moving = [a for a in perm if a not in units]
    if not units or moving != sorted(moving):
        return False
    if is_op(node, "Flatten"):
        attr = attribute(node, "axis")
        k = (attr.i if attr is not None else 1) % (len(perm) + 1)
        if {a for a in perm[:k] if a not in units} != {a for a in range(k) if a not in units}:
            return False
    else:
        shape = state.const(node.input[1]) if len(node.input) > 1 else None
        if shape is None:
            return False
        copies = [i for i, d in enumerate(shape.reshape(-1)) if d == 0]
        if any(i >= len(perm) or (perm[i] != i and not (i in units and perm[i] in units)) for i in copies):
            return False
    node.input[0] = transpose.input[0]
    if _dies_without(state, transpose, node):  # the use lists still show node reading it
        state.remove(transpose)
    return True
