"""Server CPU per OIP v2 HTTP infer request, for several checkouts serving the same tiny model:
what a change to the OIP parse path costs per request (issue 30: parse slots, places taken
between the header and the conversion).

    python loadtests/oip_parse_cost.py --checkouts /tmp/old . --rounds 3 --requests 2000 \
        --json loadtests/reports/<date>-<change>/oip_parse_cost.json

Each round starts ``resserve serve`` from each checkout in turn (order rotated every round), sends
``--requests`` infer requests (one 1x3x224x224 FP32 row in the binary extension, ``--concurrency`` in flight) and
reads the server's CPU seconds (``/proc/<pid>/stat``) over them. Medians per checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resserve.perf.server_process import server_process  # noqa: E402
from tests.model_repo_fixtures import tiny_classifier  # noqa: E402
from tests.server_harness import write_model  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_body() -> tuple[bytes, dict[str, str]]:
    row = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                     "parameters": {"binary_data_size": row.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}).encode()
    return header + row.tobytes(), {"inference-header-content-length": str(len(header)),
                                    "content-type": "application/octet-stream"}


async def drive(url: str, requests: int, concurrency: int = 8) -> None:
    body, headers = request_body()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def loop(n: int) -> None:
            for _ in range(n):
                answer = await client.post(url, content=body, headers=headers)
                answer.raise_for_status()

        await asyncio.gather(*(loop(requests // concurrency) for _ in range(concurrency)))


def per_request_us(checkout: Path, repo: Path, logs: Path, requests: int, concurrency: int) -> float:
    command = [sys.executable, "-m", "resserve", "serve", "--model-repo", str(repo), "--host", "127.0.0.1",
               "--port", "{port}"]
    env = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(checkout.resolve())}
    with server_process(None, command=command, log_dir=logs, env=env, kill=True) as server:
        url = f"{server.url}/v2/models/tiny/infer"
        asyncio.run(drive(url, 400, concurrency))  # warm up
        before = cpu_s(server.process.pid)
        asyncio.run(drive(url, requests, concurrency))
        return (cpu_s(server.process.pid) - before) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkouts", type=Path, nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight (1: every batch one row, the steadiest figure)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oip-parse-cost-"))
    repo, logs = work / "repo", work / "logs"
    logs.mkdir(parents=True)
    # One engine thread: ONNX Runtime spinning on a second would bury the request path in noise.
    write_model(repo, "tiny", tiny_classifier(work / "tiny.onnx"), intra_op_threads=1)
    names = [str(c) for c in args.checkouts]
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            samples[name].append(per_request_us(Path(name), repo, logs, args.requests, args.concurrency))
            print(f"round {round_ + 1} {name}: {samples[name][-1]:.1f} us/request", flush=True)
    result = {"cpu_us_per_request_median": {k: round(statistics.median(v), 1) for k, v in samples.items()},
              "cpu_us_per_request_samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
              "rounds": args.rounds, "requests": args.requests, "concurrency": args.concurrency, "request": "OIP infer, 1x3x224x224 FP32, binary"}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
