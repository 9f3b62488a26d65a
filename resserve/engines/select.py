"""``engine: auto``: the fastest engine this machine has for the precision, with the reason.

TensorRT on NVIDIA GPUs, OpenVINO on Intel CPUs (AMX/VNNI make its bf16 and int8 5-10x ONNX
Runtime fp32 here), ONNX Runtime everywhere else.
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


def resolve_engine(requested: str, precision: str) -> tuple[str, str]:
    """The engine to use and a sentence saying why."""
    if requested != "auto":
        return requested, f"engine {requested} is configured"
    ok, why_not = nvidia_gpu_with_tensorrt()
    if ok and precision in ENGINE_PRECISIONS["tensorrt"]:
        return "tensorrt", "NVIDIA GPU with TensorRT found"
    vendor, flags = cpu_vendor_and_flags()
    if vendor == "GenuineIntel" and _installed("openvino") and precision in ENGINE_PRECISIONS["openvino"]:
        extras = sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_vnni")))
        return "openvino", f"Intel CPU ({', '.join(extras) or 'no AMX/VNNI'}) with OpenVINO; GPU: {why_not}"
    if precision not in ENGINE_PRECISIONS["onnxruntime"]:
        return "onnxruntime", f"no engine here builds {precision}; ONNX Runtime will refuse it"
    return "onnxruntime", f"no TensorRT GPU ({why_not}) and no Intel CPU with OpenVINO"
