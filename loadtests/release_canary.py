"""The release report: what shadowing costs, and what the canary says about an int8 candidate.

    python loadtests/release_canary.py --images ../shared/data/imagenet-sample-300 \
        --out loadtests/reports/2026-12-07-release

One repository, one server (``resserve serve``, 127.0.0.1):

- ``r50``: version 1 resnet50 fp32 (ONNX Runtime), version 2 the same weights int8 (ONNX Runtime,
  calibrated on 100 of the photos, its accuracy report on the other 200), built with
  ``resserve build --new-version`` after the config changed precision. Every unversioned request
  goes to version 1 and is shadowed to version 2 (``action: report``): the story.
- ``plain`` and ``shadowed``: version 1 alone, and version 1 shadowed at 25% to version 2 (the
  same built folders); ``resserve loadtest compare`` interleaves them window by window (ABBA) at
  each offered rate: the overhead.

Weights are seeded random (no model hub here): the agreement figures are about the int8 build
against its fp32 source, which is what a canary judges, not about ImageNet accuracy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from resserve.builder.build_pipeline import BuildPipeline
from resserve.metadata import AccuracyReport
from resserve.perf.bench_engine import environment
from resserve.perf.compare import compare
from resserve.perf.images import load_folder
from resserve.perf.server_process import server_process
from resserve.repository import ModelRepository

BASE = {
    "source": {"arch": "resnet50", "random_weights": True, "seed": 0},
    "engine": "onnxruntime",
    "max_batch_size": 8,
    "instance_count": 1,
    "dynamic_batching": {"max_queue_delay_ms": 2, "max_queue_size": 128, "default_timeout_ms": 60000},
    "warmup_batch_sizes": [1, 8],
}


def write(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def build_repository(root: Path, photos: Path) -> AccuracyReport:
    """r50 version 1 (fp32) and version 2 (int8); plain, shadowed and story reuse those folders."""
    calibration = {"images": "photos", "count": 100, "held_out": 200, "min_top1_agreement": 0.9}
    folder = root / "r50"
    write(folder, {**BASE, "precision": "fp32"})
    (folder / "photos").symlink_to(photos.resolve())
    builder = BuildPipeline(ModelRepository(root))
    builder.build("r50")
    write(folder, {**BASE, "precision": "int8", "calibration": calibration})
    builder.build("r50", new_version=True)
    report = AccuracyReport.read(folder / "2")
    assert report is not None, "the int8 build wrote no accuracy report"
    release = {"version_policy": {"all": True}, "traffic": {"split": {"1": 100}}}
    for name, shadow in (("story", {"target": "2", "fraction": 1.0}), ("shadowed", {"target": "2", "fraction": 0.25}),
                         ("plain", None)):
        traffic = {"split": {"1": 100}, **({"shadow": shadow} if shadow else {})}
        if name == "story":
            traffic["promote"] = {"min_compared": 300, "min_top1_agreement": 0.99, "max_p99_ratio": 1.25,
                                  "action": "report"}
        config = {**BASE, "precision": "fp32", **release, "traffic": traffic}
        if name == "plain":
            config["version_policy"] = {"specific": [1]}
        write(root / name, config)
        for version in ("1", "2"):
            if name != "plain" or version == "1":
                shutil.copytree(folder / version, root / name / version, symlinks=True)
    return report


def story(url: str, photos: Path) -> dict:
    """The 300 photos, one request each, unversioned: version 1 answers, version 2 is compared."""
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with httpx.Client(base_url=url, timeout=120) as client:
        for path in files:
            response = client.post("/v2/models/story/classify", content=path.read_bytes(),
                                   headers={"content-type": "image/jpeg"})
            response.raise_for_status()
            assert response.json()["model_version"] == "1"
        deadline = time.monotonic() + 120
        while True:
            status = client.get("/v2/models/story/canary").json()
            done = status["comparisons"] and status["comparisons"][0]["compared"] >= len(files)
            if done or time.monotonic() > deadline:
                return status
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="the real photos (imagenet-sample-300)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rates", default="4,8,12", help="offered requests/s for the overhead comparison")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="resserve-release-") as tmp:
        root = Path(tmp) / "repo"
        started = time.monotonic()
        offline = build_repository(root, args.images)
        built_s = time.monotonic() - started
        with server_process(root, "--no-build-missing", ready_timeout_s=600) as server:
            canary = story(server.url, args.images)
            payloads = load_folder(args.images)
            points = asyncio.run(compare(server.url, ("plain", "shadowed"), payloads,
                                         [float(r) for r in args.rates.split(",")], window_s=args.window_s,
                                         rounds=args.rounds))
            metrics = httpx.get(f"{server.url}/metrics").text
    dropped = [line for line in metrics.splitlines() if line.startswith("resserve_shadow_dropped_total")]
    result = {
        "environment": environment(),
        "build_s": round(built_s, 1),
        "offline_accuracy_report": offline.model_dump(mode="json"),
        "canary": canary,
        "overhead": [p.model_dump(mode="json") for p in points],
        "shadow_dropped": dropped,
        "command": "python loadtests/release_canary.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    }
    (args.out / "release.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"offline": offline.summary(), "canary": canary["comparisons"],
                      "decisions": canary["decisions"]}, indent=2))
    for point in points:
        print(point.rate_rps, [(s.model, round(s.throughput_img_s, 2), s.latency_ms) for s in point.sides])


if __name__ == "__main__":
    main()
