"""The torch engine on CUDA: fp16 with CUDA graphs (captured per size, batches padded up), against
CPU fp32. Skipped with the reason where no GPU is present (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from resserve.builder.logit_parity import compare_logits
from resserve.engines.torch_engine import TorchEngine
from resserve.synthetic import synthetic_batch

pytestmark = pytest.mark.gpu

CUDA_RTOL = 5e-3  # TF32 convolutions
FP16_RTOL = 2e-2


@pytest.fixture(scope="module")
def cpu_fp32() -> TorchEngine:
    engine = TorchEngine("resnet18", random_weights_seed=0)
    engine.load()
    return engine


def test_fp16_cuda_graphs_match_cpu_fp32(cpu_fp32: TorchEngine) -> None:
    engine = TorchEngine("resnet18", random_weights_seed=0, device="cuda", precision="fp16", cuda_graphs=True,
                         graph_batch_sizes=(1, 4, 8))
    engine.load()
    for rows in (3, 4, 1, 5, 19):  # 3 and 4 share the size-4 graph; 19 runs as 8 + 8 + 3 (padded to 4)
        x = synthetic_batch(rows, 224, seed=rows)
        out = engine.infer(x)
        assert out.dtype == np.float32 and out.shape == (rows, 1000)
        compare_logits(f"torch-cuda-fp16-graphs-batch{rows}", cpu_fp32.infer(x), out, rtol=FP16_RTOL)
    info = engine.describe()
    assert sorted(info["graph_batch_sizes"]) == [1, 4, 8] and info["gpu"]
    # Replays are not stale: a second, different batch of the same size gives its own answer.
    a, b = synthetic_batch(4, 224, seed=40), synthetic_batch(4, 224, seed=41)
    assert not np.allclose(engine.infer(a), engine.infer(b))
    engine.close()


def test_fp32_cuda_matches_cpu(cpu_fp32: TorchEngine) -> None:
    engine = TorchEngine("resnet18", random_weights_seed=0, device="cuda")
    engine.load()
    x = synthetic_batch(6, 224, seed=9)
    compare_logits("torch-cuda-fp32", cpu_fp32.infer(x), engine.infer(x), rtol=CUDA_RTOL)
    engine.close()
