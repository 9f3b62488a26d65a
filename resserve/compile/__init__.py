"""Compile a folded ONNX model into engine artifacts: quantized, converted, or engine plans."""
