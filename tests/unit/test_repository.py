"""The model repository on real files: discovery, names, versions, labels, contracts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from resserve.builder.build_pipeline import BuildPipeline
from resserve.contract import PreprocessContract, imagenet_contract
from resserve.config import ModelConfig
from resserve.errors import ConfigError, ModelNotFoundError
from resserve.metadata import ModelMetadata
from resserve.repository import ARTIFACT, BUILD_RECORD, ModelRepository
from tests.model_repo_fixtures import NUM_CLASSES, write_config


# ---- discovery and names ---------------------------------------------------------------------------

def test_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        ModelRepository(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        ModelRepository(tmp_path / "file")


def test_names_lists_folders_with_a_config_sorted(repo_root: Path, onnx_model) -> None:
    onnx_model("zeta")
    onnx_model("alpha")
    (repo_root / "no_config").mkdir()
    (repo_root / "no_config" / "model.onnx").write_bytes(b"")
    (repo_root / "README.md").write_text("not a model")
    (repo_root / "nested" / "deeper").mkdir(parents=True)
    write_config(repo_root / "nested" / "deeper", {"source": {"onnx": "x.onnx"}})
    assert ModelRepository(repo_root).names() == ["alpha", "zeta"]
    assert ModelRepository(repo_root / "no_config").names() == []


def test_names_are_read_once_until_refreshed(repo_root: Path, onnx_model) -> None:
    """Every request that names a model asks whether it exists: the folder is globbed once, again
    only when repository control refreshes it, not per request (0.28 ms a call, issue 30)."""
    onnx_model("alpha")
    repository = ModelRepository(repo_root)
    assert repository.names() == ["alpha"] and repository.has("alpha") and not repository.has("beta")
    onnx_model("beta")
    assert repository.names() == ["alpha"] and not repository.has("beta")
    repository.refresh()
    assert repository.names() == ["alpha", "beta"] and repository.has("beta")


def test_config_name_defaults_to_the_folder(repo_root: Path, onnx_model) -> None:
    onnx_model("my-model.v1")
    config = ModelRepository(repo_root).config("my-model.v1")
    assert config.name == "my-model.v1" and config.source.onnx == "source.onnx"


def test_config_name_that_differs_from_the_folder_is_rejected(repo_root: Path, onnx_model) -> None:
    # Everything (relative source paths, the served name, the control index) is keyed by the
    # folder; a different `name:` would split them, so it must match, as in Triton.
    onnx_model("tiny", name="other")
    repo = ModelRepository(repo_root)
    with pytest.raises(ConfigError, match="other") as info:
        repo.config("tiny")
    assert str(repo_root / "tiny" / "config.yaml") in str(info.value)
    onnx_model("same", name="same")
    assert repo.config("same").name == "same"


@pytest.mark.parametrize("name", ["nope", "../outside", "..", ".", "", "tiny/..", "tiny/../outside", "/etc",
                                  "..\\outside"])
def test_unknown_and_traversal_names_are_not_found(repo_root: Path, tmp_path: Path, onnx_model,
                                                   name: str) -> None:
    onnx_model("tiny")
    # A perfectly valid model right outside the repository must stay unreachable.
    write_config(tmp_path / "outside", {"source": {"onnx": "source.onnx"}})
    write_config(tmp_path, {"source": {"onnx": "source.onnx"}})  # <root>/../config.yaml
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    with pytest.raises(ModelNotFoundError):
        repo.config(name)
    with pytest.raises(ModelNotFoundError):
        builder.build(name)
    with pytest.raises(ModelNotFoundError):
        repo.version(name)
    with pytest.raises(ModelNotFoundError):
        builder.is_stale(name)


def test_a_broken_config_is_a_config_error_not_a_missing_model(repo_root: Path) -> None:
    write_config(repo_root / "broken", {"source": {"onnx": "a.onnx"}, "max_batch_size": 0})
    with pytest.raises(ConfigError, match="max_batch_size"):
        ModelRepository(repo_root).config("broken")


# ---- versions -----------------------------------------------------------------------------------

def test_version_picks_the_newest_numeric_folder_with_an_artifact(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    built = builder.build("tiny")
    for name in ("2", "10", "latest", ".tiny-build-leftover"):
        shutil.copytree(built, folder / name)
    (folder / "11").mkdir()  # a numeric folder without model.onnx is not a version
    (folder / "11" / BUILD_RECORD).write_text("{}")
    (folder / "12").write_text("a file, not a folder")
    assert repo.versions("tiny") == ["1", "2", "10"]  # numeric order, not "10" < "2"
    newest = repo.version("tiny")
    assert newest.version == "10" and newest.folder == folder / "10" and newest.artifact == folder / "10" / ARTIFACT
    assert newest.config.name == "tiny" and newest.metadata.folded
    assert repo.version("tiny", "2").folder == folder / "2"
    for missing in ("11", "12", "3", "latest"):
        with pytest.raises(ModelNotFoundError, match="no version"):
            repo.version("tiny", missing)
    # A build goes to the newest version, in place.
    assert builder.build("tiny", force=True) == folder / "10"


def test_version_of_an_unbuilt_model_is_not_found(repo_root: Path, onnx_model) -> None:
    onnx_model("tiny")
    with pytest.raises(ModelNotFoundError, match="no built version"):
        ModelRepository(repo_root).version("tiny")


# ---- labels -------------------------------------------------------------------------------------

def test_labels_from_the_config_file(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny", labels="labels.txt")
    names = [f"thing {i}" for i in range(NUM_CLASSES)]
    (folder / "labels.txt").write_text("\n".join(names) + "\n\n")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    builder.build("tiny")
    assert repo.version("tiny").labels(NUM_CLASSES) == names


def test_label_file_with_the_wrong_count_is_a_config_error(repo_root: Path, onnx_model) -> None:
    folder = onnx_model("tiny", labels="labels.txt")
    (folder / "labels.txt").write_text("\n".join(f"c{i}" for i in range(NUM_CLASSES - 1)))
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    builder.build("tiny")
    with pytest.raises(ConfigError, match=f"9 labels for {NUM_CLASSES} classes"):
        repo.version("tiny").labels(NUM_CLASSES)


def test_missing_label_file_is_a_config_error(repo_root: Path, onnx_model) -> None:
    onnx_model("tiny", labels="labels.txt")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    builder.build("tiny")
    with pytest.raises(ConfigError, match="labels.txt"):
        repo.version("tiny").labels(NUM_CLASSES)


def test_a_label_file_outside_the_model_folder_is_refused(repo_root: Path, onnx_model, tmp_path: Path) -> None:
    """labels: took absolute and ../ paths (issue 30): any file the server can read, served as labels."""
    secret = tmp_path / "secret.txt"
    secret.write_text("\n".join(f"s{i}" for i in range(NUM_CLASSES)))
    for bad in (str(secret), "../../secret.txt"):
        with pytest.raises(ValidationError, match="labels must be a file inside the model folder"):
            ModelConfig.model_validate({"name": "m", "source": {"onnx": "m.onnx"}, "labels": bad})
    folder = onnx_model("tiny", labels="labels.txt")
    (folder / "labels.txt").symlink_to(secret)  # a link inside that leads out
    repo = ModelRepository(repo_root)
    BuildPipeline(repo).build("tiny")
    with pytest.raises(ConfigError, match="leads outside the model's folder"):
        repo.version("tiny").labels(NUM_CLASSES)


def test_labels_recorded_in_the_model_then_defaults(repo_root: Path, onnx_model) -> None:
    recorded = [f"recorded {i}" for i in range(NUM_CLASSES)]
    onnx_model("with_labels", props=ModelMetadata(labels=recorded, num_classes=NUM_CLASSES).to_props())
    onnx_model("plain")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    builder.build("with_labels")
    builder.build("plain")
    assert repo.version("with_labels").labels(NUM_CLASSES) == recorded
    assert repo.version("plain").labels(NUM_CLASSES) == [f"class_{i}" for i in range(NUM_CLASSES)]
    with pytest.raises(ConfigError, match="10 labels for 5 classes"):
        repo.version("with_labels").labels(5)


def test_config_labels_beat_recorded_labels(repo_root: Path, onnx_model) -> None:
    recorded = [f"recorded {i}" for i in range(NUM_CLASSES)]
    folder = onnx_model("tiny", labels="mine.txt", props=ModelMetadata(labels=recorded).to_props())
    (folder / "mine.txt").write_text("\n".join(f"mine {i}" for i in range(NUM_CLASSES)))
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    builder.build("tiny")
    assert repo.version("tiny").labels(NUM_CLASSES)[0] == "mine 0"


# ---- the preprocessing contract -----------------------------------------------------------------

def test_contract_precedence_config_then_metadata_then_default(repo_root: Path, onnx_model) -> None:
    recorded = PreprocessContract(resize_size=232, crop_size=224, interpolation="bicubic")
    props = ModelMetadata(preprocess=recorded).to_props()
    onnx_model("config_wins", props=props, preprocess={"resize_size": 300, "crop_size": 224, "color_order": "BGR"})
    onnx_model("metadata", props=props)
    onnx_model("default")
    repo = ModelRepository(repo_root)
    builder = BuildPipeline(repo)
    for name in ("config_wins", "metadata", "default"):
        builder.build(name)
    assert repo.version("config_wins").contract == PreprocessContract(resize_size=300, crop_size=224,
                                                                      color_order="BGR")
    assert repo.version("metadata").metadata.preprocess == recorded
    assert repo.version("metadata").contract == recorded
    assert repo.version("default").metadata.preprocess is None
    assert repo.version("default").contract == imagenet_contract()


def test_without_build_json_an_auto_engine_version_is_refused_not_guessed(tmp_path: Path) -> None:
    """engine auto resolves per machine: without build.json the catalog cannot know what was built."""
    from tests.model_repo_fixtures import tiny_classifier

    write_config(tmp_path / "auto", {"source": {"onnx": "x.onnx"}, "engine": "auto", "precision": "int8"})
    tiny_classifier(tmp_path / "auto" / "1" / "model.onnx")
    write_config(tmp_path / "plain", {"source": {"onnx": "x.onnx"}, "engine": "onnxruntime"})
    tiny_classifier(tmp_path / "plain" / "1" / "model.onnx")
    repository = ModelRepository(tmp_path)
    with pytest.raises(ConfigError, match="no readable build.json says which engine built it"):
        repository.version("auto")
    assert repository.version("plain").variant.name == "onnxruntime-fp32"
