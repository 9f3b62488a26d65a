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
import threading
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
VERSION = re.compile(r"[0-9]{1,9}")
MAX_MODELS = 1000  # entries looked at in a listing
MAX_VERSIONS = 100  # the newest version folders of a model looked at
MAX_ARTIFACTS = 1000  # files in one version
# A model or version missing from this many listings in a row leaves the mirror (one missing
# listing may be a store's hiccup, a maintenance page, a half-finished upload).
ABSENT_SYNCS = 3
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
    failed: str = ""  # the listing itself failed: nothing was removed


def redact(text: str) -> str:
    """A message without credentials: no ``user:password@`` in URLs, no query strings (tokens)."""
    text = re.sub(r"(\b[a-z][a-z0-9+.-]*://)[^\s/]*@", r"\1", text, flags=re.IGNORECASE)
    return re.sub(r"(\b[a-z][a-z0-9+.-]*://[^\s?'\"]*)\?[^\s'\"]*", r"\1?...", text, flags=re.IGNORECASE)


class RemoteRepository:
    """Mirrors the repository at ``url`` into ``cache`` (a private folder of this user's)."""

    def __init__(self, url: str, cache: Path | None = None, options: dict[str, Any] | None = None) -> None:
        import fsspec  # only where a remote repository is configured

        self.url = url.rstrip("/")
        self.shown = redact(self.url)  # for logs and errors
        self.cache = private_folder(cache or default_cache(self.url))
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(options or {}))
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"model repository {self.shown}: {redact(str(exc))} (s3:// needs s3fs, gs:// gcsfs: "
                              "pip install 'resserve[remote]')") from exc
        if self.url.startswith("http://"):
            log.warning("model repository %s: plain http: the digests catch corruption, not a network that "
                        "rewrites both the files and their build record; use https", self.shown)
        self.root = self.root.rstrip("/")
        self.last: SyncReport | None = None  # the latest full sync's report
        self.stopping = threading.Event()  # shutdown: a download stops between chunks
        self._absent: dict[str, int] = {}  # mirrored model or version -> listings in a row without it
        self._refused: dict[str, str] = {}  # "model/version" -> the build record's digest that was refused

    def stop(self) -> None:
        self.stopping.set()

    # --- the sync ------------------------------------------------------------------------------

    def sync(self, configs_only: bool = False) -> SyncReport:
        """Bring the cache in line with the remote repository (``configs_only``: the models'
        config.yaml and label files, the small part the server needs to start; no lock, each
        write is atomic). Never raises for the remote's faults: what could not be read is logged
        and the mirror keeps what it has; nothing is removed on a failed or empty listing, and a
        model or version is removed only once ``ABSENT_SYNCS`` listings in a row lack it."""
        report = SyncReport()
        with contextlib.nullcontext() if configs_only else self._locked():
            if not configs_only:
                self._remove_staging()
            try:
                names = self._model_names()
            except Exception as exc:  # unreachable, refused, not a listing
                report.failed = redact(str(exc)) or type(exc).__name__
                names = []
            if not names:
                report.failed = report.failed or "the listing is empty"
                log.error("remote repository %s: cannot list its models (%s); serving what the mirror has",
                          self.shown, report.failed)
            for name in names:
                if self.stopping.is_set():
                    break
                try:
                    self._sync_model(name, report, configs_only)
                    report.models.append(name)
                except Exception as exc:  # one model's trouble; the others sync
                    log.error("remote repository %s: model %s: %s", self.shown, name, redact(str(exc)))
            if not configs_only and names and not self.stopping.is_set():
                local = [p.name for p in self.cache.iterdir() if p.is_dir() and MODEL_NAME.match(p.name)]
                for gone in self._long_gone(local, names):
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

    def _long_gone(self, local: list[str], listed: list[str], prefix: str = "") -> list[str]:
        """The local entries missing from ``ABSENT_SYNCS`` listings in a row."""
        gone = []
        for name in local:
            key = prefix + name
            if name in listed:
                self._absent.pop(key, None)
                continue
            self._absent[key] = self._absent.get(key, 0) + 1
            if self._absent[key] >= ABSENT_SYNCS:
                self._absent.pop(key)
                gone.append(name)
        return gone

    def _remove_staging(self) -> None:
        """Staging folders a killed process left (dot-names; the lock is held: none is in use)."""
        for model in [p for p in self.cache.iterdir() if p.is_dir() and MODEL_NAME.match(p.name)]:
            for staging in model.glob(".*.*"):
                if staging.is_dir() and not staging.is_symlink():
                    shutil.rmtree(staging, ignore_errors=True)

    def _model_names(self) -> list[str]:
        names = []
        for child in self._children(self.root)[:MAX_MODELS]:
            if MODEL_NAME.match(child) and self.fs.exists(f"{self.root}/{child}/config.yaml"):
                names.append(child)
        return sorted(names)

    def _children(self, path: str) -> list[str]:
        """Names directly under ``path`` (folders and files alike; HTTP listings give links, and
        only those under ``path`` count: a link to another place or host is no child)."""
        found = set()
        base = path.rstrip("/") + "/"
        for entry in self.fs.ls(path, detail=False):
            text = str(entry).rstrip("/")
            if not text.startswith(base):
                continue
            name = text[len(base):]
            if name and "/" not in name and name not in (".", ".."):
                found.add(name)
        return sorted(found)

    def _sync_model(self, name: str, report: SyncReport, configs_only: bool) -> None:
        remote = f"{self.root}/{name}"
        local = self.cache / name
        local.mkdir(mode=0o700, exist_ok=True)
        self._fetch_small(f"{remote}/config.yaml", local / "config.yaml")
        config = load_model_config(local / "config.yaml")
        if config.labels:  # validated as a relative path inside the folder
            if _is_version(PurePosixPath(config.labels).parts[0]):
                raise RemoteRepositoryError(f"labels {config.labels!r} would sit in a version folder")
            target = local / config.labels
            target.parent.mkdir(parents=True, exist_ok=True)
            self._fetch_small(f"{remote}/{PurePosixPath(config.labels).as_posix()}", target)
        if configs_only:
            return
        listed = [c for c in self._children(remote) if _is_version(c)]
        # Only what the model's version_policy serves is copied (the newest MAX_VERSIONS at most).
        wanted = config.version_policy.choose(sorted(listed, key=int)[-MAX_VERSIONS:])
        for version in wanted:
            if self.stopping.is_set():
                return
            key = f"{name}/{version}"
            try:
                if self._sync_version(key, f"{remote}/{version}", local / version):
                    report.added.append(key)
            except Exception as exc:
                report.refused[key] = redact(str(exc)) or type(exc).__name__
        # Removed only once the store no longer has it: a version that left the policy may come back,
        # and the last good one stays when a newer one is refused.
        local_versions = [p.name for p in local.iterdir() if p.is_dir() and _is_version(p.name)]
        for stale in self._long_gone(local_versions, listed, prefix=f"{name}/"):
            shutil.rmtree(local / stale, ignore_errors=True)
            report.removed.append(f"{name}/{stale}")

    def _sync_version(self, key: str, remote: str, local: Path) -> bool:
        """Copy one version if it is new; True when it was copied."""
        record_bytes = self._read_small(f"{remote}/{BUILD_RECORD}")
        digest = hashlib.sha256(record_bytes).hexdigest()
        if local.is_dir():
            try:
                same = (local / BUILD_RECORD).read_bytes() == record_bytes
            except OSError:
                same = False
            if not same:
                raise RemoteRepositoryError("its build record changed since it was copied; a built version "
                                            "is immutable: build a new version instead")
            return False
        if self._refused.get(key) == digest:
            raise RemoteRepositoryError("refused before, unchanged since")
        try:
            self._copy_version(remote, local, record_bytes)
        except Exception:
            if not self.stopping.is_set():
                self._refused[key] = digest  # not downloaded again until its build record changes
            raise
        self._refused.pop(key, None)
        return True

    def _copy_version(self, remote: str, local: Path, record_bytes: bytes) -> None:
        record = BuildRecord.model_validate_json(record_bytes)
        if not record.artifacts:
            raise RemoteRepositoryError(f"its {BUILD_RECORD} lists no artifact digests (built before they were "
                                        "recorded): rebuild it with this resserve")
        if len(record.artifacts) > MAX_ARTIFACTS:
            raise RemoteRepositoryError(f"its {BUILD_RECORD} lists {len(record.artifacts)} files (at most {MAX_ARTIFACTS})")
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
                if self.stopping.is_set():
                    raise RemoteRepositoryError("stopped: the server is shutting down")
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


def _is_version(name: str) -> bool:
    """A version folder's name: ASCII digits (``str.isdigit`` also takes ``²`` and ``١``)."""
    return VERSION.fullmatch(name) is not None


def _safe_relative(relative: str) -> PurePosixPath:
    """A build record's file name as a path inside the version folder, or RemoteRepositoryError."""
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or "\\" in relative or any(p in ("", ".", "..") for p in path.parts) \
            or path.name == BUILD_RECORD:
        raise RemoteRepositoryError(f"build record lists {relative!r}, which is not a file inside the version")
    return path
