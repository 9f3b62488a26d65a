"""What gRPC's call limits cost per call: a grpc.aio server whose ``ModelInfer`` answers at once,
without and with resserve's :class:`~resserve.server.oip.grpc_limits.CallLimitInterceptor` (each
unary call becomes a stream call that waits for its message under a deadline).

    python loadtests/grpc_limit_cost.py --rounds 5 --calls 20000 --out loadtests/reports/<dir>

One server process per kind; a client sends ``--calls`` small ModelInfer calls, 16 in flight;
the server's CPU time (``/proc/<pid>/stat``) per call. Interleaved rounds, medians reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

SERVER = r"""
import asyncio, sys, grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from resserve.metrics import Metrics
from resserve.server.oip.grpc_limits import CallLimitInterceptor

class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request, context):
        return service_pb2.ModelInferResponse(model_name=request.model_name)

async def main(kind, port):
    interceptors = [CallLimitInterceptor(512, 60.0, Metrics())] if kind == "limited" else []
    server = grpc.aio.server(interceptors=interceptors)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(target: str, calls: int, concurrency: int = 16) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="m")

        async def loop(n: int) -> None:
            for _ in range(n):
                await stub.ModelInfer(request, timeout=10)

        await asyncio.gather(*(loop(calls // concurrency) for _ in range(concurrency)))


async def per_call_us(kind: str, calls: int) -> float:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, kind, str(port)])
    try:
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                await drive(target, 16)
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await drive(target, 800)  # warm up
        before = cpu_s(process.pid)
        await drive(target, calls)
        return (cpu_s(process.pid) - before) / calls * 1e6
    finally:
        process.kill()
        process.wait()


async def measure(rounds: int, calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"plain": [], "limited": []}
    for round_ in range(rounds):
        for kind in (("plain", "limited") if round_ % 2 == 0 else ("limited", "plain")):
            samples[kind].append(await per_call_us(kind, calls))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    samples = asyncio.run(measure(args.rounds, args.calls))
    result = {"cpu_us_per_call_median": {k: round(statistics.median(v), 1) for k, v in samples.items()},
              "cpu_us_per_call_samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
              "rounds": args.rounds, "calls": args.calls}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "grpc_limit_cost.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
