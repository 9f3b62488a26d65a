"""Reduced-precision variants through the whole product: build with calibration and an accuracy
report, describe, serve and classify, and the benchmark matrix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from resserve.perf.bench_matrix import bench_variants, markdown
from resserve.builder.build_pipeline import BuildPipeline
from resserve.cli import app
from resserve.config import ServerSettings
from resserve.engines.select import resolve_engine
from resserve.repository import ModelRepository
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

pytest.importorskip("openvino", reason="OpenVINO is a runtime dependency on Intel CPUs")

SMALL_CALIBRATION = {"count": 32, "held_out": 32, "min_top1_agreement": 0.9}
VARIANTS = {
    "r18-int8": {"engine": "auto", "precision": "int8"},
    "r18-int8-onnxruntime": {"engine": "onnxruntime", "precision": "int8"},
    "r18-fp32-openvino": {"engine": "openvino", "precision": "fp32"},
}


@pytest.fixture(scope="module")
def repo(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("variants")
    write_model(root, "r18", model_onnx)
    for name, settings in VARIANTS.items():
        write_model(root, name, model_onnx, calibration=SMALL_CALIBRATION, **settings)
    repository = ModelRepository(root)
    builder = BuildPipeline(repository)
    for name in repository.names():
        builder.build(name)
    return repository


def test_builds_write_engine_artifacts_and_accuracy_reports(repo: ModelRepository) -> None:
    auto_engine, _why = resolve_engine("auto", "int8")
    for name in VARIANTS:
        version = repo.version(name)
        assert version.artifact.is_file() and version.reference.is_file()
        report = version.accuracy
        assert report is not None and report.images == 32
        assert report.top1_agreement >= 0.9 and report.cosine_mean >= 0.98, report.summary()
        record = json.loads((version.folder / "build.json").read_text())
        assert record["accuracy"]["top1_agreement"] == report.top1_agreement
    assert repo.version("r18-int8").variant.engine == auto_engine
    assert repo.version("r18-int8-onnxruntime").artifact.name == "model.int8.onnx"
    assert repo.version("r18-fp32-openvino").accuracy.top1_agreement == 1.0  # type: ignore[union-attr]
    assert repo.version("r18").accuracy is None  # the reference itself


def test_describe_shows_engine_precision_and_accuracy(repo: ModelRepository) -> None:
    result = CliRunner().invoke(app, ["describe", str(repo.root / "r18-int8")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["precision"] == "int8" and doc["accuracy"]["images"] == 32 and doc["folded"] is True


@pytest.fixture(scope="module")
def server(repo: ModelRepository) -> Iterator[RunningServer]:
    with serve_in_thread(ServerSettings(model_repo=repo.root, build_missing=False)) as running:
        yield running


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_serves_and_agrees_with_fp32_on_top1(server: RunningServer, name: str) -> None:
    def top1(model: str, seed: int) -> int:
        response = httpx.post(f"{server.url}/v2/models/{model}/classify", content=jpeg(seed=seed),
                              headers={"content-type": "image/jpeg"}, params={"top_k": 1}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["results"][0]["predictions"][0]["index"]

    agree = sum(top1(name, seed) == top1("r18", seed) for seed in range(8))
    assert agree >= 7
    meta = httpx.get(f"{server.url}/v2/models/{name}").json()["resserve"]
    assert meta["engine"]["engine"] == server.app.state.resserve.manager.get(name).engines[0].name


def test_bench_matrix_covers_every_variant(repo: ModelRepository, tmp_path: Path) -> None:
    results = bench_variants(repo, ["r18", "r18-int8"], [1, 2], rounds=1, round_s=0.05, build=False)
    table = markdown(results)
    assert [(r.model, r.precision) for r in results] == [("r18", "fp32"), ("r18-int8", "int8")]
    assert table.count("\n| r18 |") == 2 and table.count("\n| r18-int8 |") == 2
    assert all(b.images_per_s > 0 for r in results for b in r.results)
    assert results[1].accuracy and results[1].accuracy["images"] == 32
