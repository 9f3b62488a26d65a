"""``gpu_decode: true`` where there is no GPU: the model fails to load with the reason, the others
serve. On a GPU machine tests/gpu/test_gpu_preprocess_cuda.py serves it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import httpx
import pytest
import yaml

from resserve.builder.build_pipeline import BuildPipeline
from resserve.config import ServerSettings
from resserve.repository import ModelRepository
from tests.server_harness import jpeg, serve_in_thread, write_model


def _gpu_decode_possible() -> bool:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_gpu_decode_possible(), reason="this machine can decode on the GPU: the model would load")
def test_a_gpu_decode_model_fails_alone_with_the_reason(model_onnx: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write_model(root, "good", model_onnx)
    BuildPipeline(ModelRepository(root)).build("good")
    write_model(root, "nvjpeg", model_onnx, gpu_decode=True)
    shutil.copytree(root / "good" / "1", root / "nvjpeg" / "1")  # gpu_decode is read at load: no rebuild
    assert not BuildPipeline(ModelRepository(root)).is_stale("nvjpeg")
    assert yaml.safe_load((root / "nvjpeg" / "config.yaml").read_text())["gpu_decode"] is True
    with serve_in_thread(ServerSettings(model_repo=root), wait_for="/v2/models/good/ready") as server:
        ok = httpx.post(f"{server.url}/v2/models/good/classify", content=jpeg(),
                        headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert ok.status_code == 200
        why = httpx.get(f"{server.url}/v2/health/ready").json()["error"]
        assert "model nvjpeg failed to load: EngineUnavailableError" in why
        # Why, in words an operator can act on: no torch, no CUDA device, or no torchvision.
        assert any(reason in why for reason in ("needs torch", "sees no CUDA GPU", "needs torchvision")), why
        refused = httpx.post(f"{server.url}/v2/models/nvjpeg/classify", content=jpeg(),
                             headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert refused.status_code == 503
