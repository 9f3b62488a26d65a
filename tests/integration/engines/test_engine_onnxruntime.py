"""The ONNX Runtime engine on a real exported ResNet: parity, interface, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from resserve.builder.export import ExportReport
from resserve.builder.logit_parity import compare_logits
from resserve.engines.factory import Variant
from resserve.engines.onnxruntime import OnnxRuntimeEngine, resolve_provider
from resserve.errors import EngineError, EngineUnavailableError
from resserve.models.weights import LoadedModel
from resserve.synthetic import synthetic_batch


@pytest.fixture(scope="module")
def engine(resnet18_onnx: ExportReport) -> OnnxRuntimeEngine:
    engine = OnnxRuntimeEngine(resnet18_onnx.path, provider="cpu", intra_op_threads=2)
    engine.load()
    return engine


def test_engine_matches_torch(engine: OnnxRuntimeEngine, resnet18_random: LoadedModel) -> None:
    x = synthetic_batch(4, 224, seed=7)
    with torch.no_grad():
        want = resnet18_random.model(torch.from_numpy(x)).numpy()
    compare_logits("engine", want, engine.infer(x), rtol=1e-4)


def test_interface(engine: OnnxRuntimeEngine) -> None:
    assert engine.input_spec.name == "input" and engine.input_spec.shape == (-1, 3, 224, 224)
    assert engine.input_spec.dtype == np.float32
    assert engine.output_spec.shape == (-1, 1000)
    assert engine.warmup((1, 2), rounds=1) > 0
    info = engine.describe()
    assert info["provider"] == "cpu" and info["active_providers"][0] == "CPUExecutionProvider"
    assert info["intra_op_threads"] == 2
    # float64 input is cast, not rejected: callers need not know the engine's dtype.
    assert engine.infer(np.zeros((3, 3, 224, 224))).shape == (3, 1000)


def test_bad_input_shape_is_an_engine_error(engine: OnnxRuntimeEngine) -> None:
    with pytest.raises(EngineError, match="onnxruntime failed on a batch"):
        engine.infer(np.zeros((1, 3, 100), np.float32))


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_absent_gpu_provider_is_a_clear_error(resnet18_onnx: ExportReport, provider: str) -> None:
    if f"{'CUDA' if provider == 'cuda' else 'Tensorrt'}ExecutionProvider" in ort.get_available_providers():
        pytest.skip(f"{provider} provider is installed here; covered by tests/gpu")
    with pytest.raises(EngineUnavailableError, match=r"is not available here.*onnxruntime-gpu.*provider 'cpu'"):
        OnnxRuntimeEngine(resnet18_onnx.path, provider).load()


def test_auto_picks_an_installed_provider() -> None:
    assert resolve_provider("auto") in ("tensorrt", "cuda", "cpu")
    with pytest.raises(EngineUnavailableError, match="unknown onnxruntime provider 'tpu'"):
        resolve_provider("tpu")


def test_missing_file_and_unknown_engine(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="does not exist; run `resserve build`"):
        OnnxRuntimeEngine(tmp_path / "absent.onnx").load()
    with pytest.raises(EngineUnavailableError, match="unknown engine 'tflite'"):
        Variant("tflite", "fp32").artifact(tmp_path)
    with pytest.raises(EngineError, match="not loaded"):
        OnnxRuntimeEngine(tmp_path / "absent.onnx").infer(np.zeros((1, 3, 224, 224), np.float32))
