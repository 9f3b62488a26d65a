"""One real export shared by the integration tests (exports take seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resserve.builder.export import ExportReport, export_onnx
from resserve.models.weights import LoadedModel, load_model
from tests.model_repo_fixtures import tiny_classifier


@pytest.fixture(scope="session")
def resnet18_random() -> LoadedModel:
    return load_model("resnet18", random_weights=True, seed=0)


@pytest.fixture(scope="session")
def resnet18_onnx(resnet18_random: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return export_onnx(resnet18_random, tmp_path_factory.mktemp("export") / "resnet18.onnx")


@pytest.fixture(scope="session")
def model_onnx(resnet18_onnx: ExportReport) -> Path:
    """The exported ResNet-18 file that server tests use as their models' source."""
    return resnet18_onnx.path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real classifier (Conv, BatchNorm, Gemm; 10 classes): the file builds and runs in milliseconds."""
    return tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
