"""``engine: auto``: the fastest engine this machine has for the precision, with the reason.

TensorRT on NVIDIA GPUs; OpenVINO on x86 CPUs whose hardware it reports as supporting the
precision natively (AMX or AVX-512 BF16/VNNI), where its bf16 and int8 are the fastest CPU path;
ONNX Runtime everywhere else.

The CPU check asks OpenVINO's own CPU plugin (``OPTIMIZATION_CAPABILITIES``) rather than the
vendor string: AMD CPUs run OpenVINO's bf16 and int8 too, and ONNX Runtime cannot build bf16 at
all. The probes themselves are in :mod:`resserve.engines.hardware`.
"""

from __future__ import annotations

from resserve.config import ENGINE_PRECISIONS
from resserve.engines.hardware import (
    cpu_vendor_and_flags,
    nvidia_gpu_with_tensorrt,
    openvino_cpu_capabilities,
)


def resolve_engine(requested: str, precision: str) -> tuple[str, str]:
    """The engine to use and a sentence saying why."""
    if requested != "auto":
        return requested, f"engine {requested} is configured"
    ok, why_not = nvidia_gpu_with_tensorrt()
    if ok and precision in ENGINE_PRECISIONS["tensorrt"]:
        return "tensorrt", "NVIDIA GPU with TensorRT found"
    vendor, flags = cpu_vendor_and_flags()
    # The plugin names its capabilities like the precisions, upper-cased (FP32, BF16, INT8).
    if precision in ENGINE_PRECISIONS["openvino"] and precision.upper() in openvino_cpu_capabilities():
        extras = sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_vnni")))
        return "openvino", (f"{vendor or 'CPU'} ({', '.join(extras) or 'no AMX/VNNI'}) runs {precision} natively "
                            f"in OpenVINO; GPU: {why_not}")
    if precision not in ENGINE_PRECISIONS["onnxruntime"]:
        return "onnxruntime", f"no engine here builds {precision}; ONNX Runtime will refuse it"
    return "onnxruntime", f"no TensorRT GPU ({why_not}) and no CPU that OpenVINO runs {precision} on natively"
