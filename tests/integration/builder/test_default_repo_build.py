"""The shipped repository builds completely on a fresh machine and every variant serves.

Slow (about 3-4 minutes on 2 cores: three exports, NNCF and ONNX Runtime calibration, accuracy
reports): run with `make test-slow` or RESSERVE_SLOW=1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from resserve.builder.build_pipeline import BuildPipeline
from resserve.config import ServerSettings
from resserve.repository import ModelRepository
from tests.server_harness import jpeg, serve_in_thread

SHIPPED = Path(__file__).parents[3] / "model_repo"


@pytest.mark.slow
def test_every_shipped_variant_builds_reports_accuracy_and_serves(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RESSERVE_WEIGHTS_BASE_URL", "http://127.0.0.1:9/models")  # offline, as CI is
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # timm's weights: offline too
    root = tmp_path / "model_repo"
    root.mkdir()
    for config in SHIPPED.glob("*/config.yaml"):
        (root / config.parent.name).mkdir()
        shutil.copy(config, root / config.parent.name / "config.yaml")
    repository = ModelRepository(root)
    builder = BuildPipeline(repository)
    for name in repository.names():
        builder.build(name)
        version = repository.version(name)
        assert version.artifact.is_file()
        if not version.variant.is_reference:
            report = version.accuracy
            assert report is not None and report.top1_agreement >= version.config.calibration.min_top1_agreement
    with serve_in_thread(ServerSettings(model_repo=root, build_missing=False), start_timeout_s=300) as server:
        for name in repository.names():
            response = httpx.post(f"{server.url}/v2/models/{name}/classify", content=jpeg(),
                                  headers={"content-type": "image/jpeg"}, timeout=60)
            assert response.status_code == 200, (name, response.text)
            assert response.json()["random_weights"] is True
