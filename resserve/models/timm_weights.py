"""timm's pretrained ResNet weights: names, Hub files, checksums and preprocessing contracts.

``timm:<model>.<tag>`` (``timm:resnet50.a1_in1k``; ``timm:resnet50`` is timm's default tag) names
one entry of ``resserve/data/timm_pretrained.json``, written from real timm by
``tests/fixtures/make_timm_reference.py``: the Hub repository and the
preprocessing the weights were evaluated with. The Hub's ``model.safetensors`` (where timm itself
loads from) is verified against the sha256 the Hub advertises for it and kept with that digest
beside it. A file in huggingface_hub's own cache is reused, verified by its content-addressed
blob name. timm's older release ``.pth`` files work as local files (``--weights path``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from resserve.contract import PreprocessContract
from resserve.errors import WeightsError
from resserve.files import sha256_file
from resserve.models.download import NETWORK_ERRORS, check_sha256, checksum_and_location, download_verified

PREFIX = "timm:"
HUB_FILE = "model.safetensors"
DEFAULT_HUB = "https://huggingface.co"


@dataclass(frozen=True)
class TimmWeights:
    """One pretrained timm weight set and the preprocessing that goes with it."""

    name: str  # <model>.<tag>
    hf_hub_id: str
    input_size: int  # the evaluation size: timm's test_input_size where it has one
    crop_pct: float
    interpolation: Literal["bilinear", "bicubic"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    license: str | None

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def hub_url(self) -> str:
        """The Hub file, or the same path on ``$HF_ENDPOINT`` (a mirror), as huggingface_hub reads it."""
        endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_HUB).rstrip("/")
        return f"{endpoint}/{self.hf_hub_id}/resolve/main/{HUB_FILE}"

    @property
    def contract(self) -> PreprocessContract:
        """timm's eval transform: resize the shorter side to ``floor(size / crop_pct)``, center crop."""
        resize = math.floor(self.input_size / self.crop_pct)
        return PreprocessContract(resize_size=resize, crop_size=self.input_size, interpolation=self.interpolation,
                                  mean=self.mean, std=self.std)


def _entry(name: str, cfg: dict[str, Any]) -> TimmWeights:
    test_size = cfg.get("test_input_size")
    size = (test_size or cfg["input_size"])[-1]
    crop_pct = cfg.get("test_crop_pct", cfg["crop_pct"]) if test_size else cfg["crop_pct"]
    return TimmWeights(name, cfg["hf_hub_id"], size, crop_pct, cfg["interpolation"],
                       tuple(cfg["mean"]), tuple(cfg["std"]), cfg["num_classes"], cfg.get("license"))


@cache
def _table() -> tuple[dict[str, str], dict[str, TimmWeights]]:
    data = json.loads(resources.files("resserve").joinpath("data/timm_pretrained.json").read_text())
    return data["defaults"], {name: _entry(name, cfg) for name, cfg in data["weights"].items()}


def timm_weight_names() -> list[str]:
    """Every ``<model>.<tag>`` resserve knows."""
    return list(_table()[1])


def parse_timm_name(spec: str) -> TimmWeights:
    """``timm:resnet50.a1_in1k`` (or ``timm:resnet50``, timm's default tag) to its entry."""
    name = spec.removeprefix(PREFIX)
    defaults, table = _table()
    name = defaults.get(name, name)
    if name not in table:
        arch = name.split(".", 1)[0]
        tags = [n for n in table if n.startswith(f"{arch}.")]
        known = f"{arch} has {', '.join(tags)}" if tags else f"architectures: {', '.join(defaults)}"
        raise WeightsError(f"unknown timm weights {spec!r}; {known}")
    return table[name]


def hub_cache_dir() -> Path:
    """huggingface_hub's cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if hub := os.environ.get("HF_HUB_CACHE"):
        return Path(hub)
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_timm_weights(weights: TimmWeights, directory: Path) -> tuple[Path, str] | None:
    """An already downloaded file and the sha256 it must have, or None. Not verified here."""
    own = directory / weights.name / HUB_FILE
    if own.is_file() and _sidecar(own).is_file():
        return own, _sidecar(own).read_text().strip()
    snapshots = hub_cache_dir() / f"models--{weights.hf_hub_id.replace('/', '--')}" / "snapshots"
    for candidate in sorted(snapshots.glob(f"*/{HUB_FILE}")):
        blob = candidate.resolve()  # snapshots link to blobs named by their sha256
        if blob.is_file() and len(blob.name) == 64:
            return candidate, blob.name
    return None


def fetch_timm_weights(weights: TimmWeights, directory: Path) -> Path:
    """The verified local file for ``weights``: from a cache, else downloaded from the Hub."""
    found = cached_timm_weights(weights, directory)
    if found is not None:
        path, expected = found
        check_sha256(sha256_file(path), expected, path)
        return path
    target = directory / weights.name / HUB_FILE
    hint = (f"Download {weights.hub_url} (or point $HF_ENDPOINT at a mirror) and pass "
            f"--weights /path/to/{HUB_FILE}, or put it in huggingface_hub's cache")
    try:
        expected, location = checksum_and_location(weights.hub_url)
    except NETWORK_ERRORS as exc:
        raise WeightsError(f"could not reach {weights.hub_url} ({exc}). Offline? {hint}") from exc
    if expected is None:
        raise WeightsError(f"{weights.hub_url} names no sha256 for {HUB_FILE}: refusing an unverifiable download")
    download_verified(location, target, lambda digest: check_sha256(digest, expected, target), offline_hint=hint)
    _sidecar(target).write_text(expected + "\n")
    return target
