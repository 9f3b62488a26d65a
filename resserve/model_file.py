"""Serve one ONNX file as a one-model repository: what KServe's ``onnx`` model format hands over.

KServe's storage initializer puts the model at ``/mnt/models`` (read-only): a single file, or a
folder holding it. resserve serves repositories, so a small repository is written beside, in a
writable folder, whose config points at that file; the server then builds (folds, checks parity)
and serves it like any other model.

Example::

    root = one_model_repository(Path("/mnt/models"), "resnet", default_work_dir())
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

import yaml

from resserve.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def find_onnx(path: Path) -> Path:
    """The ONNX file at ``path``: the file itself, or the only ``*.onnx`` in the folder."""
    if path.is_file():
        return path.resolve()
    if not path.is_dir():
        raise ConfigError(f"model file {path}: no such file or folder")
    found = sorted(p for p in path.glob("*.onnx") if p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ConfigError(f"model folder {path}: expected exactly one *.onnx file, found {names}")
    return found[0].resolve()


def default_work_dir() -> Path:
    """``$TMPDIR/resserve-repo-<uid>``: per user, so one user's server never builds in (or writes
    through) a folder another user prepared in a shared ``/tmp``."""
    return Path(tempfile.gettempdir()) / f"resserve-repo-{os.getuid()}"


def private_folder(path: Path) -> Path:
    """``path`` as a folder of this user's that no one else may write and that is no link: created
    (mode 0700) if missing, refused otherwise. A shared ``/tmp`` lets anyone create the name first."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise ConfigError(f"work folder {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"work folder {path} is a link or not a folder; give --work-dir a folder of your own")
    if info.st_uid != os.getuid():
        raise ConfigError(f"work folder {path} belongs to another user (uid {info.st_uid}); give --work-dir "
                          "a folder of your own")
    if info.st_mode & 0o022:
        raise ConfigError(f"work folder {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                          "give --work-dir a folder only you can write")
    return path


def one_model_repository(model_file: Path, name: str, root: Path, max_batch_size: int = 8) -> Path:
    """Write ``root/<name>/config.yaml`` pointing at ``model_file`` (default preprocessing: ImageNet,
    224 crop) and return ``root``. An existing config there is replaced: the file is the truth. The
    folders must be this user's and no links, and the config is never written through a link."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r}: use letters, digits, '_', '.', '-' (at most 128)")
    onnx = find_onnx(model_file)
    folder = private_folder(private_folder(root) / name)
    config = yaml.safe_dump({"source": {"onnx": str(onnx)}, "max_batch_size": max_batch_size}, sort_keys=False)
    target = folder / "config.yaml"
    try:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:  # ELOOP: a link planted where the config goes
        raise ConfigError(f"cannot write {target}: {exc.strerror} (a link there is refused)") from exc
    with os.fdopen(descriptor, "w") as out:
        out.write(config)
    return root
