"""A model repository at an fsspec URL (``s3://``, ``gs://``, ``https://``...), mirrored into a
local cache that the server reads as an ordinary repository.

Only what a built version is made of is copied: each model's ``config.yaml`` (and its label
file), and for each numeric version folder its ``build.json`` and the files that record lists,
each streamed to a staging folder and checked against the sha256 the build recorded before the
version appears in the cache. A version whose record lists no digests (built before they were
recorded), or whose file does not match, is refused and logged; the versions already there go
on serving. A built version is immutable: one whose record changed remotely is refused, not
replaced. Versions and models removed remotely are removed from the cache at the next sync
(their loaded engines keep their copy in memory until the policy retires them).

Credentials come the way each filesystem's SDK reads them (s3fs: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``~/.aws``, an instance or pod role; gcsfs:
``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server); ``model_repo_options`` passes
filesystem options (JSON) such as ``{"endpoint_url": "http://minio:9000"}``.

Several workers share one cache: a sync holds an exclusive lock on the cache folder, so one
downloads and the others then find the files in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from resserve.config import default_cache, load_model_config
from resserve.errors import ConfigError, ResserveError
from resserve.files import atomic_write_text
from resserve.metadata import BUILD_RECORD, BuildRecord
from resserve.model_file import private_folder

log = logging.getLogger(__name__)

# config.yaml, build.json, a label file: larger is not one resserve wrote.
MAX_SMALL_FILE_BYTES = 1024 * 1024
MAX_ARTIFACT_BYTES = 16 * 1024**3
CHUNK = 1 << 20
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LOCK = ".sync.lock"


class RemoteRepositoryError(ResserveError):
    """A remote file that cannot be trusted or read."""


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URL for fsspec rather than a local folder (``file://`` is local)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


@dataclass
class SyncReport:
    """What a sync changed."""

    models: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # "model/version"
    removed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # "model/version": why


class RemoteRepository:
    """Mirrors the repository at ``url`` into ``cache`` (a private folder of this user's)."""

    def __init__(self, url: str, cache: Path | None = None, options: dict[str, Any] | None = None) -> None:
        import fsspec  # only where a remote repository is configured

        self.url = url.rstrip("/")
        self.shown = re.sub(r"//[^/@]*@", "//", self.url)  # for logs and errors: no user:password@
        self.cache = private_folder(cache or default_cache(self.url))
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(options or {}))
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"model repository {re.sub(r'//[^/@]*@', '//', url)}: {exc} (s3:// needs s3fs, gs:// gcsfs: "
                              "pip install 'resserve[remote]')") from exc
        self.root = self.root.rstrip("/")
        self.last: SyncReport | None = None  # the latest full sync's report

    # --- the sync ------------------------------------------------------------------------------

    def sync(self, configs_only: bool = False) -> SyncReport:
        """Bring the cache in line with the remote repository (``configs_only``: the models'
        config.yaml and label files, the small part the server needs to start)."""
        report = SyncReport()
        with self._locked():
            names = self._model_names()
            for name in names:
                try:
                    self._sync_model(name, report, configs_only)
                    report.models.append(name)
                except (OSError, ResserveError, ValueError) as exc:  # one model's trouble; the others sync
                    log.error("remote repository %s: model %s: %s", self.shown, name, exc)
            if not configs_only:
                for gone in sorted(p.name for p in self.cache.iterdir()
                                   if p.is_dir() and not p.name.startswith(".") and p.name not in names):
                    shutil.rmtree(self.cache / gone, ignore_errors=True)
                    report.removed.append(gone)
        for key, why in report.refused.items():
            log.error("remote repository %s: version %s refused: %s", self.shown, key, why)
        if not configs_only:
            self.last = report
        if report.added or report.removed:
            log.info("remote repository %s: added %s; removed %s", self.shown, ", ".join(report.added) or "nothing",
                     ", ".join(report.removed) or "nothing")
        return report

    def _model_names(self) -> list[str]:
        names = []
        for child in self._children(self.root):
            if MODEL_NAME.match(child) and self.fs.exists(f"{self.root}/{child}/config.yaml"):
                names.append(child)
        return sorted(names)

    def _children(self, path: str) -> list[str]:
        """Names directly under ``path`` (folders and files alike; HTTP listings give links)."""
        found = set()
        for entry in self.fs.ls(path, detail=False):
            name = PurePosixPath(str(entry).rstrip("/")).name
            if name and name not in (".", ".."):
                found.add(name)
        return sorted(found)

    def _sync_model(self, name: str, report: SyncReport, configs_only: bool) -> None:
        remote = f"{self.root}/{name}"
        local = self.cache / name
        local.mkdir(mode=0o700, exist_ok=True)
        self._fetch_small(f"{remote}/config.yaml", local / "config.yaml")
        config = load_model_config(local / "config.yaml")
        if config.labels:  # validated as a relative path inside the folder
            target = local / config.labels
            target.parent.mkdir(parents=True, exist_ok=True)
            self._fetch_small(f"{remote}/{PurePosixPath(config.labels).as_posix()}", target)
        if configs_only:
            return
        remote_versions = [c for c in self._children(remote) if c.isdigit()]
        for version in remote_versions:
            key = f"{name}/{version}"
            try:
                if self._sync_version(f"{remote}/{version}", local / version):
                    report.added.append(key)
            except (OSError, ResserveError, ValueError) as exc:
                report.refused[key] = str(exc)
        for stale in [p for p in local.iterdir() if p.is_dir() and p.name.isdigit() and p.name not in remote_versions]:
            shutil.rmtree(stale, ignore_errors=True)
            report.removed.append(f"{name}/{stale.name}")

    def _sync_version(self, remote: str, local: Path) -> bool:
        """Copy one version if it is new; True when it was copied."""
        record_bytes = self._read_small(f"{remote}/{BUILD_RECORD}")
        if local.is_dir():
            try:
                same = (local / BUILD_RECORD).read_bytes() == record_bytes
            except OSError:
                same = False
            if not same:
                raise RemoteRepositoryError("its build record changed since it was copied; a built version "
                                            "is immutable: build a new version instead")
            return False
        record = BuildRecord.model_validate_json(record_bytes)
        if not record.artifacts:
            raise RemoteRepositoryError(f"its {BUILD_RECORD} lists no artifact digests (built before they were "
                                        "recorded): rebuild it with this resserve")
        staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
        try:
            for relative, digest in record.artifacts.items():
                path = _safe_relative(relative)
                target = staging.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fetch_checked(f"{remote}/{path.as_posix()}", target, digest)
            (staging / BUILD_RECORD).write_bytes(record_bytes)
            staging.rename(local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    # --- files ---------------------------------------------------------------------------------

    def _read_small(self, remote: str) -> bytes:
        with self.fs.open(remote, "rb") as f:
            data = f.read(MAX_SMALL_FILE_BYTES + 1)
        if len(data) > MAX_SMALL_FILE_BYTES:
            raise RemoteRepositoryError(f"{PurePosixPath(remote).name} is larger than {MAX_SMALL_FILE_BYTES} bytes")
        return data

    def _fetch_small(self, remote: str, local: Path) -> None:
        data = self._read_small(remote)
        try:
            if local.read_bytes() == data:
                return
        except OSError:
            pass
        atomic_write_text(local, data.decode("utf-8"), mode=0o600)

    def _fetch_checked(self, remote: str, local: Path, digest: str) -> None:
        """Stream ``remote`` to ``local``; RemoteRepositoryError unless its sha256 is ``digest``."""
        hasher = hashlib.sha256()
        size = 0
        with self.fs.open(remote, "rb") as source, local.open("wb") as sink:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > MAX_ARTIFACT_BYTES:
                    raise RemoteRepositoryError(f"{local.name} is larger than {MAX_ARTIFACT_BYTES} bytes")
                hasher.update(chunk)
                sink.write(chunk)
        if hasher.hexdigest() != digest:
            raise RemoteRepositoryError(f"{local.name}: sha256 {hasher.hexdigest()[:16]}... is not the "
                                        f"{digest[:16]}... its build recorded")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.cache / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _safe_relative(relative: str) -> PurePosixPath:
    """A build record's file name as a path inside the version folder, or RemoteRepositoryError."""
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or "\\" in relative or any(p in ("", ".", "..") for p in path.parts) \
            or path.name == BUILD_RECORD:
        raise RemoteRepositoryError(f"build record lists {relative!r}, which is not a file inside the version")
    return path
