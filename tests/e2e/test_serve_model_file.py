"""``resserve serve --model-file``: one ONNX file in a read-only folder served as one model, as
KServe's storage initializer hands an ``onnx`` model to a serving runtime at /mnt/models."""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import httpx
import pytest

from resserve.perf.server_process import server_process
from tests.server_harness import jpeg


def test_a_read_only_model_folder_is_built_elsewhere_and_served(model_onnx: Path, tmp_path: Path) -> None:
    mounted = tmp_path / "mnt-models"
    mounted.mkdir()
    shutil.copy(model_onnx, mounted / "model.onnx")
    for path in (mounted / "model.onnx", mounted):
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    work = tmp_path / "work"
    command = [sys.executable, "-m", "resserve.cli", "serve", "--model-file", str(mounted), "--model-name",
               "resnet", "--work-dir", str(work), "--host", "127.0.0.1", "--port", "{port}"]
    try:
        with server_process(None, command=command, log_dir=tmp_path, ready_timeout_s=120, kill=True) as server:
            answer = httpx.post(f"{server.url}/v2/models/resnet/classify?top_k=2", content=jpeg(),
                                headers={"content-type": "image/jpeg"}, timeout=30)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["results"][0]["predictions"]) == 2
            assert httpx.get(f"{server.url}/v2/models/resnet", timeout=10).json()["name"] == "resnet"
    finally:
        mounted.chmod(stat.S_IRWXU)
    assert (work / "resnet" / "config.yaml").is_file() and list((work / "resnet").glob("*/model.onnx"))
    assert sorted(p.name for p in mounted.iterdir()) == ["model.onnx"]  # nothing written beside the model


@pytest.mark.parametrize("files", [[], ["a.onnx", "b.onnx"]])
def test_a_folder_without_exactly_one_onnx_file_is_refused(files: list[str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from resserve.cli import app

    for name in files:
        (tmp_path / name).write_bytes(b"")
    result = CliRunner().invoke(app, ["serve", "--model-file", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    assert result.exit_code != 0
    assert "expected exactly one *.onnx file" in result.output
