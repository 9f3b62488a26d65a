"""The fp16 variant on ONNX Runtime's CUDA provider against fp32 on the CPU.

Skipped with a reason where there is no CUDA provider (tests/conftest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from resserve.builder.ort_quant import convert_fp16
from resserve.builder.logit_parity import compare_logits
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.synthetic import synthetic_batch

FP16_RTOL = 2e-2


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory, resnet18_onnx_file: Path) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fp16")
    fp32 = folder / "resnet18.onnx"
    shutil.copyfile(resnet18_onnx_file, fp32)
    return fp32, convert_fp16(fp32, folder / "resnet18_fp16.onnx")


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8])
def test_fp16_on_cuda_matches_fp32_on_cpu(paths: tuple[Path, Path], batch: int) -> None:
    fp32, fp16 = paths
    assert onnx.load(str(fp16)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = synthetic_batch(batch, 224, seed=5)
    cpu = OnnxRuntimeEngine(fp32, "cpu")
    cpu.load()
    cuda = OnnxRuntimeEngine(fp16, "cuda")
    cuda.load()
    assert cuda.describe()["active_providers"][0] == "CUDAExecutionProvider"
    out = cuda.infer(x)
    assert out.dtype == np.float32 and out.shape == (batch, 1000)
    compare_logits("cuda-fp16", cpu.infer(x), out, rtol=FP16_RTOL)


requires_ort_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)",
)
pytestmark = [requires_ort_cuda]
