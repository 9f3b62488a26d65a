"""Compare two ONNX graphs numerically in ONNX Runtime: the check every graph rewrite must pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from resserve.builder.logit_parity import compare_logits
from resserve.errors import ExportError, ParityError


def _input_shape(value: onnx.ValueInfoProto) -> list[int]:
    """A concrete shape for a possibly symbolic input: batch -> 2, image H/W -> 224, channels -> 3."""
    dims = list(value.type.tensor_type.shape.dim)
    fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if len(fixed) == 4:
        # NHWC when the channel count is fixed last and not second (tf2onnx exports), else NCHW.
        nhwc = fixed[1] is None and fixed[3] is not None
        defaults = [2, 224, 224, 3] if nhwc else [2, 3, 224, 224]
    else:
        defaults = [2 if axis == 0 else 1 for axis in range(len(fixed))]
    return [f if f is not None else d for f, d in zip(fixed, defaults, strict=True)]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Run each graph exactly as written: ORT's own fusions would blur what is being compared.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's pybind errors (Fail, InvalidGraph, ...) share no base but Exception
        raise ExportError(f"onnxruntime cannot load the graph {model.graph.name!r}: {exc}") from exc


def compare_onnx_outputs(a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = 1e-4, seed: int = 0) -> float:
    """Run both graphs on one seeded random input; return the worst max|a-b|/max|a| over outputs.

    ``a`` is the reference. Raises ParityError above ``rtol`` or when the top-5 classes differ,
    so a rewrite that changes predictions cannot pass on a small average error.
    """
    initializers = {t.name for t in a.graph.initializer}
    inputs = [i for i in a.graph.input if i.name not in initializers]
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in inputs:
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = _input_shape(value)
        data = rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 10, shape)
        feeds[value.name] = data.astype(dtype)
    session_a, session_b = _session(a), _session(b)
    if sorted(i.name for i in session_b.get_inputs()) != sorted(feeds):
        raise ParityError("the two graphs have different inputs")
    try:
        outs_a, outs_b = session_a.run(None, feeds), session_b.run(None, feeds)
    except Exception as exc:  # see _session
        shapes = {name: array.shape for name, array in feeds.items()}
        raise ExportError(f"onnxruntime failed on random inputs of shapes {shapes}: {exc}") from exc
    if len(outs_a) != len(outs_b):
        raise ParityError(f"output count differs: {len(outs_a)} vs {len(outs_b)}")
    worst = 0.0
    for index, (out_a, out_b) in enumerate(zip(outs_a, outs_b, strict=True)):
        out_a, out_b = np.asarray(out_a, dtype=np.float64), np.asarray(out_b, dtype=np.float64)
        if out_a.shape != out_b.shape:
            raise ParityError(f"output {index} shape differs: {out_a.shape} vs {out_b.shape}")
        if out_a.size == 0:
            continue
        if not (np.all(np.isfinite(out_a)) and np.all(np.isfinite(out_b))):
            raise ParityError(f"output {index} is not finite: parity cannot be measured")
        err = compare_logits(f"output {index}", out_a, out_b, rtol).relative_max_diff
        worst = max(worst, err)
    return worst
