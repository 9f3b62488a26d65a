"""HTTP against gRPC on one resserve process: the same model, images and load generator.

    python loadtests/http_vs_grpc.py model_repo --model resnet50-int8 --images ../shared/data/imagenet-sample-300 \
        --concurrency 4,16 --rounds 3 --json loadtests/reports/<date>-http-vs-grpc/points.json

Starts ``resserve serve`` with HTTP and gRPC ports, then measures closed-loop points alternating
the protocols (HTTP, gRPC, gRPC, HTTP, ...) so that drift hits both alike. HTTP posts the raw
image to ``/v2/models/{model}/classify?top_k=5``; gRPC sends OIP v2 ``ModelInfer`` with the image
as one BYTES element and the classification extension asking for 5 classes: the same work on the
server, each protocol's own framing. The generator runs in this process on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from resserve.perf.bench_engine import environment
from resserve.perf.server_process import free_port, server_process
from resserve.perf.generator import LoadGenerator
from resserve.perf.grpc_generator import GrpcLoadGenerator
from resserve.perf.images import generate, load_folder
from resserve.perf.measure import LoadPoint, MeasurementSettings, closed_point


async def measure(http_url: str, grpc_target: str, model: str, payloads: list, concurrencies: list[int],
                  rounds: int, settings: MeasurementSettings) -> list[dict[str, Any]]:
    """Every (round, concurrency, protocol) point, protocols alternating within a round."""
    http = LoadGenerator(f"{http_url}/v2/models/{model}/classify?top_k=5", payloads)
    grpc_client = GrpcLoadGenerator(grpc_target, model, payloads, http_url, class_count=5)
    scrape = {"metrics_url": f"{http_url}/metrics", "model": model}
    points: list[dict[str, Any]] = []
    async with http, grpc_client:
        for round_index in range(rounds):
            for concurrency in concurrencies:
                order = (("http", http), ("grpc", grpc_client))
                for protocol, generator in order if round_index % 2 == 0 else order[::-1]:
                    point: LoadPoint = await closed_point(generator, concurrency, settings, **scrape)
                    points.append({"round": round_index, "protocol": protocol, **point.model_dump(mode="json")})
                    print(f"round {round_index} c={concurrency} {protocol}: {point.throughput_img_s:.1f} img/s, "
                          f"p50 {point.latency_ms.get('p50_ms', float('nan')):.1f} ms, "
                          f"p99 {point.latency_ms.get('p99_ms', float('nan')):.1f} ms, errors {point.error_rate:.3f}",
                          flush=True)
    return points


def summary(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds per (concurrency, protocol), and gRPC's ratio to HTTP."""
    rows = []
    for concurrency in sorted({p["concurrency"] for p in points}):
        row: dict[str, Any] = {"concurrency": concurrency}
        for protocol in ("http", "grpc"):
            mine = [p for p in points if p["concurrency"] == concurrency and p["protocol"] == protocol]
            row[f"{protocol}_img_s"] = round(statistics.median(p["throughput_img_s"] for p in mine), 1)
            row[f"{protocol}_p50_ms"] = round(statistics.median(p["latency_ms"]["p50_ms"] for p in mine), 1)
            row[f"{protocol}_p99_ms"] = round(statistics.median(p["latency_ms"]["p99_ms"] for p in mine), 1)
            row[f"{protocol}_img_s_each_round"] = [round(p["throughput_img_s"], 1) for p in mine]
        row["grpc_over_http_throughput"] = round(row["grpc_img_s"] / row["http_img_s"], 3)
        row["grpc_over_http_p99"] = round(row["grpc_p99_ms"] / row["http_p99_ms"], 3)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_repo", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=Path, help="a folder of images (default: generated)")
    parser.add_argument("--concurrency", default="4,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    payloads = load_folder(args.images) if args.images else generate()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    settings = MeasurementSettings(warmup_s=args.warmup_s, window_s=args.window_s, max_windows=6)
    grpc_port = free_port()
    with server_process(args.model_repo, "--model", args.model, "--no-build-missing",
                        env={"RESSERVE_GRPC_PORT": str(grpc_port)}) as server:
        points = asyncio.run(measure(server.url, f"127.0.0.1:{grpc_port}", args.model, payloads, concurrencies,
                                     args.rounds, settings))
    result = {"environment": environment(), "model": args.model, "images": str(args.images or "generated"),
              "payloads": len(payloads), "settings": settings.model_dump(), "summary": summary(points),
              "points": points}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
