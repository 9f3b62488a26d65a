"""Goodput of model folders against each other at one p99 budget, in alternating rounds.

    python loadtests/tune_compare.py model_repo --model resnet18 --model resnet18-tuned:2 \
        --p99-ms 250 --rounds 2 --images ../shared/data/imagenet-sample-300 --out loadtests/reports/<date>-tune

Each round serves every model in turn (``NAME:WORKERS`` starts that many worker processes, the
default one; ``NAME:WORKERS:HIGH_RPS`` sets the search's upper end for that model), alone on the machine, and runs the max-rate search (Poisson arrivals, the
highest rate whose p99 stays under the budget with no error, 5 bisection steps) with the same
images and settings. Rounds alternate the order, so drift over the run falls on every model
alike. Writes ``compare.json`` and ``compare.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from resserve.perf.bench_engine import environment
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import generate, load_folder
from resserve.perf.measure import MeasurementSettings
from resserve.perf.search import find_max_rate
from resserve.perf.server_process import server_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path)
    parser.add_argument("--model", action="append", required=True,
                        help="NAME, NAME:WORKERS or NAME:WORKERS:HIGH_RPS (the search's upper end for it)")
    parser.add_argument("--p99-ms", type=float, default=250.0)
    parser.add_argument("--high-rps", type=float, default=400.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--window-s", type=float, default=6.0)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    payloads = load_folder(args.images) if args.images else generate()
    settings = MeasurementSettings(warmup_s=2.0, window_s=args.window_s, stable_windows=1, max_windows=1)
    specs = [m.split(":") for m in args.model]
    models = [(f[0], int(f[1]) if len(f) > 1 else 1) for f in specs]
    high = {f[0]: float(f[2]) if len(f) > 2 else args.high_rps for f in specs}
    runs: list[dict] = []
    for round_index in range(args.rounds):
        order = models if round_index % 2 == 0 else models[::-1]
        for name, workers in order:
            started = time.monotonic()
            with server_process(args.repo, "--model", name, "--workers", str(workers), "--no-build-missing",
                                log_level="warning") as server:
                async def search(url: str, top: float) -> dict:
                    async with LoadGenerator(url, payloads) as generator:
                        found = await find_max_rate(generator, args.p99_ms, top, settings,
                                                    iterations=args.iterations)
                    return {"goodput_rps": found.max_rate_rps, "p99_ms": found.p99_ms,
                            "probes": [f"{p.rate_rps:.1f} {'pass' if p.passed else 'fail'}: {p.why}"
                                       for p in found.probes]}

                result = asyncio.run(search(f"{server.url}/v2/models/{name}/classify", high[name]))
            runs.append({"round": round_index, "model": name, "workers": workers,
                         "seconds": round(time.monotonic() - started, 1), **result})
            print(f"round {round_index} {name} (w{workers}): {result['goodput_rps']:.1f} req/s, "
                  f"p99 {result['p99_ms'] or 0:.0f} ms", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"environment": environment(), "p99_ms": args.p99_ms, "images": str(args.images or "generated"),
           "runs": runs}
    (args.out / "compare.json").write_text(json.dumps(doc, indent=1))
    lines = [f"| model | workers | goodput req/s per round (p99 <= {args.p99_ms:g} ms) | median | p99 ms per round |",
             "|---|---|---|---|---|"]
    for name, workers in models:
        mine = [r for r in runs if r["model"] == name]
        goodputs = ", ".join(f"{r['goodput_rps']:.1f}" for r in mine)
        p99s = ", ".join(f"{r['p99_ms'] or 0:.0f}" for r in mine)
        median = statistics.median(r["goodput_rps"] for r in mine)
        lines.append(f"| {name} | {workers} | {goodputs} | {median:.1f} | {p99s} |")
    (args.out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
