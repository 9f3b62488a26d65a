"""resserve against the peer baseline (``peer_baseline.py``): the same ONNX file or its resserve
variant, the same images and load generator, measured alternately on the same cores.

    python loadtests/peer_compare.py model_repo \
        --pair resnet50-int8=model_repo/resnet50-int8-onnxruntime/1/model.onnx \
        --pair resnet50=model_repo/resnet50/1/model.onnx \
        --images ../shared/data/imagenet-sample-300 --rounds 4 --json loadtests/reports/<date>-variants/peer.json

Each pair is a resserve model and the ONNX file the peer serves. Both servers run for the whole
comparison (an idle server costs no CPU); each round measures one closed-loop point on each,
peer first on even rounds and resserve first on odd ones. The ratio is resserve's images/s over
the peer's in the same round; the summary gives the median over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from resserve.perf.bench_engine import environment
from resserve.perf.server_process import server_process
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import Payload, generate, load_folder
from resserve.perf.measure import MeasurementSettings, closed_point

PEER = Path(__file__).with_name("peer_baseline.py")


async def _rounds(resserve_url: str, peer_url: str, model: str, payloads: list[Payload], concurrency: int,
                  rounds: int, settings: MeasurementSettings) -> list[dict[str, Any]]:
    points = []
    sides = (("peer", f"{peer_url}/v2/models/peer/classify"), ("resserve", f"{resserve_url}/v2/models/{model}/classify"))
    for index in range(rounds):
        for side, url in sides if index % 2 == 0 else sides[::-1]:
            async with LoadGenerator(url, payloads, max_outstanding=concurrency + 1) as generator:
                point = await closed_point(generator, concurrency, settings)
            points.append({"round": index, "server": side, "img_s": point.throughput_img_s,
                           "p50_ms": point.latency_ms.get("p50_ms"), "p99_ms": point.latency_ms.get("p99_ms"),
                           "error_rate": point.error_rate, "statuses": point.statuses})
            print(f"{model} round {index} {side}: {point.throughput_img_s:.1f} img/s, "
                  f"p99 {point.latency_ms.get('p99_ms', float('nan')):.0f} ms, errors {point.error_rate:.3f}",
                  flush=True)
    return points


def summarize(model: str, onnx: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per server and the per-round ratio resserve / peer."""
    by = {side: [p for p in points if p["server"] == side] for side in ("peer", "resserve")}
    ratios = [r["img_s"] / p["img_s"] for p, r in zip(by["peer"], by["resserve"], strict=True) if p["img_s"]]
    return {"model": model, "peer_onnx": onnx,
            **{f"{side}_img_s": round(statistics.median(p["img_s"] for p in mine), 1) for side, mine in by.items()},
            **{f"{side}_p99_ms": round(statistics.median(p["p99_ms"] for p in mine), 0) for side, mine in by.items()},
            "ratio_each_round": [round(r, 3) for r in ratios],
            "ratio": round(statistics.median(ratios), 3) if ratios else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_repo", type=Path)
    parser.add_argument("--pair", action="append", required=True, help="RESSERVE_MODEL=PEER_ONNX (repeat)")
    parser.add_argument("--images", type=Path, help="a folder of images (default: generated 500x375)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="resserve's worker processes (serve --workers)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    payloads = load_folder(args.images) if args.images else generate(sizes=((500, 375),), per_size=16)
    settings = MeasurementSettings(warmup_s=args.warmup_s, window_s=args.window_s, stable_windows=2, max_windows=2)
    results = []
    for pair in args.pair:
        model, onnx = pair.split("=", 1)
        with server_process(args.model_repo, "--model", model, "--no-build-missing", "--workers", str(args.workers),
                            log_level="warning") as ours, \
                server_process(None, command=[sys.executable, str(PEER), onnx, "--port", "{port}"]) as peer:
            points = asyncio.run(_rounds(ours.url, peer.url, model, payloads, args.concurrency, args.rounds, settings))
        results.append({**summarize(model, onnx, points), "points": points})
        print(json.dumps({k: v for k, v in results[-1].items() if k != "points"}), flush=True)
    document = {"environment": environment(), "images": str(args.images or "generated 500x375"), "workers": args.workers,
                "payloads": len(payloads), "concurrency": args.concurrency, "settings": settings.model_dump(),
                "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
