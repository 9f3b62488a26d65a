"""Serve one ONNX file as a one-model repository: what KServe's ``onnx`` model format hands over.

KServe's storage initializer puts the model at ``/mnt/models`` (read-only): a single file, or a
folder holding it. resserve serves repositories, so a small repository is written beside, in a
writable folder, whose config points at that file; the server then builds (folds, checks parity)
and serves it like any other model.

Example::

    root = one_model_repository(Path("/mnt/models"), "resnet", Path("/tmp/resserve-repo"))
"""

from __future__ import annotations

import re
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


def one_model_repository(model_file: Path, name: str, root: Path, max_batch_size: int = 8) -> Path:
    """Write ``root/<name>/config.yaml`` pointing at ``model_file`` (default preprocessing: ImageNet,
    224 crop) and return ``root``. An existing config there is replaced: the file is the truth."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r}: use letters, digits, '_', '.', '-' (at most 128)")
    onnx = find_onnx(model_file)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {"source": {"onnx": str(onnx)}, "max_batch_size": max_batch_size}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root
