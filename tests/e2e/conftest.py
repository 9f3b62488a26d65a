"""The ResNet-18 ONNX file the end-to-end tests serve; each test runs its ``resserve serve`` on
127.0.0.1 with ``resserve.perf.server_process.server_process``."""

from __future__ import annotations

from pathlib import Path

import pytest

from resserve.builder.export import export_onnx
from resserve.models.weights import load_model


@pytest.fixture(scope="session")
def model_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e_export") / "resnet18.onnx"
    export_onnx(load_model("resnet18", random_weights=True, seed=0), path)
    return path
