"""``resserve optimize`` on real ResNet graphs that still carry BatchNorm: a third-party export."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from resserve.builder.onnx_fold import optimize_onnx
from resserve.builder.logit_parity import compare_logits
from resserve.cli import app
from resserve.metadata import read_metadata
from resserve.models.weights import LoadedModel
from resserve.synthetic import synthetic_batch


@pytest.fixture(scope="module")
def unfolded_onnx(resnet18_random: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18 exported the way older tools do it: BatchNormalization nodes kept, and equal
    initializers deduplicated through Identity nodes (TorchScript exporter, training=PRESERVE)."""
    path = tmp_path_factory.mktemp("third_party") / "resnet18_bn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(resnet18_random.model.eval(), (torch.randn(1, 3, 224, 224),), str(path),
                          input_names=["data"], output_names=["prob"], opset_version=17, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, dynamic_axes={"data": {0: "n"}})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("BatchNormalization") == 20, "the fixture must really contain BatchNorm"
    return path


def test_optimize_folds_every_batchnorm_with_parity(unfolded_onnx: Path, tmp_path: Path,
                                                     resnet18_random: LoadedModel) -> None:
    out = tmp_path / "folded.onnx"
    report = optimize_onnx(unfolded_onnx, out, require_folded=True)
    assert report.removed == {"BatchNormalization": 20} and report.convs_folded == 20
    assert not report.unfolded
    model = onnx.load(str(out))
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert read_metadata(out).folded
    x = synthetic_batch(3, 224, seed=11)
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    with torch.no_grad():
        want = resnet18_random.model(torch.from_numpy(x)).numpy()
    compare_logits("optimized third-party graph", want, got, rtol=1e-4)


def test_cli_optimize(unfolded_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["optimize", str(unfolded_onnx), "--output", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1:3] == ["convs folded: 20 of 20", "nodes: 69 -> 49; removed 20 BatchNormalization"]
    assert "pass resserve fold_into_convs: -20 BatchNormalization" in lines
    assert not [n for n in onnx.load(str(out)).graph.node if n.op_type in ("BatchNormalization", "Identity")]


def test_cli_optimize_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    result = CliRunner().invoke(app, ["optimize", str(bad), "--output", str(tmp_path / "o.onnx")])
    assert result.exit_code == 1 and "cannot read" in result.output
