"""Markers from the folder a test lives in, and hardware gates with honest skip reasons."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
FOLDER_MARKERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "e2e": pytest.mark.e2e}


def _has_cuda() -> tuple[bool, str]:
    """An NVIDIA GPU is usable; which library reaches it (torch, onnxruntime-gpu) each test checks."""
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU (nvidia-smi not found)"
    return True, ""


def _has_tensorrt() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "TensorRT Python package is not installed (pip install tensorrt on a GPU machine)"
    return _has_cuda()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda_ok, cuda_why = _has_cuda()
    trt_ok, trt_why = _has_tensorrt()
    run_slow = os.environ.get("RESSERVE_SLOW") == "1"
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])
        if item.get_closest_marker("gpu") and not cuda_ok:
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {cuda_why}"))
        if item.get_closest_marker("tensorrt") and not trt_ok:
            item.add_marker(pytest.mark.skip(reason=f"tensorrt test: {trt_why}"))
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: set RESSERVE_SLOW=1 to run"))
