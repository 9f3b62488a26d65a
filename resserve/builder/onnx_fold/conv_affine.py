"""Fold per-channel affine ops that read a ``Conv``'s output into its weight and bias.

``BatchNormalization`` and constant per-output-channel ``Mul``/``Add``/``Sub``/``Div`` are the map
``y -> s * y + t`` per channel, so they fold into the weight (``W' = W * s``) and bias
(``b' = b * s + t``), repeatedly, so a chain Conv -> Add -> Sub -> Mul -> Add folds whole. The
arithmetic is done here in float64 and stored once: onnxoptimizer's ``fuse_bn_into_conv`` (0.4.2)
instead emits the weight arithmetic as graph nodes for a constant folder to evaluate later, and
has no rule for Mul/Add/Sub/Div at all.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from resserve.builder.onnx_fold.graph import DEFAULT_DOMAINS, GraphState, is_op

AFFINE_OPS = frozenset({"Mul", "Div", "Add", "Sub"})
_FOLDABLE_OPS = AFFINE_OPS | {"BatchNormalization"}
_Affine = tuple[np.ndarray, np.ndarray]  # per-output-channel (scale, shift) in float64


def per_channel(shape: tuple[int | None, ...], channels: int | None, rank: int, axis: int = 1) -> bool:
    """True if a constant of ``shape`` broadcasts against a rank-``rank`` tensor along ``axis`` only.

    Right-aligned numpy broadcasting: every dim must be 1 except the one landing on ``axis``,
    which may be ``channels`` (any size when None). A (C,) vector lands on the last axis, so after
    an NCHW conv it scales the width and is rejected; a constant of higher rank would change the
    output shape.
    """
    if len(shape) > rank:
        return False
    offset = rank - len(shape)
    return all(dim == 1 or (offset + i == axis and (channels is None or dim == channels))
               for i, dim in enumerate(shape))


def fold_into_convs(state: GraphState) -> int:
    """Fold every foldable op into the Conv before it; return how many ops were folded."""
    folded = 0
    while _fold_one(state):
        state.reindex()
        folded += 1
    return folded


def _fold_one(state: GraphState) -> bool:
    for conv in state.nodes:
        if not is_op(conv, "Conv") or len(conv.input) < 2 or not state.is_const(conv.input[1]):
            continue
        has_bias = len(conv.input) > 2 and conv.input[2] != ""
        if has_bias and not state.is_const(conv.input[2]):
            continue
        out = conv.output[0]
        user = state.sole_consumer(out)
        if user is None or user.domain not in DEFAULT_DOMAINS or user.op_type not in _FOLDABLE_OPS:
            continue  # cheap tests first: no weight decoding
        w = state.const(conv.input[1])
        if w is None or w.dtype.kind != "f" or w.ndim < 3:
            continue
        b = state.const(conv.input[2]) if has_bias else np.zeros(w.shape[0], dtype=w.dtype)
        if b is None or b.shape != (w.shape[0],):
            continue
        affine = _affine_of(state, user, out, w.shape[0], w.ndim)
        if affine is None:
            continue
        _apply(state, conv, user, w, b, affine)
        return True
    return False


def _batchnorm_affine(state: GraphState, bn: onnx.NodeProto, y: str, c_out: int) -> _Affine | None:
    if len(bn.input) != 5 or bn.input[0] != y:
        return None
    # Extra outputs only exist in training mode; folding is only valid if nobody reads them.
    if any(o and (o in state.consumers or o in state.protected) for o in bn.output[1:]):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
    if attrs.get("training_mode", 0) != 0 or attrs.get("spatial", 1) != 1:
        return None
    values = [state.const(name) for name in bn.input[1:]]
    if any(v is None or v.shape != (c_out,) for v in values):
        return None
    scale, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in values)
    var = var + float(attrs.get("epsilon", 1e-5))
    if not np.all(var > 0):  # also keeps np.sqrt from warning (warnings are errors in CI)
        return None
    s = scale / np.sqrt(var)
    return s, beta - mean * s


def _affine_of(state: GraphState, user: onnx.NodeProto, y: str, c_out: int, rank: int) -> _Affine | None:
    """The per-channel (scale, shift) with ``user(y) == y * scale + shift``, or None."""
    if user.op_type == "BatchNormalization":
        return _batchnorm_affine(state, user, y, c_out)
    if len(user.input) != 2:
        return None
    conv_first = user.input[0] == y
    other = user.input[1] if conv_first else user.input[0]
    c = None if other == y else state.const(other)
    if c is None or c.dtype.kind != "f" or not per_channel(c.shape, c_out, rank):
        return None
    c = np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(-1), (c_out,))
    if not np.all(np.isfinite(c)):
        return None
    one, zero = np.ones(c_out), np.zeros(c_out)
    if user.op_type == "Mul":
        return c, zero
    if user.op_type == "Add":
        return one, c
    if user.op_type == "Sub":
        return (one, -c) if conv_first else (-one, c)
    # Div: only conv / c is affine in the conv output (c / conv is not); c == 0 would be inf.
    if not conv_first or np.any(c == 0):
        return None
    return 1.0 / c, zero


def _apply(
    state: GraphState, conv: onnx.NodeProto, user: onnx.NodeProto, w: np.ndarray, b: np.ndarray, st: _Affine
) -> None:
    s, t = st
    # float64 arithmetic, stored back in the weight's dtype, so folding adds one rounding only.
    new_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    new_b = (b.astype(np.float64) * s + t).astype(w.dtype)
    _set_const_input(state, conv, 1, new_w, "W")
    _set_const_input(state, conv, 2, new_b, "B")
    # The conv takes over the consumer's output name, so downstream nodes and graph outputs
    # are untouched and the node order stays topological.
    conv.output[0] = user.output[0]
    state.remove(user)


def _set_const_input(state: GraphState, conv: onnx.NodeProto, slot: int, value: np.ndarray, suffix: str) -> None:
    name = conv.input[slot] if len(conv.input) > slot else ""
    # Overwrite in place only an initializer this conv alone reads; shared ones (a weight tied
    # between two convs) and Constant-node outputs get a fresh initializer instead.
    if name in state.inits and len(state.consumers.get(name, [])) == 1 and name not in state.protected:
        state.inits[name] = numpy_helper.from_array(value, name)
        return
    new = state.add_const(value, f"{conv.name or conv.output[0]}_{suffix}_folded")
    if len(conv.input) > slot:
        conv.input[slot] = new
    else:
        conv.input.append(new)
