"""The model repository on real files: discovery, content-hash builds, versions, labels, contracts."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from resserve.build.pipeline import BuildPipeline
from resserve.contract import PreprocessContract, imagenet_contract
from resserve.errors import ConfigError, ExportError, ModelNotFoundError
from resserve.metadata import ModelMetadata, read_metadata
from resserve.repository import ARTIFACT, BUILD_RECORD, ModelRepository

NUM_CLASSES = 10


def tiny_classifier(path: Path, seed: int = 0, props: dict[str, str] | None = None) -> Path:
    """A valid image classifier in ONNX: Conv -> BatchNorm -> Relu -> GAP -> Flatten -> Gemm.

    Input ``input`` (N, 3, 224, 224) with a dynamic batch, output ``logits`` (N, 10); the folding
    pass removes its BatchNorm and checks parity in well under a second.
    """
    rng = np.random.default_rng(seed)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    initializers = [
        init("conv_w", rng.standard_normal((4, 3, 3, 3)) * 0.5),
        init("conv_b", rng.standard_normal(4)),
        init("bn_scale", rng.uniform(0.5, 1.5, 4)),
        init("bn_bias", rng.standard_normal(4)),
        init("bn_mean", rng.standard_normal(4) * 0.1),
        init("bn_var", rng.uniform(0.5, 1.5, 4)),
        init("fc_w", rng.standard_normal((NUM_CLASSES, 4))),
        init("fc_b", rng.standard_normal(NUM_CLASSES)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["conv", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    if props:
        helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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


def messages() -> tuple[list[str], Callable[[str], None]]:
    said: list[str] = []
    return said, said.append


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
