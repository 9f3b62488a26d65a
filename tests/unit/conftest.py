"""Fixtures for the model-repository and build-pipeline tests: a repository root and tiny models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.model_repo_fixtures import tiny_classifier, write_config


@pytest.fixture
def repo_root(tmp_path: Path) -> Path:
    root = tmp_path / "model_repo"
    root.mkdir()
    return root


@pytest.fixture
def onnx_model(repo_root: Path) -> Callable[..., Path]:
    """Make ``<root>/<name>`` with a tiny source.onnx in the folder and a config naming it (relative)."""

    def make(folder_name: str = "tiny", seed: int = 0, props: dict[str, str] | None = None, **config) -> Path:
        folder = repo_root / folder_name
        tiny_classifier(folder / "source.onnx", seed=seed, props=props)
        write_config(folder, {"source": {"onnx": "source.onnx"}, "max_batch_size": 8, **config})
        return folder

    return make
