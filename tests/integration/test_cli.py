"""The ``resserve`` command end to end, in process: export, describe, optimize, bench engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resserve.builder.export import ExportReport
from resserve.builder.build_pipeline import BuildPipeline
from resserve.cli import app
from resserve.metadata import read_metadata

runner = CliRunner()


def test_export_with_fallback_records_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RESSERVE_WEIGHTS_BASE_URL", "http://127.0.0.1:9/models")  # refused: offline
    out = tmp_path / "r18.onnx"
    result = runner.invoke(app, ["export", "resnet18", "--weights", "torchvision:ResNet18_Weights.IMAGENET1K_V1",
                                 "--fallback-random", "--seed", "3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "20 BatchNorms folded" in result.output
    meta = read_metadata(out)
    assert meta.random_weights and "seed 3" in meta.weights_source


def test_export_without_fallback_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RESSERVE_WEIGHTS_BASE_URL", "http://127.0.0.1:9/models")
    result = runner.invoke(app, ["export", "resnet18", "--weights", "torchvision:ResNet18_Weights.IMAGENET1K_V1",
                                 "--output", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1
    assert "resnet18-f37072fd.pth" in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_describe(resnet18_onnx: ExportReport) -> None:
    result = runner.invoke(app, ["describe", str(resnet18_onnx.path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["arch"] == "resnet18" and doc["folded"] is True and doc["labels"] == "1000 labels"


def test_bench_engine_writes_json(resnet18_onnx: ExportReport, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "engine", str(resnet18_onnx.path), "--batch-sizes", "1,2",
                                 "--rounds", "2", "--round-seconds", "0.05", "--provider", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert [r["batch_size"] for r in doc["results"]] == [1, 2]
    for r in doc["results"]:
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["calls"] >= 4  # 2 rounds x at least 2 calls
        assert 0 < r["latency_ms"]["p50_ms"] <= r["latency_ms"]["p99_ms"]
    assert doc["engine"]["provider"] == "cpu" and doc["environment"]["onnxruntime"]


def test_bench_rejects_bad_batch_sizes(resnet18_onnx: ExportReport) -> None:
    result = runner.invoke(app, ["bench", "engine", str(resnet18_onnx.path), "--batch-sizes", "1,x"])
    assert result.exit_code == 2
    assert "comma-separated integers" in result.output


def test_bench_missing_provider_is_reported(resnet18_onnx: ExportReport) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider installed here")
    result = runner.invoke(app, ["bench", "engine", str(resnet18_onnx.path), "--provider", "cuda"])
    assert result.exit_code == 1 and "CUDAExecutionProvider is not available" in result.output


def test_unknown_arch(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "resnet19", "--random-weights", "--output", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "unknown architecture 'resnet19'" in result.output


def test_wait_models_returns_once_every_model_is_built(model_onnx: Path, tmp_path: Path) -> None:
    from resserve.repository import ModelRepository
    from tests.server_harness import write_model

    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    result = runner.invoke(app, ["wait-models", str(repo), "--timeout-s", "0.3", "--interval-s", "0.1"])
    assert result.exit_code == 1 and "still not built" in result.output and "r18" in result.output
    BuildPipeline(ModelRepository(repo)).build("r18")
    result = runner.invoke(app, ["wait-models", str(repo), "--timeout-s", "5", "--interval-s", "0.1"])
    assert result.exit_code == 0 and "built: r18" in result.output


def test_build_new_version_leaves_the_served_version_as_it_is(tmp_path: Path) -> None:
    """``resserve build REPO --model M --new-version``: the next number, older versions untouched."""
    from tests.model_repo_fixtures import tiny_classifier, write_config

    repo = tmp_path / "repo"
    tiny_classifier(repo / "tiny" / "source.onnx")
    write_config(repo / "tiny", {"source": {"onnx": "source.onnx"}, "max_batch_size": 4})
    assert runner.invoke(app, ["build", str(repo)]).exit_code == 0
    first = (repo / "tiny" / "1" / "model.onnx").read_bytes()
    result = runner.invoke(app, ["build", str(repo), "--model", "tiny", "--new-version"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (repo / "tiny").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert (repo / "tiny" / "1" / "model.onnx").read_bytes() == first
    refused = runner.invoke(app, ["build", str(repo), "--new-version", "--events"])
    assert refused.exit_code != 0 and "--new-version" in refused.output
