"""ONNX Runtime's CUDA and TensorRT providers on a real GPU (skipped with a reason elsewhere)."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from resserve.builder.logit_parity import compare_logits
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.synthetic import synthetic_batch

# TF32 convolutions (the CUDA provider's default on Ampere and newer) keep ~1e-3 relative accuracy.
CUDA_RTOL = 5e-3
FP16_RTOL = 2e-2


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory, resnet18_onnx_file: Path) -> Path:
    path = tmp_path_factory.mktemp("gpu") / "resnet18.onnx"
    shutil.copyfile(resnet18_onnx_file, path)  # the TensorRT provider's caches go beside it
    return path


def cpu_reference(path: Path, batch) -> object:  # type: ignore[no-untyped-def]
    engine = OnnxRuntimeEngine(path, "cpu")
    engine.load()
    return engine.infer(batch)


@pytest.mark.gpu
def test_cuda_provider_matches_cpu(onnx_path: Path) -> None:
    x = synthetic_batch(8, 224, seed=3)
    engine = OnnxRuntimeEngine(onnx_path, "cuda")
    engine.load()
    assert engine.describe()["active_providers"][0] == "CUDAExecutionProvider"
    compare_logits("cuda", cpu_reference(onnx_path, x), engine.infer(x), rtol=CUDA_RTOL)


@pytest.mark.tensorrt
def test_tensorrt_provider_fp16_builds_cache_and_matches(onnx_path: Path, tmp_path: Path) -> None:
    x = synthetic_batch(4, 224, seed=4)
    engine = OnnxRuntimeEngine(onnx_path, "tensorrt", fp16=True, cache_dir=tmp_path)
    engine.load()
    out = engine.infer(x)
    assert engine.describe()["active_providers"][0] == "TensorrtExecutionProvider"
    compare_logits("tensorrt-fp16", cpu_reference(onnx_path, x), out, rtol=FP16_RTOL)
    assert any((tmp_path / "tensorrt").iterdir())  # engine cache written for the next start


@pytest.mark.tensorrt
def test_tensorrt_provider_serves_every_batch_of_its_profile_from_one_engine(onnx_path: Path, tmp_path: Path) -> None:
    """The profile spans 1..max_batch_size, so a larger batch later needs no rebuild: one engine file."""
    engine = OnnxRuntimeEngine(onnx_path, "tensorrt", cache_dir=tmp_path, batches=(1, 4, 8))
    engine.load()
    for batch in (2, 8, 1):
        x = synthetic_batch(batch, 224, seed=batch)
        compare_logits(f"tensorrt batch {batch}", cpu_reference(onnx_path, x), engine.infer(x), rtol=CUDA_RTOL)
    engines = list((tmp_path / "tensorrt").glob("*.engine"))
    assert len(engines) == 1, engines
    assert engine.provider == "tensorrt"


requires_ort_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)",
)
pytestmark = [requires_ort_cuda]
