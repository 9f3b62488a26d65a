"""int8 on a CPU without VNNI, emulated: the same answers as where the model was built, or a refusal.

An AVX2-only CPU (AMD Zen 3) is emulated with qemu-user (``qemu-x86_64 -cpu EPYC-Milan``): its
CPUID has no AVX-512 or VNNI, so ONNX Runtime picks its AVX2 int8 kernels, whose u8 x s8 products
are added in pairs in 16 bits and can saturate. A ResNet-18 int8 model is built here (natively,
with its accuracy report and check images) and opened under the emulator as the server opens it:
with exact kernels (the default, ``auto``) it reproduces the build's answers; with them off the
load-time check refuses it under a floor the build met. Slow under emulation (a minute or two),
so 48 check images. .ci/run installs qemu-user; elsewhere the tests skip with the reason.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from resserve.builder.build_pipeline import BuildPipeline
from resserve.metadata import AccuracyReport
from resserve.repository import ModelRepository

QEMU = shutil.which("qemu-x86_64")
pytestmark = pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64",
    reason="qemu-user (qemu-x86_64) is needed to emulate an AVX2-only CPU: apt-get install qemu-user")
SCRIPT = Path(__file__).with_name("emulated_load_check.py")
MODEL = "r18-int8"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("emulated-repo")
    (root / MODEL).mkdir()
    (root / MODEL / "config.yaml").write_text(yaml.safe_dump({
        "source": {"arch": "resnet18", "random_weights": True, "seed": 0},
        "engine": "onnxruntime", "precision": "int8", "max_batch_size": 16,
        "calibration": {"count": 32, "held_out": 96, "check_images": 48, "min_top1_agreement": 0.5,
                        "load_check": "always"},
    }))
    BuildPipeline(ModelRepository(root)).build(MODEL)
    return root


def _emulated(repo: Path, exact_kernels: str, floor: float) -> dict:
    done = subprocess.run([QEMU, "-cpu", "EPYC-Milan", sys.executable, str(SCRIPT), str(repo), MODEL, exact_kernels,
                           str(floor)], capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    print(lines[-1])  # what ran and the verdict, in the test log (-s / -rA)
    return json.loads(lines[-1][len("RESULT "):])


def _report(repo: Path) -> AccuracyReport:
    report = AccuracyReport.read(ModelRepository(repo).version(MODEL).folder)
    assert report is not None and report.measured_on is not None
    return report


def test_exact_kernels_reproduce_the_build_on_avx2(repo: Path) -> None:
    report = _report(repo)
    result = _emulated(repo, "auto", floor=report.top1_agreement)
    assert result["isa"] == "avx2"
    assert result["runtime"]["int8_kernels"] == "exact (x64quantprecision)"
    assert result["passed"], result
    check = result["check"]
    assert check["built_on"] == report.measured_on.isa and check["here"] == "avx2"
    assert check["reproduced"] and check["estimate_top1"] == pytest.approx(report.top1_agreement)


def test_saturating_kernels_are_refused_under_the_floor_the_build_met(repo: Path) -> None:
    report = _report(repo)
    floor = report.top1_agreement - 0.01  # the build passed it by a point
    result = _emulated(repo, "off", floor=floor)
    assert result["isa"] == "avx2" and result["runtime"]["int8_kernels"] == "saturating"
    assert not result["passed"], result
    reason = result["reason"]
    assert "would serve under its accuracy floor on this CPU" in reason
    assert f"report measured on {report.measured_on.isa}, running on avx2" in reason
    assert f"< floor {floor:.2%}" in reason
