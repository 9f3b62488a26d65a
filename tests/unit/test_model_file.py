"""``--model-file``'s one-model repository: written only into this user's own folders, never
through a link (the attack, issue 30: a fixed ``$TMPDIR/resserve-repo`` that someone else made, with
``config.yaml`` a link to another file, which the server overwrote)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from resserve.errors import ConfigError
from resserve.model_file import default_work_dir, one_model_repository
from tests.model_repo_fixtures import tiny_classifier


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return tiny_classifier(tmp_path / "source" / "model.onnx")


def test_the_repository_is_written_into_a_private_folder(onnx_file: Path, tmp_path: Path) -> None:
    root = one_model_repository(onnx_file, "resnet", tmp_path / "work")
    config = yaml.safe_load((root / "resnet" / "config.yaml").read_text())
    assert config["source"]["onnx"] == str(onnx_file.resolve())
    assert (root.stat().st_mode & 0o777) == 0o700 and ((root / "resnet").stat().st_mode & 0o777) == 0o700
    assert default_work_dir().name == f"resserve-repo-{os.getuid()}"


def test_a_link_planted_as_the_config_is_refused_and_its_target_untouched(onnx_file: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "work" / "resnet"
    folder.mkdir(parents=True, mode=0o700)
    (tmp_path / "work").chmod(0o700)
    (folder / "config.yaml").symlink_to(victim)
    with pytest.raises(ConfigError, match="a link there is refused"):
        one_model_repository(onnx_file, "resnet", tmp_path / "work")
    assert victim.read_text() == "precious"


def test_a_linked_or_shared_work_folder_is_refused(onnx_file: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "linked").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="is a link or not a folder"):
        one_model_repository(onnx_file, "resnet", tmp_path / "linked")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by others"):
        one_model_repository(onnx_file, "resnet", shared)


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user's needs root")
def test_a_work_folder_of_another_user_is_refused(onnx_file: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    with pytest.raises(ConfigError, match="belongs to another user"):
        one_model_repository(onnx_file, "resnet", theirs)
