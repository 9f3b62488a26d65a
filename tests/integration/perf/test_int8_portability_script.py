"""loadtests/int8_portability.py on a small int8 model: logits, a remedy built and run, the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from resserve.builder.build_pipeline import BuildPipeline
from resserve.repository import ModelRepository
from tests.model_repo_fixtures import two_conv_classifier
from tests.server_harness import jpeg, write_model

SCRIPT = Path(__file__).parents[3] / "loadtests" / "int8_portability.py"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_logits_remedy_compare_and_speed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    source = two_conv_classifier(tmp_path / "two_conv.onnx")
    write_model(repo, "fp32", source)
    write_model(repo, "int8", source, engine="onnxruntime", precision="int8",
                calibration={"count": 8, "held_out": 8, "check_images": 4, "min_top1_agreement": 0.5})
    for name in ("fp32", "int8"):
        BuildPipeline(ModelRepository(repo)).build(name)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        (images / f"{i}.jpg").write_bytes(jpeg(seed=i))
    out = tmp_path / "out"
    out.mkdir()
    ref = json.loads(_run("logits", str(repo), "fp32", "--images", str(images), "--out", str(out / "ref.npz")))
    assert ref["images"] == 5 and ref["runtime"]["precision"] == "fp32"
    on = json.loads(_run("logits", str(repo), "int8", "--images", str(images), "--exact-kernels", "on",
                         "--out", str(out / "on.npz")))
    assert on["runtime"]["int8_kernels"] == "exact (x64quantprecision)"
    _run("quantize", str(repo), "int8", "--remedy", "u8u8", "--out", str(out / "u8u8.onnx"))
    remedy = json.loads(_run("logits", str(repo), "int8", "--onnx", str(out / "u8u8.onnx"), "--images", str(images),
                             "--limit", "3", "--out", str(out / "u8u8.npz")))
    assert remedy["images"] == 3 and remedy["runtime"]["precision"] == "int8"
    table = _run("compare", str(out / "ref.npz"), str(out / "on.npz"), str(out / "u8u8.npz"),
                 "--json", str(out / "rows.json"))
    assert "| on | " in table and "| u8u8 | " in table
    rows = json.loads((out / "rows.json").read_text())
    assert [r["images"] for r in rows] == [5, 3] and all(0 <= r["top1"] <= 1 for r in rows)
    speed = json.loads(_run("speed", str(repo), "int8", "--rounds", "2", "--batch", "2"))
    assert speed["ms_per_image_median"] > 0 and len(speed["ms_per_image_each"]) == 2
