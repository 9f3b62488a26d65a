"""Build a repository's models: stale check, staging, the shared export cache, ``build.json``.

``build.json`` records a content hash of what the build depends on (source, engine, precision,
the source file's bytes), so a build runs only when one of those changed. Builds write to a
temporary folder and rename it into place, so a crash never leaves a half-written version that
the server would load. Variants of one source (``resnet50``, ``resnet50-int8``, ...) share one
export through ``<root>/.build-cache``.

Example::

    builder = BuildPipeline(ModelRepository(Path("model_repo")))
    if builder.is_stale("resnet50"):
        builder.build("resnet50")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from resserve import __version__
from resserve.builder.variants import compile_variant
from resserve.config import ModelConfig, is_weights_name
from resserve.contract import imagenet_contract
from resserve.engine_registry import engine_spec
from resserve.engines.factory import resolve_variant
from resserve.errors import ConfigError, ConflictError
from resserve.files import sha256_file
from resserve.metadata import BUILD_RECORD, BuildRecord, read_metadata
from resserve.repository import ARTIFACT, ModelRepository

log = logging.getLogger(__name__)

CACHE_FOLDER = ".build-cache"
DEFAULT_VERSION = "1"

Progress = Callable[[str], None]


class BuildPipeline:
    """Builds the models of one repository into ``<root>/<name>/<version>/`` folders."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self.root = repository.root

    def content_hash(self, config: ModelConfig) -> str:
        """What a build depends on: the config's ``build_spec`` for the engine it resolves to (source,
        engine, precision; below fp32 the calibration settings; for TensorRT the batch profile and
        device), the source's bytes and the resserve version."""
        digest = hashlib.sha256()
        variant = resolve_variant(config)  # `auto` may resolve differently elsewhere
        digest.update(json.dumps(config.build_spec(variant.engine), sort_keys=True).encode())
        digest.update(variant.name.encode())
        digest.update(__version__.encode())
        digest.update(self._source_hash(config).encode())
        return digest.hexdigest()

    def _source_hash(self, config: ModelConfig) -> str:
        """The source alone: what the folded fp32 export depends on (the build cache's key)."""
        digest = hashlib.sha256()
        digest.update(config.source.model_dump_json().encode())
        digest.update(__version__.encode())
        source = config.source
        local = source.onnx or (source.weights if source.weights and not is_weights_name(source.weights) else None)
        if local:
            path = self._source_path(config.name, local)
            if not path.is_file():
                raise ConfigError(f"model {config.name}: source file {path} does not exist")
            digest.update(sha256_file(path).encode())
        return digest.hexdigest()

    def is_stale(self, name: str) -> bool:
        """True when the newest version is missing or was built from other inputs."""
        config = self.repository.config(name)
        versions = self.repository.versions(name)
        if not versions:
            return True
        built = BuildRecord.read(self.root / name / versions[-1])
        if built is None:
            return True
        if built.random_fallback and _weights_obtainable(config):
            log.info("%s: weights %s are now available; rebuilding the random-weights fallback", name,
                     config.source.weights)
            return True
        return built.content_hash != self.content_hash(config)

    def build(self, name: str, *, force: bool = False, new_version: bool = False,
              progress: Progress | None = None) -> Path:
        """Build the newest version of ``name`` if stale (or ``force``); returns its folder.

        ``new_version``: build the current source and config into the next version number, always,
        and leave every older version as it is (a built version folder is never rewritten then)."""
        config = self.repository.config(name)
        say = progress or (lambda message: log.info("%s", message))
        versions = self.repository.versions(name)
        if new_version:
            target = self.root / name / next_version(self.root / name)
        else:
            target = self.root / name / (versions[-1] if versions else DEFAULT_VERSION)
        if not new_version and not force and not self.is_stale(name):
            say(f"{name}: up to date ({target})")
            return target
        content_hash = self.content_hash(config)
        remove_stale_staging(self.root / name, name)
        variant = resolve_variant(config)  # a config error leaves no staging folder behind
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-build-{os.getpid()}-", dir=self.root / name))
        try:
            say(f"{name}: building {config.source.arch or config.source.onnx} (folded fp32 reference) -> {target}")
            fell_back = self._build_reference(config, staging, with_weights=engine_spec(variant.engine).runs_source_weights)
            report = None
            if not variant.is_reference:
                say(f"{name}: compiling {variant.name}")
                metadata = read_metadata(staging / ARTIFACT)
                contract = config.preprocess or metadata.preprocess or imagenet_contract()
                images = config.calibration.images
                report = compile_variant(variant, config, staging, contract,
                                         self._source_path(name, images) if images else None,
                                         cache_dir=self.root / CACHE_FOLDER / name / variant.engine)
            BuildRecord(content_hash=content_hash, engine=variant.engine, precision=variant.precision,
                        random_fallback=fell_back, accuracy=report.model_dump() if report else None,
                        resserve_version=__version__,
                        config=config.model_dump(mode="json"), artifacts=artifact_digests(staging)).write(staging)
            if target.exists():
                if new_version:  # another build took this number meanwhile: never overwrite it
                    raise ConflictError(f"model {name}: version {target.name} appeared while this build ran; "
                                        "build again for the next number")
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        say(f"{name}: built {variant.artifact(target)}" + (f"; {report.summary()}" if report else ""))
        return target

    def _source_path(self, name: str, relative: str) -> Path:
        """A source file named in config.yaml, relative to the model's folder (absolute paths as given)."""
        return (self.root / name / relative).resolve()

    def _build_reference(self, config: ModelConfig, folder: Path, *, with_weights: bool = False) -> bool:
        """Write the folded fp32 ``model.onnx`` (through the build cache when possible).

        Returns True when configured weights were unobtainable and random ones were used.
        ``with_weights`` also writes the weights as ``model.safetensors`` (the torch engine's input).
        """
        output = folder / ARTIFACT
        source = config.source
        if source.onnx:
            from resserve.builder.onnx_fold import optimize_onnx

            optimize_onnx(self._source_path(config.name, source.onnx), output)
            return False
        cache = self.root / CACHE_FOLDER
        key = self._source_hash(config)
        cached, cached_record = cache / f"{key}.onnx", cache / f"{key}.json"
        if not with_weights and cached.is_file() and cached_record.is_file():
            fell_back = bool(json.loads(cached_record.read_text()).get("random_fallback"))
            if not (fell_back and _weights_obtainable(config)):
                log.info("model %s: reusing the export of the same source from %s", config.name, cache)
                shutil.copyfile(cached, output)
                return fell_back
        fell_back = self._export(config, output, folder / "model.safetensors" if with_weights else None)
        cache.mkdir(exist_ok=True)
        shutil.copyfile(output, cached)
        cached_record.write_text(json.dumps({"model": config.name, "random_fallback": fell_back}))
        return fell_back

    def _export(self, config: ModelConfig, output: Path, weights_out: Path | None) -> bool:
        source = config.source
        try:
            from resserve.builder.export import export_onnx
            from resserve.models.weights import load_model_or_fallback
        except ImportError as exc:
            raise ConfigError(
                f"model {config.name}: building from PyTorch weights needs torch: pip install 'resserve[export]' ({exc})"
            ) from exc
        assert source.arch is not None  # the config validator guarantees arch or onnx
        weights = source.weights
        if weights and not is_weights_name(weights):
            weights = str(self._source_path(config.name, weights))
        loaded, fell_back = load_model_or_fallback(
            source.arch, weights, random_weights=source.random_weights, seed=source.seed,
            num_classes=source.num_classes, fallback_random=source.fallback_random, what=f"model {config.name}")
        export_onnx(loaded, output, seed=source.seed)
        if weights_out is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(weights_out))
        return fell_back


def _weights_obtainable(config: ModelConfig) -> bool:
    """Whether the configured torchvision or timm weights file now sits in a local cache."""
    weights = config.source.weights or ""
    if not is_weights_name(weights):
        return False
    try:
        from resserve.models.weights import cached_named_weights
    except ImportError:  # no torch: nothing can be loaded from them anyway
        return False
    return cached_named_weights(weights) is not None


def next_version(folder: Path) -> str:
    """One more than the highest numeric folder in a model's folder (built or not, so a number
    someone put there is never reused), else the first version."""
    numbers = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()] if folder.is_dir() else []
    return str(max(numbers) + 1) if numbers else DEFAULT_VERSION


def remove_stale_staging(folder: Path, name: str, unmarked_after_s: float = 3600.0) -> list[Path]:
    """Remove ``.NAME-build-PID-*`` staging folders whose builder process is gone (a build killed
    outright leaves its staging behind: 118 MiB in one test, piling up in a container's /tmp
    across restarts). A folder without a pid (an older resserve's) goes once an hour old."""
    removed = []
    for staging in folder.glob(f".{name}-build-*"):
        pid_text = staging.name.removeprefix(f".{name}-build-").split("-", 1)[0]
        if pid_text.isdigit():
            if _alive(int(pid_text)):
                continue
        elif time.time() - staging.stat().st_mtime < unmarked_after_s:
            continue
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
        log.info("%s: removed the staging folder %s of a build that did not finish", name, staging.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def artifact_digests(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (relative POSIX paths), the build record aside."""
    return {path.relative_to(folder).as_posix(): sha256_file(path) for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.is_symlink() and path.name != BUILD_RECORD}
