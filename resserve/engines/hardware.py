"""What this machine can run: every hardware probe, each asked once per process.

The CPU (vendor, flags, cores, its instruction-set class from CPUID, whether ONNX Runtime's int8
kernels saturate), OpenVINO's CPU plugin (which precisions it runs natively), torch's CPU bf16
support, and TensorRT with a CUDA GPU through cuda-python (availability, the GPU's name and
compute capability). Engines, ``engine: auto`` (:mod:`resserve.engines.select`) and the builders all ask
here, so a probe is written once and its answer cached: the hardware does not change while the
process runs. Optional libraries (openvino, tensorrt, cuda-python, torch) are imported inside the probes, so
this module imports anywhere.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from resserve.cgroup import cgroup_cpu_limit
from resserve.errors import EngineUnavailableError

log = logging.getLogger(__name__)

MIN_TRT = (8, 6)  # set_input_shape / execute_async_v3 / the named-tensor API


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by the cgroup's CPU quota.

    A Kubernetes CPU limit is a quota (``cpu.max``), not an affinity mask: a pod limited to 2 CPUs
    on a 64-core node still sees 64 cores in its mask, and thread pools sized by the mask would be
    throttled. Not cached: ``taskset`` may change the mask while the process runs.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


@functools.cache
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


# --- The instruction set: what decides the numbers a reduced-precision model gives -------------

IsaClass = Literal["amx", "avx512_vnni", "avx512", "avx2", "baseline", "other"]
# ISA classes where int8 kernels multiply-accumulate exactly in 32 bits (VNNI, AMX); below them,
# ONNX Runtime's u8 x s8 kernels add pairs of products in 16 bits (VPMADDUBSW) and can saturate.
EXACT_INT8_CLASSES: frozenset[str] = frozenset({"amx", "avx512_vnni"})


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU's features as the CPU itself reports them (CPUID, through numpy's runtime dispatch),
    plus AMX from the kernel's flags.

    CPUID and not /proc/cpuinfo: under an emulator (``qemu-x86_64 -cpu EPYC-Milan``) or a VM
    with masked features, /proc/cpuinfo describes the host while the code runs on what CPUID says.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # numpy's own CPUID dispatch table
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__  # type: ignore[no-redef]
    found = {name for name, present in __cpu_features__.items() if present}
    _, flags = cpu_vendor_and_flags()
    # numpy has no AMX entry; trust the kernel's flag only where CPUID shows the same generation.
    if "AVX512_SPR" in found and {"amx_tile", "amx_int8"} <= flags:
        found.update({"AMX_TILE", "AMX_INT8"} | ({"AMX_BF16"} if "amx_bf16" in flags else set()))
    return frozenset(found)


def isa_class(features: frozenset[str] | None = None) -> IsaClass:
    """The widest instruction-set class here, as far as it changes reduced-precision results:
    ``amx`` (Sapphire Rapids), ``avx512_vnni`` (Zen 4, Ice Lake), ``avx512`` (Skylake-SP),
    ``avx2`` (Zen 3, Haswell), ``baseline`` (x86-64 below AVX2) or ``other`` (not x86)."""
    found = cpu_features() if features is None else features
    if "AMX_INT8" in found:
        return "amx"
    if "AVX512VNNI" in found:
        return "avx512_vnni"
    if "AVX512F" in found:
        return "avx512"
    if "AVX2" in found:
        return "avx2"
    return "baseline" if "SSE2" in found else "other"


# The CPUID features that change what a reduced-precision model computes (recorded with its report).
NUMERICS_FEATURES = ("AVX2", "FMA3", "F16C", "AVX512F", "AVX512VNNI", "AVX512BF16", "AVX512FP16", "AMX_INT8",
                     "AMX_BF16")


def numerics_features() -> list[str]:
    """Which of :data:`NUMERICS_FEATURES` this CPU has."""
    found = cpu_features()
    return [name for name in NUMERICS_FEATURES if name in found]


# Products whose pairwise 16-bit sum overflows: 255 * 127 * 2 = 64770 > 32767.
_PROBE_DEPTH = 64


@functools.cache
def ort_int8_kernels_saturate() -> bool:
    """Whether ONNX Runtime's u8 x s8 CPU kernels saturate on this CPU (AVX2 or AVX-512 without VNNI).

    Measured, not inferred from flags: one MatMulInteger whose exact sum is known. Where they
    saturate, ONNX Runtime's ``session.x64quantprecision`` selects exact kernels (documented in its
    quantization guide); elsewhere that option only costs time.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((_PROBE_DEPTH, 1), 127, np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "int8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, _PROBE_DEPTH])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"a": np.full((1, _PROBE_DEPTH), 255, np.uint8)})
    exact = 255 * 127 * _PROBE_DEPTH
    saturates = int(out[0, 0]) != exact
    log.info("ONNX Runtime u8 x s8 kernels on this CPU (%s): %s", isa_class(),
             f"saturate ({int(out[0, 0])} for {exact})" if saturates else "exact")
    return saturates


# --- OpenVINO's CPU plugin -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cpu_properties() -> tuple[tuple[str, ...], str]:
    """OPTIMIZATION_CAPABILITIES and the device name of OpenVINO's CPU plugin (the one query)."""
    import openvino as ov

    core = ov.Core()
    caps = tuple(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return caps, str(core.get_property("CPU", "FULL_DEVICE_NAME"))


def cpu_capabilities() -> dict[str, Any]:
    """What OpenVINO's CPU plugin says it can run natively here (bf16 needs AMX or AVX512-BF16)."""
    caps, device = _cpu_properties()
    return {
        "device": device,
        "optimization_capabilities": list(caps),
        "fp32": "FP32" in caps,
        "bf16": "BF16" in caps,
        "int8": "INT8" in caps,
    }


def cpu_supports_bf16() -> bool:
    """True when the CPU runs bf16 natively; elsewhere a bf16 hint would be emulated or refused."""
    return bool(cpu_capabilities()["bf16"])


@functools.cache
def openvino_cpu_capabilities() -> frozenset[str]:
    """OpenVINO's CPU plugin capabilities (FP32, BF16, INT8, ...); empty without OpenVINO or a CPU device."""
    if not _installed("openvino"):
        return frozenset()
    try:
        return frozenset(_cpu_properties()[0])
    except Exception as exc:  # a broken install or an unsupported CPU: fall back, say why
        log.warning("OpenVINO is installed but its CPU device is unusable: %s", exc)
        return frozenset()


# --- torch -----------------------------------------------------------------------------------


@functools.cache
def torch_cpu_bf16() -> tuple[bool, str]:
    """Native bf16 on this CPU for torch (AVX512-BF16 or AMX); without it bf16 is emulated and slower than fp32."""
    import torch

    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, but what torch itself uses
    probes = [getattr(torch.cpu, name, None) for name in names]
    if all(p is None for p in probes):
        return True, "this torch cannot tell; bf16 allowed"
    if any(p is not None and p() for p in probes):
        return True, "AVX512-BF16/AMX present"
    return False, "this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated and slower than fp32"


# --- TensorRT and CUDA -----------------------------------------------------------------------


@functools.cache
def tensorrt_available() -> tuple[bool, str]:
    """(True, version) where TensorRT, cuda-python and a CUDA GPU are usable, else (False, why).

    No torch: the GPU runtime image has none; CUDA memory and streams come from cuda-python.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError, RuntimeError) as exc:  # OSError, RuntimeError: missing CUDA libraries
        return False, (f"the TensorRT Python package is not importable ({exc}); install it with "
                       "pip install 'resserve[gpu]' on a machine with an NVIDIA GPU")
    version = tuple(int(p) for p in trt.__version__.split(".")[:2])
    if version < MIN_TRT:
        return False, f"TensorRT {trt.__version__} is too old; resserve needs >= {MIN_TRT[0]}.{MIN_TRT[1]}"
    from resserve.engines import cuda_runtime

    try:
        cuda_runtime.runtime()
    except EngineUnavailableError as exc:
        return False, str(exc)
    if cuda_runtime.device_count() < 1:
        return False, "cuda-python sees no CUDA GPU (no NVIDIA driver, or no device visible to this process)"
    return True, f"TensorRT {trt.__version__}"


def require_tensorrt(action: str) -> None:
    """Raise EngineUnavailableError naming ``action`` when TensorRT or CUDA is missing."""
    ok, why = tensorrt_available()
    if not ok:
        raise EngineUnavailableError(f"cannot {action}: {why}")


@functools.cache
def nvidia_gpu_with_tensorrt() -> tuple[bool, str]:
    """Whether TensorRT can run here, and why not (for ``engine: auto``: no import when not installed)."""
    if not _installed("tensorrt"):
        return False, "TensorRT is not installed"
    return tensorrt_available()


@functools.cache
def gpu_identity(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of ``device_id``, through cuda-python."""
    from resserve.engines.cuda_runtime import device_identity

    return device_identity(device_id)
