"""The cleanup passes taken from onnxoptimizer (https://github.com/onnx/optimizer), one at a time.

Run one by one so the report can say which pass removed what. ``eliminate_nop_cast`` needs
every tensor's type, so shape inference runs first; the value_info it adds is dropped again
afterwards (resserve's own passes rename tensors, and a stale shape would mislead a runtime).

Not taken, though present: ``fuse_bn_into_conv`` and ``fuse_add_bias_into_conv`` (0.4.2) leave
the folded weight as graph arithmetic (Sqrt, Div, Mul, Unsqueeze... per BatchNorm) that only a
later constant-folding pass turns into a tensor; :mod:`conv_affine` folds numerically instead.
``fuse_pad_into_pool`` moves a zero Pad into a MaxPool, which pads with -inf: equal only for
inputs known to be >= 0. ``fuse_pad_into_conv`` reads ``pads`` as covering every axis, so it is
not run on a graph with an opset-18 Pad that names its ``axes``.
"""

from __future__ import annotations

import onnx
import onnxoptimizer

from resserve.errors import ExportError

# In the order they run, each with the op types it can remove: a pass is skipped when the graph
# has none (every call serializes the whole model, weights included). None of them changes the
# graph's inputs or outputs.
CLEANUP_PASSES: dict[str, frozenset[str]] = {
    "eliminate_identity": frozenset({"Identity"}),
    "eliminate_nop_cast": frozenset({"Cast"}),
    "eliminate_nop_dropout": frozenset({"Dropout"}),
    "eliminate_nop_transpose": frozenset({"Transpose"}),
    "fuse_consecutive_transposes": frozenset({"Transpose"}),
    "fuse_pad_into_conv": frozenset({"Pad"}),
}
# Run once before and once after everything else.
SWEEP_PASSES = ("eliminate_deadend", "eliminate_unused_initializer")
LIBRARY = "onnxoptimizer"


def _with_types(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):
        return model  # without types eliminate_nop_cast keeps every Cast: safe, merely less


def _pads_some_axes(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "Pad" and len(n.input) > 3 and n.input[3] for n in model.graph.node)


def run_pass(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Apply one onnxoptimizer pass and return the new model (``model`` is not mutated)."""
    if name == "fuse_pad_into_conv" and _pads_some_axes(model):
        return model
    typed = _with_types(model) if name == "eliminate_nop_cast" else model
    try:
        optimized = onnxoptimizer.optimize(typed, [name])
    except Exception as exc:  # the C++ passes raise plain RuntimeError/ValueError
        raise ExportError(f"onnxoptimizer pass {name} failed: {exc}") from exc
    known = {v.name for v in model.graph.value_info}
    kept = [v for v in optimized.graph.value_info if v.name in known]
    optimized.graph.ClearField("value_info")
    optimized.graph.value_info.extend(kept)
    return optimized
