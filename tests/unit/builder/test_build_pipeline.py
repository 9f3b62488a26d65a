"""The build pipeline on real files: content-hash builds, staleness, staging, the random-weights fallback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

from resserve.builder.build_pipeline import BuildPipeline
from resserve.errors import ConfigError, ExportError, ModelNotFoundError
from resserve.metadata import read_metadata
from resserve.repository import ARTIFACT, BUILD_RECORD, ModelRepository
from tests.model_repo_fixtures import messages, tiny_classifier, write_config


# ---- builds -------------------------------------------------------------------------------------

def test_build_creates_a_version_with_artifact_and_record(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    assert repo.versions("tiny") == [] and builder.is_stale("tiny")
    said, say = messages()
    target = builder.build("tiny", progress=say)
    assert target == folder / "1"
    assert (target / ARTIFACT).is_file() and (target / BUILD_RECORD).is_file()
    assert any("building" in m for m in said) and any("built" in m for m in said)
    record = json.loads((target / BUILD_RECORD).read_text())
    assert record["content_hash"] == builder.content_hash(repo.config("tiny"))
    assert record["random_fallback"] is False
    assert record["config"]["max_batch_size"] == 8
    # The artifact is the folded graph: no BatchNormalization left, marked folded.
    artifact = onnx.load(str(target / ARTIFACT))
    assert "BatchNormalization" not in [n.op_type for n in artifact.graph.node]
    assert read_metadata(target / ARTIFACT).folded
    assert repo.versions("tiny") == ["1"] and not builder.is_stale("tiny")
    # Nothing but the version and the inputs: no staging folder left behind.
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.yaml", "source.onnx"]


def test_second_build_is_up_to_date_and_does_not_rebuild(repo_root: Path, onnx_model) -> None:
    onnx_model("tiny")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    target = builder.build("tiny")
    artifact, record = target / ARTIFACT, target / BUILD_RECORD
    stamps = (artifact.stat().st_mtime_ns, artifact.stat().st_ino, record.stat().st_mtime_ns)
    said, say = messages()
    assert builder.build("tiny", progress=say) == target
    assert said == [f"tiny: up to date ({target})"]
    assert (artifact.stat().st_mtime_ns, artifact.stat().st_ino, record.stat().st_mtime_ns) == stamps


def backdate(path: Path) -> int:
    """Set an old mtime so a rewrite is visible even on coarse file-system clocks."""
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    return path.stat().st_mtime_ns


def test_changing_the_config_makes_it_stale_and_rebuilds(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    target = builder.build("tiny")
    old_hash = json.loads((target / BUILD_RECORD).read_text())["content_hash"]
    old_mtime = backdate(target / ARTIFACT)
    write_config(folder, {"source": {"onnx": "source.onnx"}, "max_batch_size": 4})
    assert not builder.is_stale("tiny")  # a serving setting: read at load, no rebuild
    write_config(folder, {"source": {"onnx": "source.onnx", "seed": 3}, "max_batch_size": 4})
    assert builder.is_stale("tiny")
    said, say = messages()
    assert builder.build("tiny", progress=say) == target
    assert any("building" in m for m in said)
    assert (target / ARTIFACT).stat().st_mtime_ns != old_mtime
    record = json.loads((target / BUILD_RECORD).read_text())
    assert record["content_hash"] != old_hash and record["config"]["max_batch_size"] == 4
    assert not builder.is_stale("tiny")
    assert repo.versions("tiny") == ["1"]


def test_calibration_settings_rebuild_reduced_precision_models_only(repo_root: Path, onnx_model) -> None:
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    fp32 = repo.config(onnx_model("a").name)
    int8 = fp32.model_copy(update={"precision": "int8"})
    more_held_out = {"calibration": fp32.calibration.model_copy(update={"held_out": 800})}
    assert builder.content_hash(fp32.model_copy(update=more_held_out)) == builder.content_hash(fp32)
    assert builder.content_hash(int8.model_copy(update=more_held_out)) != builder.content_hash(int8)
    lower_floor = {"calibration": int8.calibration.model_copy(update={"min_top1_agreement": 0.5})}
    assert builder.content_hash(int8.model_copy(update=lower_floor)) == builder.content_hash(int8)  # a check, not an input


def test_comments_and_formatting_in_config_do_not_make_it_stale(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    builder.build("tiny")
    (folder / "config.yaml").write_text(
        "# same values, other spelling\nmax_batch_size:   8\nsource:\n  onnx: source.onnx\nengine: onnxruntime\n"
    )
    assert not builder.is_stale("tiny")


def test_changing_the_source_onnx_bytes_makes_it_stale(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny", seed=0)
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    target = builder.build("tiny")
    before = (target / ARTIFACT).read_bytes()
    tiny_classifier(folder / "source.onnx", seed=1)  # same config, other weights
    assert builder.is_stale("tiny")
    builder.build("tiny")
    assert (target / ARTIFACT).read_bytes() != before
    assert not builder.is_stale("tiny")


def test_force_rebuilds_an_up_to_date_model(repo_root: Path, onnx_model) -> None:
    onnx_model("tiny")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    target = builder.build("tiny")
    old_mtime = backdate(target / ARTIFACT)
    said, say = messages()
    builder.build("tiny", force=True, progress=say)
    assert any("building" in m for m in said)
    assert (target / ARTIFACT).stat().st_mtime_ns != old_mtime


@pytest.mark.parametrize("damage", ["delete", "garbage", "no_hash"])
def test_a_missing_or_damaged_build_record_makes_it_stale(repo_root: Path, onnx_model, damage: str) -> None:
    onnx_model("tiny")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    record = builder.build("tiny") / BUILD_RECORD
    if damage == "delete":
        record.unlink()
    elif damage == "garbage":
        record.write_text("{not json")
    else:
        record.write_text(json.dumps({"random_fallback": False}))
    assert builder.is_stale("tiny")
    builder.build("tiny")
    assert not builder.is_stale("tiny")


def test_missing_source_file_is_a_config_error_naming_it(repo_root: Path) -> None:
    write_config(repo_root / "tiny", {"source": {"onnx": "absent.onnx"}})
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    with pytest.raises(ConfigError, match="absent.onnx"):
        builder.build("tiny")
    assert sorted(p.name for p in (repo_root / "tiny").iterdir()) == ["config.yaml"]


def test_absolute_source_path_is_used_as_given(repo_root: Path, tmp_path: Path) -> None:
    source = tiny_classifier(tmp_path / "elsewhere" / "model.onnx")
    write_config(repo_root / "tiny", {"source": {"onnx": str(source)}})
    target = BuildPipeline(ModelRepository(repo_root)).build("tiny")
    assert (target / ARTIFACT).is_file()


def test_a_failing_build_leaves_no_version_and_no_staging(repo_root: Path) -> None:
    folder = repo_root / "tiny"
    write_config(folder, {"source": {"onnx": "source.onnx"}})
    (folder / "source.onnx").write_bytes(b"this is not an ONNX protobuf \x00\x01\x02" * 10)
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    with pytest.raises(ExportError, match="source.onnx"):
        builder.build("tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "source.onnx"]
    assert repo.versions("tiny") == [] and builder.is_stale("tiny")
    with pytest.raises(ModelNotFoundError, match="no built version"):
        repo.version("tiny")


def test_a_failing_rebuild_keeps_the_previous_version(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    target = builder.build("tiny")
    artifact = (target / ARTIFACT).read_bytes()
    record = (target / BUILD_RECORD).read_text()
    (folder / "source.onnx").write_bytes(b"garbage")
    assert builder.is_stale("tiny")
    with pytest.raises(ExportError):
        builder.build("tiny")
    assert (target / ARTIFACT).read_bytes() == artifact and (target / BUILD_RECORD).read_text() == record
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.yaml", "source.onnx"]
    assert repo.version("tiny").version == "1"


# ---- torchvision weights that cannot be downloaded: the random-weights fallback -----------------

def test_random_fallback_is_recorded_and_goes_stale_when_the_weights_appear(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    cache = tmp_path / "cache"
    hub = tmp_path / "hub"
    monkeypatch.setenv("RESSERVE_WEIGHTS_BASE_URL", "http://127.0.0.1:9/models")  # nothing listens there
    monkeypatch.setenv("RESSERVE_CACHE_DIR", str(cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    weights = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    write_config(repo_root / "r18", {"source": {"arch": "resnet18", "weights": weights, "fallback_random": True}})
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)

    target = builder.build("r18")

    record = json.loads((target / BUILD_RECORD).read_text())
    assert record["random_fallback"] is True
    metadata = repo.version("r18").metadata
    assert metadata.random_weights is True and metadata.weights_kind == "random" and metadata.arch == "resnet18"
    assert not list((cache / "weights").glob("*.part")), "a failed download must not leave partial files"
    # Still offline: the fallback is up to date, no rebuild at every start.
    assert not builder.is_stale("r18")

    # The weights file turns up in the hub cache, then in resserve's cache: time to rebuild.
    (hub / "checkpoints").mkdir(parents=True)
    hub_copy = hub / "checkpoints" / "resnet18-f37072fd.pth"
    hub_copy.write_bytes(b"placeholder: only its presence is checked here")
    assert builder.is_stale("r18")
    hub_copy.unlink()
    assert not builder.is_stale("r18")
    (cache / "weights").mkdir(parents=True, exist_ok=True)
    (cache / "weights" / "resnet18-f37072fd.pth").write_bytes(b"placeholder")
    assert builder.is_stale("r18")


def test_weights_without_fallback_fail_the_build_cleanly(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from resserve.errors import WeightsError

    monkeypatch.setenv("RESSERVE_WEIGHTS_BASE_URL", "http://127.0.0.1:9/models")
    monkeypatch.setenv("RESSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    write_config(repo_root / "r18", {"source": {"arch": "resnet18",
                                                "weights": "torchvision:ResNet18_Weights.IMAGENET1K_V1"}})
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    with pytest.raises(WeightsError, match="resnet18-f37072fd.pth"):
        builder.build("r18")
    assert sorted(p.name for p in (repo_root / "r18").iterdir()) == ["config.yaml"]


# ---- new versions (issue 32: a candidate beside the serving version) ---------------------------

def test_a_new_version_is_built_beside_the_old_ones_which_stay_untouched(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny", seed=0)
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    first = builder.build("tiny")
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    tiny_classifier(folder / "source.onnx", seed=1)  # new weights: the next release
    second = builder.build("tiny", new_version=True)
    assert second == folder / "2" and repo.versions("tiny") == ["1", "2"]
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()} == before  # version 1 as it was
    assert (second / ARTIFACT).read_bytes() != (first / ARTIFACT).read_bytes()  # the new weights
    assert not builder.is_stale("tiny")  # the newest version is the current source
    assert builder.build("tiny") == second  # up to date: a plain build changes nothing
    (folder / "7").mkdir()  # a number someone put there, built or not, is never reused
    assert builder.build("tiny", new_version=True) == folder / "8"
    assert not list(folder.glob(".tiny-build-*"))
