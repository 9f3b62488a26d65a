"""``engine: auto``: the fastest engine this machine has for the precision, with the reason.

TensorRT on NVIDIA GPUs; OpenVINO on x86 CPUs whose hardware it reports as supporting the
precision natively (AMX or AVX-512 BF16/VNNI: on Sapphire Rapids its bf16 and int8 run 5-10x ONNX
Runtime fp32; on AMD Zen 4, AVX-512 BF16/VNNI, it runs too); ONNX Runtime everywhere else.

The CPU check asks OpenVINO's own CPU plugin (``OPTIMIZATION_CAPABILITIES``) rather than the
vendor string: a first version required "GenuineIntel" and sent bf16 models on AMD EPYC to ONNX
Runtime, which cannot build bf16 at all.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from pathlib import Path

from resserve.config import ENGINE_PRECISIONS

log = logging.getLogger(__name__)


@cache
def cpu_vendor_and_flags() -> tuple[str, frozenset[str]]:
    """CPU vendor and feature flags from /proc/cpuinfo ('' and empty off Linux)."""
    vendor, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
            if vendor and flags:
                break
    except OSError:
        pass
    return vendor, flags


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@cache
def nvidia_gpu_with_tensorrt() -> tuple[bool, str]:
    """Whether TensorRT can run here, and why not."""
    if not _installed("tensorrt"):
        return False, "TensorRT is not installed"
    from resserve.compile.tensorrt import tensorrt_available

    return tensorrt_available()


@cache
def openvino_cpu_capabilities() -> frozenset[str]:
    """OpenVINO's CPU plugin capabilities (FP32, BF16, INT8, ...); empty without OpenVINO or a CPU device."""
    if not _installed("openvino"):
        return frozenset()
    try:
        import openvino

        return frozenset(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:  # a broken install or an unsupported CPU: fall back, say why
        log.warning("OpenVINO is installed but its CPU device is unusable: %s", exc)
        return frozenset()


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
