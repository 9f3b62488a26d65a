"""A model repository at a URL: a plain HTTP server and an S3-compatible server (moto's, started
by the test on 127.0.0.1) hold a built repository; resserve mirrors it, checks every file against
its build record, serves it, and follows it by polling."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from resserve.builder.build_pipeline import BuildPipeline
from resserve.config import ServerSettings
from resserve.perf.server_process import server_process
from resserve.remote_repository import RemoteRepository, RemoteRepositoryError, _safe_relative, redact
from resserve.repository import ModelRepository
from tests.model_repo_fixtures import tiny_classifier
from tests.server_harness import free_port, jpeg, serve_in_thread, static_file_server, wait_for, write_model


def built_repository(root: Path, tmp_path: Path, versions: int = 2, **config: Any) -> Path:
    """Model ``m`` (the tiny classifier) with ``versions`` built versions, from other seeds."""
    source = tmp_path / "source.onnx"
    tiny_classifier(source, 0)
    write_model(root, "m", source, max_batch_size=2, intra_op_threads=1, **config)
    builder = BuildPipeline(ModelRepository(root))
    builder.build("m")
    for seed in range(1, versions):
        tiny_classifier(source, seed)
        builder.build("m", new_version=True)
    return root


@pytest.fixture
def http_repository(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server (directory listings on) over a built repository."""
    root = built_repository(tmp_path / "served", tmp_path, version_policy={"all": True})
    with static_file_server(root) as url:
        yield url, root


def test_a_repository_over_http_is_mirrored_and_every_file_checked(http_repository: tuple[str, Path],
                                                                    tmp_path: Path) -> None:
    url, root = http_repository
    remote = RemoteRepository(url, tmp_path / "cache")
    report = remote.sync()
    assert report.models == ["m"] and report.added == ["m/1", "m/2"] and not report.refused
    for version in ("1", "2"):
        for path in (root / "m" / version).iterdir():
            assert (tmp_path / "cache" / "m" / version / path.name).read_bytes() == path.read_bytes()
    assert ModelRepository(tmp_path / "cache").versions("m") == ["1", "2"]
    assert remote.sync().added == []  # nothing new: nothing copied
    # A file changed on the server after the build: that version is refused, the other one is kept.
    model = root / "m" / "2" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    fresh = RemoteRepository(url, tmp_path / "fresh")
    report = fresh.sync()
    assert report.added == ["m/1"] and "sha256" in report.refused["m/2"]
    assert ModelRepository(tmp_path / "fresh").versions("m") == ["1"]
    assert not [p for p in (tmp_path / "fresh" / "m").iterdir() if p.name.startswith(".")]  # no staging left


def test_a_version_built_without_digests_or_naming_paths_outside_is_refused(http_repository: tuple[str, Path],
                                                                             tmp_path: Path) -> None:
    url, root = http_repository
    record = root / "m" / "2" / "build.json"
    record.write_text(record.read_text().replace('"artifacts": {', '"artifacts_old": {'))
    report = RemoteRepository(url, tmp_path / "cache").sync()
    assert "lists no artifact digests" in report.refused["m/2"]
    for bad in ("../1/model.onnx", "/etc/passwd", "a\\b", "build.json", "", "a/../../b"):
        with pytest.raises(RemoteRepositoryError):
            _safe_relative(bad)


def test_a_store_that_fails_or_lists_nothing_never_empties_the_mirror(http_repository: tuple[str, Path],
                                                                        tmp_path: Path) -> None:
    url, root = http_repository
    remote = RemoteRepository(url, tmp_path / "cache")
    assert remote.sync().added == ["m/1", "m/2"]
    hidden = root.parent / "hidden"
    shutil.move(root / "m", hidden)  # the store lists nothing (a maintenance page, a hiccup)
    for _ in range(5):
        report = remote.sync()
        assert report.failed and report.removed == []
    assert ModelRepository(tmp_path / "cache").versions("m") == ["1", "2"]
    shutil.move(hidden, root / "m")
    shutil.rmtree(root / "m" / "1")  # version 1 really left the store: gone after three listings without it
    assert [remote.sync().removed for _ in range(3)] == [[], [], ["m/1"]]
    assert ModelRepository(tmp_path / "cache").versions("m") == ["2"]


def test_urls_in_logs_carry_no_credentials() -> None:
    assert redact("GET https://user:s3cret@host/repo/m?X-Amz-Signature=abc failed") == \
        "GET https://host/repo/m?... failed"
    assert redact("s3://bucket/repo") == "s3://bucket/repo"


def test_the_server_serves_a_remote_repository_over_http(http_repository: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = http_repository
    settings = ServerSettings(model_repo=url, repository_cache=tmp_path / "cache")
    assert settings.model_repo_url == url and not settings.build_missing
    with serve_in_thread(settings) as server:
        response = httpx.post(f"{server.url}/v2/models/m/classify", content=jpeg(),
                              headers={"content-type": "image/jpeg"}, timeout=30)
        assert response.status_code == 200 and response.json()["model_version"] == "2"


def test_resserve_serve_takes_the_url_on_its_command_line(http_repository: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = http_repository
    with server_process(url, env={"RESSERVE_REPOSITORY_CACHE": str(tmp_path / "cache")},
                        kill=True) as server:
        response = httpx.post(f"{server.url}/v2/models/m/classify", content=jpeg(),
                              headers={"content-type": "image/jpeg"}, timeout=30)
        assert response.status_code == 200 and response.json()["model_version"] == "2", server.output()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, dict[str, str]]]:
    """moto's S3-compatible server on 127.0.0.1, and an s3fs filesystem on it."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[remote]')")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}"}
    try:
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("models")
        yield fs, options
    finally:
        server.stop()


def test_an_s3_repository_is_served_and_followed_by_polling(s3: tuple[Any, dict[str, str]], tmp_path: Path) -> None:
    fs, options = s3
    root = built_repository(tmp_path / "local", tmp_path, versions=2)
    fs.put(str(root / "m" / "config.yaml"), "models/repo/m/config.yaml")
    fs.put(str(root / "m" / "1"), "models/repo/m/1", recursive=True)
    settings = ServerSettings(model_repo="s3://models/repo", model_repo_options=options,
                              repository_cache=tmp_path / "cache", repository_poll_s=0.2)
    with serve_in_thread(settings) as server:
        manager = server.app.state.resserve.manager
        assert manager.serving_versions("m") == ["1"]
        fs.put(str(root / "m" / "2"), "models/repo/m/2", recursive=True)  # a new version is published
        assert wait_for(lambda: manager.serving_versions("m") == ["2"], timeout_s=30)
        response = httpx.post(f"{server.url}/v2/models/m/classify", content=jpeg(),
                              headers={"content-type": "image/jpeg"}, timeout=30)
        assert response.status_code == 200 and response.json()["model_version"] == "2"
        # A tampered artifact is never loaded: version 3 stays out, version 2 serves on.
        fs.put(str(root / "m" / "2"), "models/repo/m/3", recursive=True)
        fs.pipe("models/repo/m/3/model.onnx", b"not the file the build recorded")
        remote = server.app.state.resserve.remote
        refused = wait_for(lambda: remote.last is not None and remote.last.refused.get("m/3"), timeout_s=30)
        assert refused and "sha256" in refused
        assert manager.serving_versions("m") == ["2"] and not (tmp_path / "cache" / "m" / "3").exists()
