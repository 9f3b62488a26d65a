"""``engine: auto``: the fastest engine this machine has for the precision, with the reason.

The engine registry (:mod:`resserve.engine_registry`) ranks the engines and names each one's
probe; the first whose probe says yes for the precision wins, ONNX Runtime otherwise. TensorRT
on NVIDIA GPUs; OpenVINO on x86 CPUs whose hardware it reports as supporting the precision
natively (AMX or AVX-512 BF16/VNNI), where its bf16 and int8 are the fastest CPU path.

The CPU check asks OpenVINO's own CPU plugin (``OPTIMIZATION_CAPABILITIES``) rather than the
vendor string: AMD CPUs run OpenVINO's bf16 and int8 too, and ONNX Runtime cannot build bf16 at
all. The probes themselves are in :mod:`resserve.engines.hardware`.
"""

from __future__ import annotations

from resserve.engine_registry import ENGINES, FALLBACK_ENGINE, engine_spec, resolve
from resserve.engines.hardware import (
    cpu_vendor_and_flags,
    nvidia_gpu_with_tensorrt,
    openvino_cpu_capabilities,
)


def tensorrt_runs(precision: str) -> tuple[bool, str]:
    """An NVIDIA GPU with TensorRT is here (TensorRT builds every precision it lists)."""
    ok, why_not = nvidia_gpu_with_tensorrt()
    return (True, "NVIDIA GPU with TensorRT found") if ok else (False, f"no TensorRT GPU ({why_not})")


def openvino_runs(precision: str) -> tuple[bool, str]:
    """OpenVINO's CPU plugin runs ``precision`` natively here."""
    vendor, flags = cpu_vendor_and_flags()
    # The plugin names its capabilities like the precisions, upper-cased (FP32, BF16, INT8).
    if precision.upper() not in openvino_cpu_capabilities():
        return False, f"no CPU that OpenVINO runs {precision} on natively"
    extras = sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_vnni")))
    return True, f"{vendor or 'CPU'} ({', '.join(extras) or 'no AMX/VNNI'}) runs {precision} natively in OpenVINO"


def resolve_engine(requested: str, precision: str) -> tuple[str, str]:
    """The engine to use and a sentence saying why."""
    if requested != "auto":
        return requested, f"engine {requested} is configured"
    refusals = []
    for spec in sorted(ENGINES, key=lambda s: s.auto_rank):
        if spec.auto_probe is None or precision not in spec.precisions:
            continue
        ok, why = resolve(spec.auto_probe)(precision)
        if ok:
            return spec.name, "; ".join([why, *refusals])
        refusals.append(why)
    if precision not in engine_spec(FALLBACK_ENGINE).precisions:
        return FALLBACK_ENGINE, f"no engine here builds {precision}; ONNX Runtime will refuse it"
    return FALLBACK_ENGINE, " and ".join(refusals) or "no faster engine here"
