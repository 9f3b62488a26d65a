"""``resserve optimize`` on graphs real exporters write in a converter's NHWC pattern.

A PyTorch module written channels-last (explicit permutes around each conv, BatchNorm as constant
(C,) arithmetic on the last axis, float->float casts), exported here with the TorchScript
exporter; and the full-size benchmark's generator (loadtests/optimize_speed.py) at ResNet-18.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from typer.testing import CliRunner

from resserve.builder.onnx_fold import optimize_onnx
from resserve.builder.logit_parity import compare_logits
from resserve.cli import app

REPO = Path(__file__).resolve().parents[3]


class _AffineBN(nn.Module):
    def __init__(self, c: int, gen: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("mean", torch.randn(c, generator=gen) * 0.1)
        self.register_buffer("scale", torch.rand(c, generator=gen) + 0.5)
        self.register_buffer("beta", torch.randn(c, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # NHWC: (C,) broadcasts on the last axis
        return ((x.float() - self.mean) * self.scale + self.beta).float().float()


class _ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int, gen: torch.Generator) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.register_buffer("bias", torch.randn(c_out, generator=gen) * 0.1)
        self.bn = _AffineBN(c_out, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # NHWC in and out
        y = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.bn(y.float() + self.bias)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, gen: torch.Generator) -> None:
        super().__init__()
        self.a, self.b = _ConvBN(c_in, c_out, 3, stride, gen), _ConvBN(c_out, c_out, 3, 1, gen)
        self.down = _ConvBN(c_in, c_out, 1, stride, gen) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.down is None else self.down(x)
        return torch.relu(self.b(torch.relu(self.a(x))) + shortcut)


class ChannelsLastNet(nn.Module):
    """Stem, max pool (NCHW-only, between permutes), two residual blocks, spatial mean, FC."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.stem = _ConvBN(3, 16, 3, 2, gen)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.blocks = nn.Sequential(_Block(16, 16, 1, gen), _Block(16, 32, 2, gen))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # NCHW input, like the graph
        x = torch.relu(self.stem(x.permute(0, 2, 3, 1)))
        x = self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc(self.blocks(x).mean(dim=(1, 2)))


def _ops(path: Path) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))


def _export(model: nn.Module, path: Path, size: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, size, size),), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})


@pytest.fixture(scope="module")
def channels_last_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    model = ChannelsLastNet().eval()
    path = tmp_path_factory.mktemp("channels_last") / "channels_last.onnx"
    _export(model, path, 64)
    return path, model


def test_channels_last_torch_export_folds_completely(channels_last_onnx: tuple[Path, nn.Module],
                                                     tmp_path: Path) -> None:
    src, model = channels_last_onnx
    # The exporter keeps the pattern: a Transpose after every conv and before most (it cancels a
    # permute pair it sees side by side), four casts and four ops per BatchNorm, two residual Adds.
    assert _ops(src) == {"Add": 14, "Cast": 24, "Conv": 6, "Gemm": 1, "MaxPool": 1, "Mul": 6, "ReduceMean": 1,
                         "Relu": 5, "Sub": 6, "Transpose": 11}
    out = tmp_path / "optimized.onnx"
    report = optimize_onnx(src, out, require_folded=True)
    assert _ops(out) == {"Add": 2, "Conv": 6, "Gemm": 1, "MaxPool": 1, "ReduceMean": 1, "Relu": 5}
    assert report.removed == {"Add": 12, "Cast": 24, "Mul": 6, "Sub": 6, "Transpose": 11}
    assert (report.convs, report.convs_folded) == (6, 6) and not report.unfolded
    x = np.random.default_rng(3).standard_normal((4, 3, 64, 64)).astype(np.float32)
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    compare_logits("optimized channels-last export", want, got, rtol=1e-4)


def _speed_script():
    spec = importlib.util.spec_from_file_location("optimize_speed", REPO / "loadtests" / "optimize_speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_channels_last_resnet_folds_completely(tmp_path: Path) -> None:
    # The generator of loadtests/optimize_speed.py, at ResNet-18 and 64 px to stay quick.
    src, out = tmp_path / "resnet18_cl.onnx", tmp_path / "resnet18_cl.optimized.onnx"
    _speed_script().export_channels_last("resnet18", src, image_size=64, num_classes=10)
    assert _ops(src) == {"Add": 48, "Cast": 80, "Conv": 20, "Flatten": 1, "Gemm": 1, "MaxPool": 1, "Mul": 20,
                         "ReduceMean": 1, "Relu": 17, "Sub": 20, "Transpose": 40}
    report = optimize_onnx(src, out, require_folded=True)
    assert _ops(out) == {"Add": 8, "Conv": 20, "Flatten": 1, "Gemm": 1, "MaxPool": 1, "ReduceMean": 1, "Relu": 17}
    assert report.convs_folded == 20 and report.parity_rel_max_diff is not None
    assert report.parity_rel_max_diff <= 1e-4


def test_cli_optimize_prints_the_report(channels_last_onnx: tuple[Path, nn.Module], tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["optimize", str(channels_last_onnx[0]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:3] == [
        f"wrote {out}",
        "convs folded: 6 of 6",
        "nodes: 75 -> 16; removed 12 Add, 24 Cast, 6 Mul, 6 Sub, 11 Transpose",
    ]
    assert lines[3] == ("ops (before -> after): Add 14 -> 2, Cast 24 -> 0, Conv 6 -> 6, Gemm 1 -> 1, MaxPool 1 -> 1, "
                        "Mul 6 -> 0, ReduceMean 1 -> 1, Relu 5 -> 5, Sub 6 -> 0, Transpose 11 -> 0")
    assert lines[4:7] == ["pass onnxoptimizer eliminate_nop_cast: -24 Cast",
                          "pass resserve push_transposes: -11 Transpose",
                          "pass resserve fold_into_convs: -12 Add, -6 Mul, -6 Sub"]
    assert lines[7].startswith("parity: max|diff|/max|output| = ") and len(lines) == 8


def test_cli_optimize_json(channels_last_onnx: tuple[Path, nn.Module], tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["optimize", str(channels_last_onnx[0]), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["output"] == str(out) and doc["convs_folded"] == 6 and doc["unfolded"] == []
    assert doc["removed"] == {"Add": 12, "Cast": 24, "Mul": 6, "Sub": 6, "Transpose": 11}
    assert {(p["library"], p["name"]) for p in doc["passes"]} >= {("onnxoptimizer", "eliminate_nop_cast"),
                                                                  ("resserve", "push_transposes")}


def test_cli_require_folded_fails_naming_the_node(tmp_path: Path) -> None:
    # Conv -> Mul by an initializer that is also a graph input: overridable, so not a constant.
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(1, 2, (1, 4, 1, 1)).astype(np.float32), "gain")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="stem_conv", pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["c", "gain"], ["y"], name="stem_gain")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
         helper.make_tensor_value_info("gain", TensorProto.FLOAT, [1, 4, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], initializer=inits)
    src, out = tmp_path / "gain.onnx", tmp_path / "out.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(src))
    result = CliRunner().invoke(app, ["optimize", str(src), "-o", str(out), "--require-folded"])
    assert result.exit_code == 1 and not out.exists()
    assert ("Mul 'stem_gain' after Conv 'stem_conv': its operand 'gain' is not a constant"
            in " ".join(result.output.split()))
    assert CliRunner().invoke(app, ["optimize", str(src), "-o", str(out)]).exit_code == 0
