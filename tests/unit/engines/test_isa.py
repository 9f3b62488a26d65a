"""The instruction-set class from CPUID, and ONNX Runtime's int8 kernels measured on this CPU."""

from __future__ import annotations

import numpy as np
import pytest

from resserve.engines.hardware import EXACT_INT8_CLASSES, cpu_features, isa_class, ort_int8_kernels_saturate
from tests.model_repo_fixtures import tiny_classifier, two_conv_classifier

SAPPHIRE_RAPIDS = frozenset({"SSE2", "AVX2", "AVX512F", "AVX512VNNI", "AVX512BF16", "AVX512_SPR", "AMX_INT8"})
ZEN4 = frozenset({"SSE2", "AVX2", "AVX512F", "AVX512VNNI", "AVX512BF16"})
SKYLAKE_SP = frozenset({"SSE2", "AVX2", "AVX512F"})
ZEN3 = frozenset({"SSE2", "AVX", "AVX2", "FMA3"})


@pytest.mark.parametrize(("features", "expected"), [
    (SAPPHIRE_RAPIDS, "amx"), (ZEN4, "avx512_vnni"), (SKYLAKE_SP, "avx512"), (ZEN3, "avx2"),
    (frozenset({"SSE2", "SSE42"}), "baseline"), (frozenset(), "other"),
])
def test_isa_classes(features: frozenset[str], expected: str) -> None:
    assert isa_class(features) == expected


def test_this_cpu_is_classed_from_what_numpy_dispatches_on() -> None:
    from numpy._core._multiarray_umath import __cpu_features__

    found = cpu_features()
    assert {name for name, present in __cpu_features__.items() if present} <= found
    assert isa_class() == isa_class(found)


def test_the_probe_agrees_with_the_instruction_set() -> None:
    """VNNI and AMX multiply-accumulate u8 x s8 exactly in 32 bits; the probe must say so there."""
    saturate = ort_int8_kernels_saturate()
    if isa_class() in EXACT_INT8_CLASSES:
        assert not saturate
    elif isa_class() in ("avx2", "avx512") and not saturate:
        pytest.skip("this AVX2 CPU has AVX-VNNI (exact kernels without AVX-512)")
    else:
        assert saturate


def test_exact_kernels_are_chosen_where_the_probe_says_they_are_needed(tmp_path) -> None:
    """An int8 file on the CPU provider: exact kernels everywhere, by the CPU or by ONNX Runtime's option."""
    from resserve.builder.ort_quant import quantize_int8
    from resserve.engines.onnxruntime import OnnxRuntimeEngine

    fp32 = two_conv_classifier(tmp_path / "fp32.onnx")
    int8 = quantize_int8(fp32, tmp_path / "int8" / "model.onnx", np.random.default_rng(0).random((4, 3, 224, 224),
                                                                                                np.float32))
    engine = OnnxRuntimeEngine(int8, "cpu")  # int8 read from the file
    engine.load()
    assert engine.int8 is True
    expected = "exact (x64quantprecision)" if ort_int8_kernels_saturate() else "exact"
    assert engine.runtime()["int8_kernels"] == expected == engine.describe()["int8_kernels"]
    forced = OnnxRuntimeEngine(int8, "cpu", int8_exact_kernels="on")
    forced.load()
    assert forced.int8_kernels == "exact (x64quantprecision)"
    plain = OnnxRuntimeEngine(tiny_classifier(tmp_path / "tiny.onnx"), "cpu")
    plain.load()
    assert plain.int8 is False and plain.int8_kernels is None and plain.runtime()["precision"] == "fp32"
