"""The torch engine on CPU: parity with ONNX Runtime on the same weights, bf16 agreement, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resserve.builder.accuracy import agreement
from resserve.builder.export import ExportReport
from resserve.builder.logit_parity import compare_logits, relative_max_diff
from resserve.engines.hardware import torch_cpu_bf16
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.engines.torch_engine import TorchEngine, graph_batch_size
from resserve.errors import ConfigError, EngineError, EngineUnavailableError
from resserve.synthetic import synthetic_batch

# bf16 keeps 8 significant bits; through ResNet-18 that is 2-5% of the largest logit (measured).
BF16_RTOL = 6e-2


@pytest.fixture(scope="module")
def fp32_engine() -> TorchEngine:
    # Seed 0, as the session's exported ONNX file: the same weights both ways.
    engine = TorchEngine("resnet18", random_weights_seed=0)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_batch(16, 224, seed=11)


def test_fp32_matches_onnxruntime(fp32_engine: TorchEngine, resnet18_onnx: ExportReport) -> None:
    ort_engine = OnnxRuntimeEngine(resnet18_onnx.path, "cpu", intra_op_threads=2)
    ort_engine.load()
    x = synthetic_batch(4, 224, seed=5)
    compare_logits("torch-vs-ort", ort_engine.infer(x), fp32_engine.infer(x), rtol=1e-4)


def test_channels_last_does_not_change_the_function(fp32_engine: TorchEngine) -> None:
    plain = TorchEngine("resnet18", random_weights_seed=0, channels_last=False)
    plain.load()
    x = synthetic_batch(2, 224, seed=6)
    compare_logits("channels_last", plain.infer(x), fp32_engine.infer(x), rtol=1e-4)


def top1_agreement_beyond_ties(reference: np.ndarray, candidate: np.ndarray, atol: float) -> float:
    """Top-1 agreement where a flip counts only if the reference tells the two classes apart.

    The project's parity rule for swaps (see resserve/builder/logit_parity.py), applied to top-1.
    """
    ref, cand = reference.argmax(1), candidate.argmax(1)
    rows = np.arange(len(reference))
    gap = reference[rows, ref] - reference[rows, cand]
    return float(np.mean((ref == cand) | (gap <= atol)))


def test_bf16_agrees_with_fp32(fp32_engine: TorchEngine, images: np.ndarray) -> None:
    ok, why = torch_cpu_bf16()
    if not ok:
        pytest.skip(f"bf16: {why}")
    engine = TorchEngine("resnet18", random_weights_seed=0, precision="bf16")
    engine.load()
    out = engine.infer(images)
    assert out.dtype == np.float32 and out.shape == (16, 1000)
    reference = fp32_engine.infer(images)
    top1, top5, cosine = agreement(reference, out)
    rel = relative_max_diff(reference, out)
    # Random weights leave near-ties (top-1 margins of 0.5-2% of the largest logit), which bf16's
    # ~3% noise flips: raw agreement measured 11-16 of 16 over eight seeds, 16 of 16 beyond ties.
    beyond_ties = top1_agreement_beyond_ties(reference, out, BF16_RTOL * float(np.abs(reference).max()))
    assert rel <= BF16_RTOL, f"bf16 max |diff| / max |logit| = {rel:.3g}"
    assert beyond_ties >= 0.9, f"bf16 top-1 agreement {top1:.2%}, beyond ties {beyond_ties:.2%}"
    assert top5 == 1.0 and cosine.min() > 0.99


@pytest.mark.slow
def test_compiled_matches_eager(fp32_engine: TorchEngine) -> None:
    engine = TorchEngine("resnet18", random_weights_seed=0, compile=True)  # ~30 s of inductor on 2 cores
    engine.load()
    x = synthetic_batch(2, 224, seed=3)
    compare_logits("torch.compile", fp32_engine.infer(x), engine.infer(x), rtol=1e-4)


def test_interface(fp32_engine: TorchEngine) -> None:
    assert fp32_engine.input_spec.name == "input" and fp32_engine.input_spec.shape == (-1, 3, 224, 224)
    assert fp32_engine.input_spec.dtype == np.float32
    assert fp32_engine.output_spec.shape == (-1, 1000)
    assert fp32_engine.warmup((1, 2), rounds=1) > 0
    info = fp32_engine.describe()
    assert info["engine"] == "torch" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["random_weights"] is True and info["folded_batchnorms"] == 20
    # float64 input is cast, not rejected: callers need not know the engine's dtype.
    out = fp32_engine.infer(np.zeros((3, 3, 224, 224)))
    assert out.shape == (3, 1000) and out.dtype == np.float32
    assert fp32_engine.infer(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 1000)


def test_bad_input_and_unloaded_are_engine_errors(fp32_engine: TorchEngine) -> None:
    with pytest.raises(EngineError, match=r"expected input \(N, 3, 224, 224\)"):
        fp32_engine.infer(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(EngineError, match="not loaded"):
        TorchEngine("resnet18", random_weights_seed=0).infer(np.zeros((1, 3, 224, 224), np.float32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: tests/gpu/test_torch_cuda.py")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    engine = TorchEngine("resnet18", random_weights_seed=0, device="cuda", precision="fp16")
    with pytest.raises(EngineUnavailableError, match="device cuda: torch .* sees no CUDA GPU; use device"):
        engine.load()


def test_fp16_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(EngineUnavailableError, match="fp16 on CPU is not supported.*use bf16 or fp32"):
        TorchEngine("resnet18", random_weights_seed=0, precision="fp16").load()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of weights_path or random_weights_seed"),
        ({"random_weights_seed": 0, "weights_path": "w.pth"}, "exactly one of"),
        ({"random_weights_seed": 0, "cuda_graphs": True}, "cuda_graphs needs device cuda"),
        ({"random_weights_seed": 0, "device": "cuda", "cuda_graphs": True, "compile": True}, "not both"),
        ({"random_weights_seed": 0, "device": "tpu"}, "unknown torch device"),
        ({"random_weights_seed": 0, "precision": "int8"}, "unknown torch precision"),
        ({"random_weights_seed": 0, "graph_batch_sizes": (0, 4)}, "graph_batch_sizes must be positive"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TorchEngine("resnet18", **kwargs)  # type: ignore[arg-type]


def test_graph_batch_size_pads_up_to_the_next_captured_size() -> None:
    sizes = (1, 2, 4, 8)
    assert [graph_batch_size(n, sizes) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]
    assert graph_batch_size(3, (8, 4)) == 4  # order of the configured sizes does not matter
    with pytest.raises(EngineError, match="exceeds the largest CUDA graph size 8"):
        graph_batch_size(9, sizes)


def test_tie_rule_still_counts_real_flips() -> None:
    reference = np.array([[5.0, 1.0], [5.0, 4.99]])
    flipped = np.array([[1.0, 5.0], [4.9, 5.0]])
    assert top1_agreement_beyond_ties(reference, flipped, atol=0.1) == 0.5  # row 0 is a real flip
