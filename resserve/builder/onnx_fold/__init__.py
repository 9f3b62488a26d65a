"""Optimize ONNX files resserve did not export: fold BatchNorm arithmetic into the convolutions.

resserve's own exports are folded in torch (:mod:`resserve.models.fold`); this package is for
graphs from converters (tf2onnx, onnx2torch re-exports...), where only the graph is available.
The passes, run in turn until nothing changes:

- :mod:`library`: onnxoptimizer's ``eliminate_identity``, ``eliminate_nop_cast`` (Casts from a
  type to itself), ``eliminate_nop_dropout``, ``eliminate_nop_transpose``,
  ``fuse_consecutive_transposes``, ``eliminate_deadend``, ``eliminate_unused_initializer``;
- :mod:`transpose`: Transposes pushed forward through elementwise ops, residual Adds and spatial
  reductions until the NHWC<->NCHW pairs around each Conv meet and cancel;
- :mod:`conv_affine`: BatchNormalization and constant per-channel Mul/Add/Sub/Div after a Conv
  folded into its weight and bias, in float64.

Anything not provably equivalent is left alone, and :func:`optimize_onnx` checks the result
with the ONNX checker and ONNX Runtime; :mod:`unfolded` names what is still left after a Conv.
"""

from resserve.builder.onnx_fold.optimize import fold_graph, optimize_onnx
from resserve.builder.onnx_fold.fold_parity import compare_onnx_outputs
from resserve.builder.onnx_fold.fold_report import OptimizeReport, PassRecord, UnfoldedArithmetic

__all__ = ["OptimizeReport", "PassRecord", "UnfoldedArithmetic", "compare_onnx_outputs", "fold_graph",
           "optimize_onnx"]
