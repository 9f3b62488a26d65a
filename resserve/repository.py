"""The model repository, read only: ``<root>/<name>/config.yaml`` plus built ``<root>/<name>/<version>/``.

A catalog: model names, their configs, built versions and, for each version, its contract and
labels. A version folder holds the folded fp32 ``model.onnx`` (the reference), the engine's
artifact for other variants (paths in :mod:`resserve.engines.factory`), ``accuracy.json`` for
them, and ``build.json`` (what built it). Building and the stale check are
:mod:`resserve.builder.build_pipeline`; serving reads the catalog and never builds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from resserve.config import ModelConfig, load_model_config
from resserve.contract import PreprocessContract, imagenet_contract
from resserve.engines.factory import REFERENCE, Variant
from resserve.errors import ConfigError, ModelNotFoundError, ResserveError
from resserve.labels import default_labels, load_labels
from resserve.metadata import BUILD_RECORD, AccuracyReport, BuildRecord, ModelMetadata, read_metadata

ARTIFACT = REFERENCE  # every version has the folded fp32 ONNX; other artifacts sit beside it


@dataclass(frozen=True)
class ModelVersion:
    """One built, loadable version of a model."""

    config: ModelConfig
    folder: Path
    version: str
    metadata: ModelMetadata
    variant: Variant

    @property
    def reference(self) -> Path:
        """The folded fp32 ONNX every variant was built from."""
        return self.folder / ARTIFACT

    @property
    def artifact(self) -> Path:
        """What the engine loads."""
        return self.variant.artifact(self.folder)

    @property
    def accuracy(self) -> AccuracyReport | None:
        return AccuracyReport.read(self.folder)

    @property
    def contract(self) -> PreprocessContract:
        """The config's contract, else the one the model records, else torchvision's ImageNet preset."""
        return self.config.preprocess or self.metadata.preprocess or imagenet_contract()

    def labels(self, num_classes: int) -> list[str]:
        """The config's label file, else the labels the model records, else ImageNet/class_<i>."""
        if self.config.labels:
            model_folder = self.folder.parent.resolve()
            path = (model_folder / self.config.labels).resolve()
            if not path.is_relative_to(model_folder):  # a link that leads out of the folder
                raise ConfigError(f"model {self.config.name}: label file {self.config.labels} leads outside the "
                                  "model's folder")
            try:
                labels = list(load_labels(path))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"model {self.config.name}: cannot read label file {path}: {exc}") from exc
        elif self.metadata.labels:
            labels = list(self.metadata.labels)
        else:
            labels = list(default_labels(num_classes))
        if len(labels) != num_classes:
            raise ConfigError(f"model {self.config.name}: {len(labels)} labels for {num_classes} classes")
        return labels


class ModelRepository:
    """Reads model configs and their built versions under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a folder")
        self._names: tuple[str, ...] | None = None
        self._known: frozenset[str] = frozenset()

    def names(self) -> list[str]:
        """Every folder with a config.yaml, sorted: read once, again after :meth:`refresh`
        (repository control refreshes; a glob per request cost 0.28 ms, per unknown name too)."""
        if self._names is None:
            self._names = tuple(sorted(p.parent.name for p in self.root.glob("*/config.yaml")))
            self._known = frozenset(self._names)
        return list(self._names)

    def has(self, name: str) -> bool:
        """Whether ``name`` is one of :meth:`names` (a set lookup, for every request's checks)."""
        if self._names is None:
            self.names()
        return name in self._known

    def refresh(self) -> None:
        """Read the folder again at the next :meth:`names` (a model added or removed on disk)."""
        self._names = None

    def config(self, name: str) -> ModelConfig:
        path = self.root / name / "config.yaml"
        if not path.is_file() or not _safe_name(name):
            raise ModelNotFoundError(f"no model {name!r} in {self.root}")
        config = load_model_config(path)
        if config.name != name:
            # Source paths, the served name and the control index all go by the folder.
            raise ConfigError(f"{path}: name {config.name!r} must match the model's folder name {name!r} "
                              "(or be left out)")
        return config

    def versions(self, name: str) -> list[str]:
        """Built versions (numeric folder names with an artifact), oldest first."""
        folder = self.root / name
        found = [p.name for p in folder.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit() and (p / ARTIFACT).is_file()]
        return sorted(found, key=int)

    def version(self, name: str, version: str | None = None) -> ModelVersion:
        """A built version (the newest by default)."""
        config = self.config(name)
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} has no built version; run `resserve build {self.root}`")
        chosen = version or versions[-1]
        if chosen not in versions:
            raise ModelNotFoundError(f"model {name!r} has no version {chosen!r} (built: {', '.join(versions)})")
        folder = self.root / name / chosen
        record = BuildRecord.read(folder)
        if record is not None:
            variant = Variant(record.engine, record.precision)
        elif config.engine == "auto":
            # What was built is what build.json says; without it, only an explicit engine is known
            # (engine auto would resolve for this machine, not for the one that built the version).
            raise ConfigError(f"model {name!r} version {chosen}: no readable {BUILD_RECORD} says which engine "
                              "built it (engine: auto); rebuild it: resserve build --force")
        else:
            variant = Variant(config.engine, config.precision)
        return ModelVersion(config, folder, chosen, read_metadata(folder / ARTIFACT), variant)


def _safe_name(name: str) -> bool:
    """Model names are single path components: no traversal out of the repository."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def unbuilt(root: Path, names: Sequence[str] | None = None) -> list[str]:
    """Models (all, or ``names``) with no built version yet; what is wrong, where the repository
    cannot be read or has no models."""
    try:
        repository = ModelRepository(root)
        wanted = list(names) if names else repository.names()
        return [name for name in wanted if not repository.versions(name)] if wanted else ["(no models yet)"]
    except ResserveError as exc:
        return [str(exc)]


def wait_for_builds(root: Path, names: Sequence[str] | None = None, *, timeout_s: float, interval_s: float,
                    on_wait: Callable[[list[str]], None] = lambda missing: None) -> list[str]:
    """Return the names once every model has a built version (an init container's wait: in
    Kubernetes a Job builds the repository, and the serving pods must not start before it is done).
    Raises ResserveError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while missing := unbuilt(root, names):
        if time.monotonic() > deadline:
            raise ResserveError(f"still not built after {timeout_s:g} s: {', '.join(missing)}")
        on_wait(missing)
        time.sleep(interval_s)
    return list(names) if names else ModelRepository(root).names()
