"""Two checkouts of resserve serving one repository, alternating: what a change costs per request.

    python loadtests/checkout_ab.py --old /tmp/resserve-old --new . --repo REPO --model tiny \
        --rounds 4 --concurrency 8 --json loadtests/reports/<date>-<change>/ab.json

Each round starts ``resserve serve`` from one checkout, then the other (order flipped every
round, so drift hits both alike), measures one closed-loop point against ``/classify`` with small
JPEGs, and reads the server's CPU seconds (``/proc/<pid>/stat``) over the measured windows: server
CPU ms per request is the figure a refactor of the request path must not raise. The load
generator is this checkout's; only the server differs. A model whose engine costs little (a tiny
classifier) makes the request path most of the CPU, where a change to it shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from resserve.perf.bench_engine import environment
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import generate
from resserve.perf.measure import MeasurementSettings, closed_point
from resserve.perf.server_process import server_process

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def metric_families(url: str) -> set[str]:
    """The metric names the server exports: which code runs shows in them."""
    return {family.name for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text)}


def requests_served(url: str, model: str) -> float:
    """Every classify request the server has answered, from its own counter."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "resserve_http_requests" for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("model") == model)


async def one_point(url: str, model: str, pid: int, concurrency: int, settings: MeasurementSettings,
                    image_size: tuple[int, int]) -> dict[str, Any]:
    payloads = generate((image_size,), per_size=16)
    async with LoadGenerator(f"{url}/v2/models/{model}/classify?top_k=5", payloads) as generator:
        served, before = requests_served(url, model), cpu_s(pid)
        point = await closed_point(generator, concurrency, settings)
        spent, served = cpu_s(pid) - before, requests_served(url, model) - served
    return {"img_s": point.throughput_img_s, "p50_ms": point.latency_ms.get("p50_ms"),
            "p99_ms": point.latency_ms.get("p99_ms"), "server_cpu_ms_per_request": 1000 * spent / served,
            "requests": served, "error_rate": point.error_rate}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = MeasurementSettings(warmup_s=args.warmup_s, window_s=args.window_s, stable_windows=2,
                                   max_windows=2)
    checkouts = {"old": Path(args.old).resolve(), "new": Path(args.new).resolve()}
    points: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        order = ["old", "new"] if round_index % 2 == 0 else ["new", "old"]
        for label in order:
            # PYTHONSAFEPATH: the working directory (this checkout) does not go first on the path.
            env = {"PYTHONPATH": str(checkouts[label]), "PYTHONSAFEPATH": "1"}
            with server_process(Path(args.repo), "--model", args.model, "--no-build-missing", env=env) as server:
                point = asyncio.run(one_point(server.url, args.model, server.process.pid, args.concurrency,
                                              settings, tuple(args.image_size)))
                families = metric_families(server.url)
            point.update(round=round_index, checkout=label)
            if args.marker_metric and (args.marker_metric in families) != (label == "new"):
                raise RuntimeError(f"the {label} server's metrics say it runs the other checkout "
                                   f"({args.marker_metric} {'present' if args.marker_metric in families else 'absent'})")
            points.append(point)
            print(json.dumps(point))
    summary = {}
    for label in checkouts:
        mine = [p for p in points if p["checkout"] == label]
        summary[label] = {"img_s_median": statistics.median(p["img_s"] for p in mine),
                          "p99_ms_median": statistics.median(p["p99_ms"] for p in mine),
                          "server_cpu_ms_per_request_median": statistics.median(
                              p["server_cpu_ms_per_request"] for p in mine)}
    # Per round, the two servers ran back to back: their ratio cancels the machine's drift between rounds.
    by_round = {r: {p["checkout"]: p for p in points if p["round"] == r} for r in range(args.rounds)}
    summary["per_round_new_over_old_img_s"] = [by_round[r]["new"]["img_s"] / by_round[r]["old"]["img_s"]
                                               for r in range(args.rounds)]
    summary["per_round_new_over_old_cpu_per_request"] = [
        by_round[r]["new"]["server_cpu_ms_per_request"] / by_round[r]["old"]["server_cpu_ms_per_request"]
        for r in range(args.rounds)]
    summary["median_round_new_over_old_img_s"] = statistics.median(summary["per_round_new_over_old_img_s"])
    summary["median_round_new_over_old_cpu_per_request"] = statistics.median(
        summary["per_round_new_over_old_cpu_per_request"])
    summary["new_over_old_img_s"] = summary["new"]["img_s_median"] / summary["old"]["img_s_median"]
    summary["new_over_old_cpu_per_request"] = (summary["new"]["server_cpu_ms_per_request_median"]
                                               / summary["old"]["server_cpu_ms_per_request_median"])
    settings_out = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {"environment": environment(), "settings": settings_out, "points": points, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the baseline checkout (a git worktree)")
    parser.add_argument("--new", default=".", help="the changed checkout")
    parser.add_argument("--repo", required=True, help="a built model repository both can serve")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224), metavar=("W", "H"))
    parser.add_argument("--marker-metric", help="a metric only the new checkout exports: proves which code served")
    parser.add_argument("--json", type=Path, help="write every point and the summary here")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
