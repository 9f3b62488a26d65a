"""The GPU tests' shared ResNet-18 ONNX file.

The TensorRT, ONNX Runtime GPU and CUDA tests must pass with the GPU image's own dependencies,
which have no torch: ``make gpu-check`` exports the file once with torch and runs those tests in
a child where torch cannot be imported, naming the file in ``RESSERVE_GPU_TEST_ONNX``. Run
directly, the fixture exports it itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ONNX_VARIABLE = "RESSERVE_GPU_TEST_ONNX"


@pytest.fixture(scope="session")
def resnet18_onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(ONNX_VARIABLE)
    if given:
        return Path(given)
    from resserve.builder.export import export_onnx  # torch, only where no file was given
    from resserve.models.weights import load_model

    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    export_onnx(load_model("resnet18", random_weights=True, seed=0), path)
    return path
