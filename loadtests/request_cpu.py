"""Server CPU per request outside the engine and decode: two checkouts alternating, split by where it goes.

    python loadtests/request_cpu.py --old /tmp/resserve-old --new . --rounds 6 \
        --out loadtests/reports/<date>-request-cpu

The figure ``scaling_costs.py`` calls ``loop_ms``, measured the same way (the tiny classifier of
``scaling_costs.tiny_model_repo``, 48x36 JPEGs, 16 closed-loop clients, 2 s warm-up, 6 s window,
``/v2/models/tiny/classify``), for two checkouts of resserve in alternating order (the order
flips every round, so the machine's drift hits both alike). Each window is split:

- server CPU per request from ``/proc`` per thread group (event loop, preprocessing, engine);
- decode + transform: what the same images cost to decode, resize and normalize on one core in
  this process, with the tiny model's options, measured each round before its servers (the
  server's own stage histograms time wall clock, which counts waits for the GIL);
- **outside the engine and decode** = server CPU - engine threads - decode and transform;
- context switches per request, every thread of the server (``/proc/<pid>/task/*/status``).

Writes ``request_cpu.json`` (every window) and prints a table. The load generator is this
checkout's; only the server differs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from scaling_costs import TINY_SIDE, tiny_model_repo  # noqa: E402

from resserve.contract import PreprocessContract  # noqa: E402

from resserve.perf.bench_engine import environment  # noqa: E402
from resserve.perf.generator import LoadGenerator  # noqa: E402
from resserve.perf.images import Payload  # noqa: E402
from resserve.perf.server_bench import closed_window  # noqa: E402
from resserve.perf.server_process import server_process  # noqa: E402
from resserve.preprocess import DecodeOptions, preprocess_timed  # noqa: E402
from resserve.synthetic import synthetic_jpegs  # noqa: E402

TINY_OPTIONS = DecodeOptions(fast_jpeg_draft=True, fast_transform=True)  # the tiny model's config


def tiny_jpegs() -> list[bytes]:
    return synthetic_jpegs(8, ((48, 36),))


def decode_ms_one_core(seconds: float = 1.0) -> float:
    """Decode, resize and normalize of the load's JPEGs, milliseconds per image on one core."""
    contract = PreprocessContract(resize_size=TINY_SIDE, crop_size=TINY_SIDE)
    bodies, count = tiny_jpegs(), 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        preprocess_timed(bodies[count % len(bodies)], contract, TINY_OPTIONS)
        count += 1
    return 1000 * (time.perf_counter() - started) / count


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches so far, every thread of ``pid``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[-1])
        except OSError:  # the thread ended
            continue
    return total


async def window(url: str, pid: int, concurrency: int, warmup_s: float, window_s: float,
                 decode_ms: float) -> dict[str, Any]:
    bodies = tiny_jpegs()
    payloads = [Payload(f"{i}.jpg", body, "image/jpeg", 48, 36) for i, body in enumerate(bodies)]
    switches: list[int] = []

    async with LoadGenerator(f"{url}/v2/models/tiny/classify", payloads, max_outstanding=concurrency + 1) as generator:
        # closed_window reads /proc around the window; the switches are read at its edges too.
        original = generator.get_text

        async def get_text(metrics_url: str) -> str:
            switches.append(context_switches(pid))
            return await original(metrics_url)

        generator.get_text = get_text  # type: ignore[method-assign]
        measured = await closed_window(generator, f"{url}/metrics", "tiny", concurrency, warmup_s, window_s, pid)
    served = measured.served
    server = {group: seconds for group, seconds in measured.cpu_s.items() if group not in ("load generator", "idle")}
    server_ms = 1000 * sum(server.values()) / served
    engine_ms = 1000 * server.get("engine threads", 0.0) / served
    return {"requests_s": measured.img_s, "served": served, "server_cpu_ms": server_ms,
            "by_thread_group_ms": {group: 1000 * seconds / served for group, seconds in server.items()},
            "engine_ms": engine_ms, "decode_transform_ms": decode_ms,
            "outside_engine_and_decode_ms": server_ms - engine_ms - decode_ms,
            "context_switches": (switches[-1] - switches[0]) / served if len(switches) >= 2 else None}


def run(old: Path, new: Path, rounds: int, concurrency: int, window_s: float) -> list[dict[str, Any]]:
    points = []
    with tempfile.TemporaryDirectory(prefix="resserve-tiny-") as folder:
        repo = tiny_model_repo(Path(folder))
        for round_index in range(rounds):
            decode_ms = decode_ms_one_core()
            for label in (["old", "new"] if round_index % 2 == 0 else ["new", "old"]):
                checkout = old if label == "old" else new
                env = {"PYTHONPATH": str(checkout.resolve()), "PYTHONSAFEPATH": "1"}
                with server_process(repo, "--model", "tiny", log_level="warning", env=env) as server:
                    point = asyncio.run(window(server.url, server.process.pid, concurrency, 2.0, window_s, decode_ms))
                point.update(round=round_index, checkout=label)
                points.append(point)
                print(f"round {round_index} {label}: {point['requests_s']:.0f} req/s, server {point['server_cpu_ms']:.3f} "
                      f"ms/request, outside engine and decode {point['outside_engine_and_decode_ms']:.3f}, "
                      f"context switches {point['context_switches']:.1f}", flush=True)
    return points


def table(points: list[dict[str, Any]]) -> str:
    keys = [("requests_s", "requests/s", 0), ("server_cpu_ms", "server CPU ms/request", 3),
            ("outside_engine_and_decode_ms", "outside engine and decode ms", 3),
            ("decode_transform_ms", "decode + transform ms", 3), ("engine_ms", "engine threads ms", 3),
            ("context_switches", "context switches/request", 1)]
    lines = ["| figure (median of rounds) | old | new | new / old (median of per-round ratios) |", "|---|---|---|---|"]
    rounds = sorted({p["round"] for p in points})
    for key, name, digits in keys:
        old = statistics.median(p[key] for p in points if p["checkout"] == "old")
        new = statistics.median(p[key] for p in points if p["checkout"] == "new")
        by_round = {(p["round"], p["checkout"]): p[key] for p in points}
        ratio = statistics.median(by_round[r, "new"] / by_round[r, "old"] for r in rounds if by_round[r, "old"])
        lines.append(f"| {name} | {old:.{digits}f} | {new:.{digits}f} | {ratio:.2f} |")
    for group in ("event loops", "preprocessing threads", "engine threads"):
        old = statistics.median(p["by_thread_group_ms"].get(group, 0.0) for p in points if p["checkout"] == "old")
        new = statistics.median(p["by_thread_group_ms"].get(group, 0.0) for p in points if p["checkout"] == "new")
        lines.append(f"| {group} ms/request | {old:.3f} | {new:.3f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the baseline checkout (a git worktree)")
    parser.add_argument("--new", type=Path, default=Path("."))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--window-s", type=float, default=6.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    points = run(args.old, args.new, args.rounds, args.concurrency, args.window_s)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "request_cpu.json").write_text(json.dumps(
        {"environment": environment(), "settings": {k: str(v) for k, v in vars(args).items()}, "points": points},
        indent=2) + "\n")
    print(table(points))


if __name__ == "__main__":
    main()
