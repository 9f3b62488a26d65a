"""``engine: auto``: the decision follows what OpenVINO's CPU plugin reports, not the CPU vendor."""

from __future__ import annotations

import pytest

from resserve.engines import select


@pytest.fixture
def capabilities(monkeypatch: pytest.MonkeyPatch):
    """Set what OpenVINO's CPU plugin reports (no TensorRT GPU either way)."""
    monkeypatch.setattr(select, "nvidia_gpu_with_tensorrt", lambda: (False, "no GPU"))

    def set_caps(*caps: str) -> None:
        monkeypatch.setattr(select, "openvino_cpu_capabilities", lambda: frozenset(caps))

    return set_caps


def test_openvino_for_each_precision_its_cpu_plugin_runs_natively(capabilities) -> None:
    capabilities("FP32", "INT8", "BF16")
    for precision in ("fp32", "bf16", "int8"):
        engine, why = select.resolve_engine("auto", precision)
        assert engine == "openvino" and f"runs {precision} natively" in why


def test_without_bf16_hardware_int8_stays_on_openvino_and_bf16_is_refused_by_name(capabilities) -> None:
    capabilities("FP32", "INT8")  # e.g. an AVX2 or AVX-512 CPU without BF16/AMX
    assert select.resolve_engine("auto", "int8")[0] == "openvino"
    engine, why = select.resolve_engine("auto", "bf16")
    assert engine == "onnxruntime" and "no engine here builds bf16" in why


def test_without_openvino_onnxruntime_and_why(capabilities) -> None:
    capabilities()
    engine, why = select.resolve_engine("auto", "int8")
    assert engine == "onnxruntime" and "no TensorRT GPU (no GPU)" in why
    assert select.resolve_engine("auto", "fp16")[0] == "onnxruntime"


def test_an_explicit_engine_is_kept(capabilities) -> None:
    capabilities("FP32", "INT8", "BF16")
    assert select.resolve_engine("onnxruntime", "int8") == ("onnxruntime", "engine onnxruntime is configured")


def test_this_machine_reports_real_capabilities() -> None:
    pytest.importorskip("openvino")
    select.openvino_cpu_capabilities.cache_clear()
    assert "FP32" in select.openvino_cpu_capabilities()  # the real plugin on this CPU, not a stand-in
