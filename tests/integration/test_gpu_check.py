"""``loadtests/gpu_check`` (``make gpu-check``) on a machine without a GPU: the dry run CI sees.

It must print the environment, skip every GPU stage with its reason, print the results table,
write the JSON and exit 0, quickly. A wheel folder is installed only where its packages are
missing or older: one made-up package is installed, an older pytest than this one is not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "loadtests" / "gpu_check"  # run as a folder: python3 loadtests/gpu_check
STAGES = ("tests", "engine", "preprocess", "server")


def _wheel(folder: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel: one empty module and its metadata."""
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", f"{name}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU: the check would run")
def test_dry_run_skips_every_gpu_stage_with_a_reason(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "gpu_check_probe", "1.0")
    _wheel(wheels, "pytest", "1.0")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(PACKAGE), "--wheels", str(wheels)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    environment, results = text.split("\nenvironment\n", 1)[1].split("\ngpu check results", 1)
    for item in ("python", "torch", "gpu", "torchvision", "pydantic", "onnxruntime"):
        assert f"\n{item} " in environment
    assert "installed 1 of 2 wheels" in environment
    for stage in STAGES:
        assert f"\n{stage}: skipped: " in text
        assert any(line.split()[:2] == [stage, "skipped"] and len(line.split()) > 2 for line in results.splitlines())

    report = json.loads((out / "gpu-check.json").read_text())
    assert [s["name"] for s in report["stages"]] == list(STAGES)
    assert all(s["status"] == "skipped" and s["reason"] for s in report["stages"])
    assert report["wheels"]["installed"] == ["gpu-check-probe==1.0"]
    assert (Path(report["wheels"]["site"]) / "gpu_check_probe" / "__init__.py").is_file()
    assert report["environment"]["torch"]["cuda_available"] is False
    assert (out / "gpu-check.log").is_file()
