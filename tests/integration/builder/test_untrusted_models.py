"""Untrusted model files: ONNX external data must stay inside the model's folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resserve.builder.build_pipeline import BuildPipeline
from resserve.errors import ExportError
from resserve.repository import ModelRepository


def _model_with_external_weights(folder: Path, name: str = "source.onnx") -> Path:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    (folder / "config.yaml").write_text(f"source: {{onnx: {name}}}\n")
    return path


def _point_external_data_at(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.bin"
    path.write_bytes(np.full((4, 4), 7, np.float32).tobytes())
    return path


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, secret: Path) -> None:
    repo = tmp_path / "repo"
    source = _model_with_external_weights(repo / "evil")
    _point_external_data_at(source, os.path.relpath(secret, source.parent))
    with pytest.raises(ExportError, match="outside the directory"):
        BuildPipeline(ModelRepository(repo)).build("evil")
    assert ModelRepository(repo).versions("evil") == []


def test_external_data_through_a_symlink_is_refused(tmp_path: Path, secret: Path) -> None:
    repo = tmp_path / "repo"
    source = _model_with_external_weights(repo / "sym")
    (source.parent / "w.bin").unlink()
    (source.parent / "w.bin").symlink_to(secret)
    with pytest.raises(ExportError, match="symbolic link"):
        BuildPipeline(ModelRepository(repo)).build("sym")


def test_external_data_inside_the_folder_builds(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _model_with_external_weights(repo / "fine")
    folder = BuildPipeline(ModelRepository(repo)).build("fine")
    assert (folder / "model.onnx").is_file()
