"""The seven attacks of issue 30 against a real ``resserve serve`` of one checkout: what each costs
the server and whether the probes stay answered. Run it on the old and the new checkout for the
before/after table of docs/reliability-and-security.md.

    git worktree add /tmp/resserve-old <commit>
    python loadtests/hostile_network.py --checkout /tmp/resserve-old --json before.json
    python loadtests/hostile_network.py --checkout . --json after.json

Each attack gets a fresh server (API keys set, the tests' tiny classifier, HTTP and gRPC on
127.0.0.1), bounded in count and time; server memory is the RSS of its whole process tree.
The checkout's code is what serves (``PYTHONSAFEPATH=1 PYTHONPATH=<checkout>``); this one's
load generator drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resserve.perf.overload import rss_mib  # noqa: E402
from resserve.perf.server_process import ServerProcess, free_port, server_process  # noqa: E402
from tests.model_repo_fixtures import tiny_classifier  # noqa: E402
from tests.server_harness import write_model  # noqa: E402

KEY = "k" * 32
MIB = 1024 * 1024
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@contextlib.contextmanager
def serving(checkout: Path, repo: Path, logs: Path, env: dict[str, str] | None = None) -> Iterator[tuple[ServerProcess, int]]:
    grpc_port = free_port()
    command = [sys.executable, "-m", "resserve", "serve", "--model-repo", str(repo), "--host", "127.0.0.1",
               "--port", "{port}"]
    full_env = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(checkout.resolve()), "RESSERVE_API_KEYS": KEY,
                "RESSERVE_GRPC_PORT": str(grpc_port), **(env or {})}
    with server_process(None, command=command, log_dir=logs, env=full_env, kill=True) as server:
        yield server, grpc_port


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


class Prober:
    """Liveness and readiness on fresh connections once a second, in a thread, while an attack runs."""

    def __init__(self, url: str, timeout_s: float = 3.0) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.answers: list[str] = []
        self.slowest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in ("/v2/health/live", "/v2/health/ready"):
                started = time.monotonic()
                try:
                    status = str(httpx.get(self.url + path, timeout=self.timeout_s).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                self.answers.append(status)
            self._stop.wait(1.0)

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for answer in self.answers:
            counts[answer] = counts.get(answer, 0) + 1
        return {"probes": counts, "slowest_probe_s": round(self.slowest_s, 2)}


def peak_rss(pid: int, run: Callable[[], Any], every_s: float = 0.05) -> tuple[Any, float]:
    """Run ``run`` while sampling the server's RSS; its result and the peak growth in MiB."""
    before = rss_mib(pid) or 0.0
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid) or 0.0)
            done.wait(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join(5)
    return result, round(peak - before, 1)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server answered (a 408) or closed; False while it still holds the socket open."""
    sock.settimeout(0.05)
    try:
        sock.recv(65536)
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


# 1. Idle and half-sent connections ---------------------------------------------------------------
def idle_connections(server: ServerProcess, hold_s: float, sockets: int = 512) -> dict[str, Any]:
    held = [connect(server.url) for _ in range(sockets)]
    for sock in held[::2]:
        sock.sendall(b"POST /v2/models/tiny/classify HTTP/1.1\r\nHost: x\r\nContent-Le")
    with Prober(server.url) as prober:
        time.sleep(hold_s)
    closed = sum(closed_by_server(sock) for sock in held)
    for sock in held:
        sock.close()
    return {"sockets": sockets, "hold_s": hold_s, "closed_by_server": closed, **prober.summary()}


# 2. gRPC streams that never send a message --------------------------------------------------------
async def _held_streams(target: str, count: int, hold_s: float) -> dict[str, Any]:
    release = asyncio.Event()
    channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])

    async def never() -> Any:
        await release.wait()
        yield service_pb2.ModelInferRequest()

    method = channel.stream_unary(MODEL_INFER, request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                                  response_deserializer=service_pb2.ModelInferResponse.FromString)
    calls = [method(never()) for _ in range(count)]
    await asyncio.sleep(1.0)
    answered, asked, slowest = 0, 0, 0.0
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
            started = time.monotonic()
            asked += 2
            with contextlib.suppress(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=5)
                answered += 1
                await service_pb2_grpc.GRPCInferenceServiceStub(fresh).ServerLive(
                    service_pb2.ServerLiveRequest(), timeout=5)
                answered += 1
            slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(1.0)
    ended: dict[str, int] = {}
    for call in calls:
        if call.done():
            code = (await call.code()).name
            ended[code] = ended.get(code, 0) + 1
    release.set()
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)  # settled before the loop closes
    await channel.close()
    return {"streams": count, "hold_s": hold_s, "health_and_live_answered": f"{answered}/{asked}",
            "slowest_s": round(slowest, 2), "held_calls_ended_by_server": ended}


def held_grpc_streams(grpc_port: int, hold_s: float) -> dict[str, Any]:
    return asyncio.run(_held_streams(f"127.0.0.1:{grpc_port}", 512, hold_s))


# 3. gRPC messages without a key -------------------------------------------------------------------
async def _unauthenticated_messages(target: str, count: int, size: int) -> dict[str, int]:
    request = service_pb2.ModelInferRequest(model_name="tiny", raw_input_contents=[b"\0" * size])
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * MIB)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> None:
            try:
                await stub.ModelInfer(request, timeout=60)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(one() for _ in range(count)))
    return codes


def unauthenticated_grpc(server: ServerProcess, grpc_port: int) -> dict[str, Any]:
    codes, growth = peak_rss(server.process.pid, lambda: asyncio.run(
        _unauthenticated_messages(f"127.0.0.1:{grpc_port}", 48, 19 * MIB)))
    return {"messages": "48 x 19 MiB, no key", "codes": codes, "rss_growth_mib": growth}


# 4. A JPEG with 5,000 scans ------------------------------------------------------------------------
def many_scans_jpeg(scans: int = 5000, size: int = 6000) -> bytes:
    """A valid progressive ``size`` x ``size`` JPEG with its smallest scan repeated up to ``scans``
    scans: a few hundred KiB whose decode cost grows with the scans, pixels under the limit."""
    buffer = io.BytesIO()
    small = np.random.default_rng(0).integers(96, 160, (size // 500, size // 500, 3), dtype=np.uint8)
    Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR).save(
        buffer, format="JPEG", progressive=True, quality=30)
    data = buffer.getvalue()
    end = data.rindex(b"\xff\xd9")
    starts = [i for i in range(len(data)) if data.startswith(b"\xff\xda", i)]
    segments = [data[a:b] for a, b in zip(starts, [*starts[1:], end], strict=True)]
    # A scan of the luma component alone (Ns 1, component 1): it covers every 8x8 block of the
    # full-size plane, where a chroma scan covers a quarter; not the DC scan the others refine.
    luma = [segment for segment in segments[1:] if segment[4] == 1 and segment[5] == 1]
    smallest = min(luma, key=len)
    return data[:end] + smallest * (scans - len(starts)) + data[end:]


def scan_bomb(server: ServerProcess) -> dict[str, Any]:
    bomb = many_scans_jpeg()
    started = time.monotonic()
    before = _cpu_s(server.process.pid)
    answer = httpx.post(f"{server.url}/v2/models/tiny/classify", content=bomb, timeout=600,
                        headers={"content-type": "image/jpeg", "x-api-key": KEY})
    return {"file_kib": len(bomb) // 1024, "status": answer.status_code,
            "answer_s": round(time.monotonic() - started, 2),
            "server_cpu_s": round(_cpu_s(server.process.pid) - before, 2)}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# 5. 40,000 outputs ------------------------------------------------------------------------------
def many_outputs(server: ServerProcess) -> dict[str, Any]:
    outputs = [{"name": f"o{i}"} for i in range(40_000)] + [{"name": "o0"}]
    body = {"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                        "data": [0.0] * 3 * 224 * 224}], "outputs": outputs}
    started = time.monotonic()
    answer = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=120, headers={"x-api-key": KEY})
    return {"outputs": len(outputs), "status": answer.status_code, "answer_s": round(time.monotonic() - started, 2)}


# 6. Header floods -------------------------------------------------------------------------------
def header_flood(server: ServerProcess, mib: int = 100) -> dict[str, Any]:
    def flood() -> int:
        socks = [connect(server.url) for _ in range(4)]
        chunk = b"a" * MIB
        for sock in socks:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Flood: ")
            for _ in range(mib):
                try:
                    sock.sendall(chunk)
                except OSError:
                    break
        time.sleep(1.0)
        answered = 0
        for sock in socks:
            sock.settimeout(1)
            with contextlib.suppress(OSError):
                answered += sock.recv(64).startswith(b"HTTP/1.1 431")
            sock.close()
        return answered

    answered, growth = peak_rss(server.process.pid, flood)
    lines = b"X-API-Key: " + b"a" * 3 + b"\r\n"  # 4.5 M lines in 60 MiB
    block = lines * (60 * MIB // len(lines))
    with Prober(server.url) as prober:
        sock = connect(server.url)
        started = time.monotonic()
        try:
            sock.sendall(b"GET /v2/models/tiny HTTP/1.1\r\nHost: x\r\n" + block + b"\r\n")
        except OSError:
            pass
        sock.settimeout(60)
        try:
            status = sock.recv(64).split(b" ")[1].decode()
        except (OSError, IndexError):
            status = "closed"
        answer_s = time.monotonic() - started
        sock.close()
        time.sleep(1.0)
    return {"unfinished_headers": f"4 x {mib} MiB", "answered_431": answered, "rss_growth_mib": growth,
            "key_lines_block": "60 MiB", "key_lines_status": status, "key_lines_answer_s": round(answer_s, 2),
            **prober.summary()}


# 7. Bodies in flight ------------------------------------------------------------------------------
def bodies_in_flight(server: ServerProcess) -> dict[str, Any]:
    x = np.zeros((33, 3, 224, 224), np.float32)  # 19 MiB
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    binary = header + x.tobytes()
    rows = 26  # ~19 MiB of JSON numbers
    as_json = json.dumps({"inputs": [{"name": "input", "shape": [rows, 3, 224, 224], "datatype": "FP32",
                                      "data": [1.5] * (rows * 3 * 224 * 224)}]}).encode()

    async def send(count: int, body: bytes, headers: dict[str, str]) -> dict[str, int]:
        statuses: dict[str, int] = {}
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            async def one() -> None:
                try:
                    answer = await client.post(f"{server.url}/v2/models/tiny/infer", content=body,
                                               headers={"x-api-key": KEY, **headers})
                    status = str(answer.status_code)
                    if status != "200":  # which limit said no: the body budget or the model's queue
                        status += " " + answer.json().get("error", "")[:40]
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1

            await asyncio.gather(*(one() for _ in range(count)))
        return statuses

    binary_statuses, binary_growth = peak_rss(server.process.pid, lambda: asyncio.run(
        send(96, binary, {"inference-header-content-length": str(len(header))})))
    time.sleep(2.0)
    json_statuses, json_growth = peak_rss(server.process.pid, lambda: asyncio.run(
        send(12, as_json, {"content-type": "application/json"})))
    return {"binary": {"bodies": "96 x 19 MiB", "statuses": binary_statuses, "rss_growth_mib": binary_growth},
            "json": {"bodies": f"12 x {len(as_json) // MIB} MiB", "statuses": json_statuses,
                     "rss_growth_mib": json_growth}}


def live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/live", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--hold-s", type=float, default=15.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", nargs="*", help="attack numbers to run (default: all)")
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-network-{os.getpid()}"
    repo, logs = work / "repo", work / "logs"
    logs.mkdir(parents=True)
    write_model(repo, "tiny", tiny_classifier(work / "tiny.onnx"))
    attacks: dict[str, Callable[[ServerProcess, int], Any]] = {
        "1 idle and half-sent connections": lambda s, g: idle_connections(s, args.hold_s),
        "2 gRPC streams without a message": lambda s, g: held_grpc_streams(g, args.hold_s),
        "3 gRPC messages without a key": unauthenticated_grpc,
        "4 JPEG with 5,000 scans": lambda s, g: scan_bomb(s),
        "5 40,000 OIP outputs": lambda s, g: many_outputs(s),
        "6 header floods": lambda s, g: header_flood(s),
        "7 bodies in flight": lambda s, g: bodies_in_flight(s),
    }
    results: dict[str, Any] = {"checkout": str(args.checkout.resolve())}
    for name, attack in attacks.items():
        if args.only and name.split()[0] not in args.only:
            continue
        with serving(args.checkout, repo, logs) as (server, grpc_port):
            started = time.monotonic()
            try:
                results[name] = attack(server, grpc_port)
            except Exception as exc:  # an attack that breaks the measurement is a result too
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["server_alive_after"] = server.alive() and live(server.url)
            results[name]["took_s"] = round(time.monotonic() - started, 1)
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
