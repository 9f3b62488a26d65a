"""What one access line costs the server: the same cheap request with ``RESSERVE_ACCESS_LOG`` on
and off, server CPU per request from ``/proc``.

    python loadtests/access_log_cost.py model_repo --model resnet18 --rounds 3 --seconds 10 \
        --json loadtests/reports/<date>-access-log-cost/points.json

The request is ``GET /v2/models/{model}`` (model metadata): the cheapest answer that goes through
every middleware, so the line's share is as large as it can be; an image request costs the server
tens of milliseconds of CPU beside it. The server logs JSON (as in a container) to a file. On and
off alternate within each round (on, off / off, on) so that drift hits both alike. The client runs
in this process on the same cores, so requests per second are shown but CPU per request is the
figure to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from resserve.perf.bench_engine import environment
from resserve.perf.server_process import server_process

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def _load(url: str, concurrency: int, seconds: float) -> int:
    """Closed loop for ``seconds``; the number of 200 answers."""
    done = 0
    stop = time.monotonic() + seconds

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < stop:
            if (await session.get(url)).status_code == 200:
                done += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return done


def point(repo: Path, model: str, access_log: bool, concurrency: int, seconds: float) -> dict[str, Any]:
    env = {"RESSERVE_ACCESS_LOG": "true" if access_log else "false", "RESSERVE_LOG_FORMAT": "json"}
    with server_process(repo, "--model", model, env=env) as server:
        url = f"{server.url}/v2/models/{model}"
        asyncio.run(_load(url, concurrency, 2.0))  # warm-up
        pid = server.process.pid
        cpu_before, started = _cpu_s(pid), time.perf_counter()
        requests = asyncio.run(_load(url, concurrency, seconds))
        cpu_s, wall_s = _cpu_s(pid) - cpu_before, time.perf_counter() - started
        lines = sum(1 for line in server.output().splitlines() if '"resserve.access"' in line)
    return {"access_log": access_log, "requests": requests, "requests_per_s": requests / wall_s,
            "server_cpu_us_per_request": cpu_s / requests * 1e6, "access_lines": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_repo", type=Path)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    points = []
    for round_index in range(args.rounds):
        for access_log in (True, False) if round_index % 2 == 0 else (False, True):
            result = {"round": round_index, **point(args.model_repo, args.model, access_log, args.concurrency,
                                                    args.seconds)}
            points.append(result)
            print(f"round {round_index} access_log={'on' if access_log else 'off'}: "
                  f"{result['requests_per_s']:.0f} req/s, {result['server_cpu_us_per_request']:.0f} µs server CPU "
                  f"per request, {result['access_lines']} access lines", flush=True)
    summary = {}
    for state in (True, False):
        mine = [p for p in points if p["access_log"] is state]
        summary["on" if state else "off"] = {
            "requests_per_s": round(statistics.median(p["requests_per_s"] for p in mine), 1),
            "server_cpu_us_per_request": round(statistics.median(p["server_cpu_us_per_request"] for p in mine), 1)}
    summary["line_cpu_us"] = round(summary["on"]["server_cpu_us_per_request"]
                                   - summary["off"]["server_cpu_us_per_request"], 1)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": environment(), "model": args.model, "concurrency": args.concurrency,
                                         "seconds": args.seconds, "summary": summary, "points": points}, indent=2))


if __name__ == "__main__":
    main()
