"""Markers from the folder a test lives in, and hardware gates with honest skip reasons."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
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


def _ours(handlers: list[logging.Handler]) -> list[logging.Handler]:
    """Handlers other than pytest's own capture handlers, which pytest adds and removes per phase."""
    return [h for h in handlers if not type(h).__module__.startswith("_pytest")]


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """The CLI's ``configure_logging`` points the root logger at the ``sys.stderr`` of the moment;
    under CliRunner that stream is closed when the call ends, and later tests' records would go to
    a closed file ("--- Logging error ---"). Each test leaves the loggers it changed as it found them."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {name: (_ours(logging.getLogger(name).handlers), logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        pytests = [h for h in logger.handlers if h not in _ours(logger.handlers)]
        logger.handlers[:] = [*handlers, *pytests]
        logger.setLevel(level)
        logger.propagate = propagate
