"""Exported ONNX files: folded, checked, annotated, dynamic in batch, and equal to the torch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resserve.builder.export import ExportReport, export_onnx
from resserve.builder.logit_parity import compare_logits
from resserve.errors import ExportError
from resserve.metadata import read_metadata
from resserve.models.resnet import build_resnet
from resserve.models.weights import LoadedModel, load_model
from resserve.synthetic import synthetic_batch

PARITY_RTOL = 1e-4  # max |onnx - torch| / max |torch logit|, as the issue states


def test_graph_is_folded_checked_and_opset_17_or_newer(resnet18_onnx: ExportReport) -> None:
    model = onnx.load(str(resnet18_onnx.path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == 20 and resnet18_onnx.folds == 20
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch


def test_metadata_records_provenance_and_contract(resnet18_onnx: ExportReport) -> None:
    meta = read_metadata(resnet18_onnx.path)
    assert meta.arch == "resnet18" and meta.num_classes == 1000
    assert meta.folded and meta.random_weights and meta.weights_kind == "random"
    assert "seed 0" in meta.weights_source
    assert meta.preprocess is not None
    assert (meta.preprocess.resize_size, meta.preprocess.crop_size, meta.preprocess.interpolation) == (
        256, 224, "bilinear")
    assert meta.preprocess.mean == (0.485, 0.456, 0.406) and meta.preprocess.layout == "NCHW"
    assert meta.labels_name == "imagenet-1k" and meta.labels and meta.labels[0] == "tench"
    assert meta.resserve_version and meta.parity
    assert all(v <= PARITY_RTOL for v in meta.parity.values())


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_torch_at_any_batch(resnet18_onnx: ExportReport, resnet18_random: LoadedModel,
                                                batch: int) -> None:
    session = ort.InferenceSession(str(resnet18_onnx.path), providers=["CPUExecutionProvider"])
    for name, x in {
        "image": synthetic_batch(batch, 224, seed=100 + batch),
        "random": np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32),
    }.items():
        (got,) = session.run(None, {"input": x})
        with torch.no_grad():
            want = resnet18_random.model(torch.from_numpy(x)).numpy()
        result = compare_logits(name, want, got, rtol=PARITY_RTOL)
        assert result.top5_equal


def test_file_weights_record_sha256_and_custom_labels(tmp_path: Path) -> None:
    torch.manual_seed(1)
    torch.save(build_resnet("resnet18", num_classes=3).state_dict(), tmp_path / "ft.pth")
    loaded = load_model("resnet18", tmp_path / "ft.pth")
    report = export_onnx(loaded, tmp_path / "ft.onnx", labels=["cat", "dog", "bird"])
    meta = read_metadata(report.path)
    assert meta.weights_kind == "file" and meta.weights_sha256 and len(meta.weights_sha256) == 64
    assert meta.labels == ["cat", "dog", "bird"] and meta.labels_name == "custom"
    assert not meta.random_weights


def test_label_count_must_match_the_head(resnet18_random: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="2 labels given for a model with 1000 classes"):
        export_onnx(resnet18_random, tmp_path / "x.onnx", labels=["a", "b"])


def test_old_opset_is_refused(resnet18_random: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_onnx(resnet18_random, tmp_path / "x.onnx", opset=13)
