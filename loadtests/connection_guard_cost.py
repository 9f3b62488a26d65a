"""What the connection guard costs per request, and what a header flood costs the server, stock
uvicorn against resserve's guarded protocols (:mod:`resserve.server.connection_guard`).

    python loadtests/connection_guard_cost.py --rounds 5 --requests 20000 --out loadtests/reports/<dir>

Per request: one server process per protocol serves a trivial ASGI app on 127.0.0.1; a client
sends ``--requests`` keep-alive GETs over 4 connections (pipelined in fours); the server's CPU time
(``/proc/<pid>/stat``) per request is the figure. Interleaved rounds, medians reported.

Flood: 4 connections each send ``--flood-mib`` MiB of one unfinished header; the server's RSS
growth (``VmRSS``) and whether it answered.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

SERVER = r"""
import sys, uvicorn
from resserve.server.connection_guard import GuardedConfig

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

kind, parser, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
common = dict(host="127.0.0.1", port=port, log_level="error", access_log=False, limit_concurrency=512,
              timeout_keep_alive=5)
if kind == "stock":
    config = uvicorn.Config(app, http=parser, h11_max_incomplete_event_size=16384, **common)
else:
    config = GuardedConfig(app, http=parser, header_timeout_s=10, max_header_bytes=16384, **common)
uvicorn.Server(config).run()
"""

REQUEST = b"GET /v2/models/m/ready HTTP/1.1\r\nHost: x\r\nUser-Agent: cost\r\nAccept: */*\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(kind: str, parser: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, kind, parser, str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{kind} server did not start")


def drive(port: int, requests: int, connections: int = 4, depth: int = 4) -> None:
    """``requests`` GETs, ``depth`` in flight per connection, each answer read whole."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)]
    answer = b"HTTP/1.1 200"
    per = requests // (connections * depth)
    for _ in range(per):
        for sock in socks:
            sock.sendall(REQUEST * depth)
        for sock in socks:
            got = b""
            while got.count(answer) < depth or not got.endswith(b"ok"):
                got += sock.recv(65536)
    for sock in socks:
        sock.close()


def per_request_us(kind: str, parser: str, requests: int) -> float:
    process, port = start(kind, parser)
    try:
        drive(port, 800)  # warm up
        before = cpu_s(process.pid)
        drive(port, requests)
        return (cpu_s(process.pid) - before) / requests * 1e6
    finally:
        process.kill()
        process.wait()


def flood(kind: str, parser: str, mib: int, connections: int = 4) -> dict[str, object]:
    process, port = start(kind, parser)
    try:
        drive(port, 64)
        before = rss_mib(process.pid)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(connections)]
        chunk = b"a" * (1 << 20)
        answered = 0
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Flood: ")
            for _ in range(mib):
                try:
                    sock.sendall(chunk)
                except OSError:  # the server answered and closed
                    break
        time.sleep(1.0)
        peak = rss_mib(process.pid)
        for sock in socks:
            sock.settimeout(0.5)
            try:
                answered += sock.recv(64).startswith(b"HTTP/1.1 431")
            except OSError:
                pass
            sock.close()
        return {"rss_growth_mib": round(peak - before, 1), "answered_431": answered, "connections": connections}
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--flood-mib", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    kinds = [("stock", "httptools"), ("guarded", "httptools"), ("stock", "h11"), ("guarded", "h11")]
    samples: dict[str, list[float]] = {f"{k}/{p}": [] for k, p in kinds}
    for _ in range(args.rounds):
        for kind, http in kinds:
            samples[f"{kind}/{http}"].append(per_request_us(kind, http, args.requests))
    floods = {f"{k}/{p}": flood(k, p, args.flood_mib) for k, p in kinds}
    result = {"cpu_us_per_request_median": {k: round(statistics.median(v), 2) for k, v in samples.items()},
              "cpu_us_per_request_samples": {k: [round(x, 2) for x in v] for k, v in samples.items()},
              "flood": floods, "rounds": args.rounds, "requests": args.requests, "flood_mib": args.flood_mib}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "connection_guard_cost.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
