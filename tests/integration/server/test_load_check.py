"""The load-time check on a real server: a reduced-precision model whose report was measured on
another CPU class re-checks its stored images before it turns ready, and fails alone, with the
reason, when this CPU would serve it under its floor; what serves is in the metadata and /metrics.

The CPU cannot be changed inside a test process, so the artifacts say they were measured
elsewhere (the build record's ``measured_on``): what a build Job on another node writes. That
another CPU's kernels really change the answers is tested under an emulated AVX2 CPU
(tests/integration/engines/test_int8_emulated_avx2.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from resserve.agreement import CheckSet
from resserve.builder.build_pipeline import BuildPipeline
from resserve.config import ServerSettings
from resserve.engines.hardware import isa_class
from resserve.repository import ModelRepository
from tests.model_repo_fixtures import two_conv_classifier
from tests.server_harness import jpeg, serve_in_thread, write_model

ELSEWHERE = "avx2" if isa_class() != "avx2" else "avx512_vnni"


def _int8_model(root: Path, name: str, source: Path, **calibration: object) -> Path:
    write_model(root, name, source, engine="onnxruntime", precision="int8",
                calibration={"count": 8, "held_out": 24, "check_images": 16, "min_top1_agreement": 0.5,
                             **calibration})
    return BuildPipeline(ModelRepository(root)).build(name)


def _measured_elsewhere(folder: Path) -> None:
    """Rewrite the version's accuracy report as a build on another instruction-set class would."""
    for record_file in ("accuracy.json", "build.json"):
        record = json.loads((folder / record_file).read_text())
        report = record if record_file == "accuracy.json" else record["accuracy"]
        report["measured_on"]["isa"] = ELSEWHERE
        (folder / record_file).write_text(json.dumps(record))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load-check")
    source = two_conv_classifier(root / "two_conv.onnx", classes=50)
    fp32 = write_model(root, "plain", source)
    BuildPipeline(ModelRepository(root)).build("plain")
    assert not (fp32 / "1" / "check.npz").exists()  # the reference has nothing to check
    # Built here, reported as measured elsewhere: this CPU must reproduce its answers.
    _measured_elsewhere(_int8_model(root, "portable", source))
    # The same, but the stored answers are not what this CPU gives: the check must refuse it.
    moved = _int8_model(root, "moved", source, min_top1_agreement=0.9)
    _measured_elsewhere(moved)
    check = CheckSet.read(moved)
    assert check is not None and len(check.jpegs) == 16
    rolled = np.roll(check.candidate, 1, axis=1)  # the build machine "answered" other classes on half of them
    candidate = np.where(np.arange(16)[:, None] % 2 == 0, rolled, check.candidate)
    CheckSet(check.jpegs, check.reference, candidate.astype(np.float32)).write(moved)
    # Measured on this class: nothing to check, even with a tampered set (the report is trusted here).
    same = _int8_model(root, "same-class", source, min_top1_agreement=0.9)
    CheckSet(check.jpegs, check.reference, candidate.astype(np.float32)).write(same)
    return root


def test_the_check_passes_fails_or_is_skipped_per_model(repo: Path) -> None:
    settings = ServerSettings(model_repo=repo, build_missing=False)
    with serve_in_thread(settings, wait_for="/v2/models/plain/ready") as server:
        for name in ("plain", "portable", "same-class"):
            answer = httpx.post(f"{server.url}/v2/models/{name}/classify", content=jpeg(),
                                headers={"Content-Type": "image/jpeg"}, timeout=30)
            assert answer.status_code == 200, (name, answer.text)
        refused = httpx.post(f"{server.url}/v2/models/moved/classify", content=jpeg(),
                             headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert refused.status_code == 503
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503
        reason = ready.json()["error"]
        assert "model moved failed to load: AccuracyError" in reason
        assert "would serve under its accuracy floor on this CPU" in reason
        assert "top-1 agreement at worst 50.00% < floor 90.00%" in reason
        full = server.app.state.resserve.manager.lifecycle.current("moved").reason  # the readiness answer is shorter
        assert f"report measured on {ELSEWHERE}, running on {isa_class()}; 8 of 16 stored answers changed" in full
        assert str(repo) not in full + reason

        portable = httpx.get(f"{server.url}/v2/models/portable").json()["resserve"]
        assert portable["runtime"]["isa"] == isa_class() and portable["runtime"]["precision"] == "int8"
        assert portable["runtime"]["int8_kernels"] in ("exact", "exact (x64quantprecision)")
        check = portable["load_check"]
        assert check["built_on"] == ELSEWHERE and check["here"] == isa_class()
        assert check["reproduced"] and check["passed"] and check["images"] == 16
        assert httpx.get(f"{server.url}/v2/models/same-class").json()["resserve"]["load_check"] is None
        plain = httpx.get(f"{server.url}/v2/models/plain").json()["resserve"]
        assert plain["load_check"] is None and plain["runtime"]["precision"] == "fp32"
        assert plain["runtime"]["int8_kernels"] is None

        labels = {"model": "portable", "version": "1", "engine": "onnxruntime", "isa": isa_class(),
                  "precision": "int8", "inference_precision": "f32",
                  "int8_kernels": portable["runtime"]["int8_kernels"]}
        assert server.metric("resserve_model_runtime_info", labels) == 1
        assert server.metric("resserve_model_runtime_info", {**labels, "model": "plain", "precision": "fp32",
                                                              "int8_kernels": ""}) == 1
        assert 'resserve_model_runtime_info{' in httpx.get(f"{server.url}/metrics").text


def test_unusable_check_images_fail_the_model_with_a_rebuild_hint(repo: Path, tmp_path: Path) -> None:
    shutil.copytree(repo / "portable", tmp_path / "portable")
    folder = tmp_path / "portable" / "1"
    check = CheckSet.read(folder)
    assert check is not None
    CheckSet(tuple(b"not a jpeg" for _ in check.jpegs), check.reference, check.candidate).write(folder)
    (tmp_path / "portable" / "config.yaml").write_text(
        (repo / "portable" / "config.yaml").read_text().replace(str(repo), str(tmp_path)))
    with serve_in_thread(ServerSettings(model_repo=tmp_path, build_missing=False),
                         wait_for="/v2/health/live") as server:
        reason = server.app.state.resserve.manager.lifecycle.current("portable").reason
        assert reason.startswith("AccuracyError: model portable: its check images are unusable")
        assert "resserve build --force" in reason


def test_a_report_from_another_class_without_check_images_is_refused(repo: Path, tmp_path: Path) -> None:
    shutil.copytree(repo / "portable", tmp_path / "portable")
    (tmp_path / "portable" / "1" / "check.npz").unlink()
    (tmp_path / "portable" / "config.yaml").write_text(
        (repo / "portable" / "config.yaml").read_text().replace(str(repo), str(tmp_path)))
    settings = ServerSettings(model_repo=tmp_path, build_missing=False)
    with serve_in_thread(settings, wait_for="/v2/health/live") as server:
        reason = httpx.get(f"{server.url}/v2/health/ready").json()["error"]
        assert "no check images are stored with it" in reason and "resserve build --force" in reason
