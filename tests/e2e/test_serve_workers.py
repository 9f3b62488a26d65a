"""``resserve serve --workers 2``: real worker processes on one port. Readiness needs every worker,
/metrics sums them, a killed worker comes back, SIGTERM drains them all losing nothing, and
repository control is refused rather than reaching one worker."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from resserve.perf.server_process import server_process
from resserve.server.workers import STALE_AFTER_S
from tests.server_harness import jpeg, write_model
from tests.server_harness import wait_for as harness_wait_for

TOKEN = "control-secret"
# Longer than the SIGSTOP of the readiness test below lasts, short enough for the hung-worker test.
WORKER_TIMEOUT_S = 15.0


def make_repo(tmp_path: Path, model_onnx: Path) -> Path:
    repo = tmp_path / "repo"
    # Batch size 1 and engine threads from the worker's own cores (pinned: one each here).
    write_model(repo, "r18", model_onnx, max_batch_size=1, intra_op_threads=None,
                dynamic_batching={"max_queue_delay_ms": 0})
    # Every batch sleeps a second: requests are surely still in flight when SIGTERM lands.
    write_model(repo, "slow", model_onnx, intra_op_threads=None, dynamic_batching={"max_queue_delay_ms": 0},
                fault_injection={"hang_every_n_batches": 1, "hang_s": 1.0})
    return repo


@pytest.fixture
def workers(model_onnx: Path, tmp_path: Path) -> Iterator:
    # The model is not built yet: worker 0 builds it, worker 1 loads it from worker 0's build log.
    with server_process(make_repo(tmp_path, model_onnx), "--workers", "2", log_dir=tmp_path, kill=True,
                        env={"RESSERVE_CONTROL_TOKEN": TOKEN, "RESSERVE_LOG_FORMAT": "text",
                             "RESSERVE_WORKER_TIMEOUT_S": str(WORKER_TIMEOUT_S)}) as server:
        yield server


def worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]


def shared_folder(supervisor: int) -> str:
    """The workers' beats and readiness files, for a failure's message."""
    pid = worker_pids(supervisor)[0]
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    folder = Path(environ["PROMETHEUS_MULTIPROC_DIR"]).parent
    now = time.time()
    return "; ".join(f"{f.relative_to(folder)}: {f.read_text()!r} {now - f.stat().st_mtime:.1f} s old"
                     for sub in ("alive", "ready") for f in sorted((folder / sub).iterdir()))


def wait_for(predicate, timeout_s: float = 60.0, every_s: float = 0.2):  # type: ignore[no-untyped-def]
    """Workers start in seconds: a longer default wait, polled less often."""
    return harness_wait_for(predicate, timeout_s, every_s)


def probe(url: str) -> httpx.Response | None:
    """Readiness on a fresh connection; None when it times out."""
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2, headers={"connection": "close"})
    except httpx.TimeoutException:
        return None


def classify(url: str, seed: int = 0) -> int:
    # A fresh connection each time, so the kernel may hand it to either worker.
    return httpx.post(f"{url}/v2/models/r18/classify", content=jpeg(seed=seed), timeout=60,
                      headers={"content-type": "image/jpeg", "connection": "close"}).status_code


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(part in (match.group(1) or "").split(",") for part in wanted.split(",") if part):
            total += float(match.group(2))
    return total


def test_two_workers_serve_one_port_with_metrics_summed(workers) -> None:
    pids = worker_pids(workers.process.pid)
    assert len(pids) == 2
    affinity = [os.sched_getaffinity(pid) for pid in pids]
    if len(os.sched_getaffinity(0)) >= 2:  # pinned: disjoint shares of the cores
        assert not affinity[0] & affinity[1]
    statuses = [classify(workers.url, seed) for seed in range(12)]
    assert statuses == [200] * 12
    # Whichever worker answers the scrape, the counter is the sum over both.
    counts = {metric(workers.url, "resserve_http_requests_total", endpoint="classify", status="200")
              for _ in range(6)}
    assert counts == {12.0}
    assert metric(workers.url, "resserve_model_ready", model="r18") == 1.0  # livemin: ready in both


def test_readiness_needs_every_worker_and_a_killed_one_comes_back(workers) -> None:
    first, second = worker_pids(workers.process.pid)
    os.kill(second, signal.SIGSTOP)  # hung: its heartbeat goes stale; the other worker answers probes
    try:
        # A probe the kernel hands to the stopped worker times out (a failed probe, as a kubelet's);
        # one that reaches the other worker is refused once the heartbeat is stale.
        refused = wait_for(lambda: (r := probe(workers.url)) is not None and r.status_code == 503 and r,
                           timeout_s=STALE_AFTER_S + 20)
        assert refused and "of 2 not ready" in refused.json()["error"]
    finally:
        os.kill(second, signal.SIGCONT)
    assert wait_for(lambda: httpx.get(f"{workers.url}/v2/health/ready", timeout=5).status_code == 200)
    before = metric(workers.url, "resserve_http_requests_total", endpoint="classify", status="200")
    assert classify(workers.url) == 200
    # Counted just after the response is sent: once the sum shows it, it is in a worker's file.
    assert wait_for(lambda: metric(workers.url, "resserve_http_requests_total", endpoint="classify",
                                   status="200") == before + 1, timeout_s=10)
    os.kill(first, signal.SIGKILL)
    restarted = wait_for(lambda: len(p := worker_pids(workers.process.pid)) == 2 and first not in p and p)
    assert restarted, workers.output()
    assert wait_for(lambda: httpx.get(f"{workers.url}/v2/health/ready", timeout=5).status_code == 200)
    assert [classify(workers.url, seed) for seed in range(4)] == [200] * 4
    # The dead worker's counts stay in the sum; its live gauges went with it.
    after = metric(workers.url, "resserve_http_requests_total", endpoint="classify", status="200")
    assert after == before + 5
    assert "exited with code -9; restarting it" in workers.output()


def test_a_hung_worker_is_killed_and_restarted(workers) -> None:
    """A worker whose event loop is stuck (here: stopped) is killed after worker_timeout_s and
    restarted; before, it stayed unready for ever and the pod with it."""
    assert wait_for(lambda: httpx.get(f"{workers.url}/v2/health/ready", timeout=5).status_code == 200)
    hung = worker_pids(workers.process.pid)[1]
    os.kill(hung, signal.SIGSTOP)
    restarted = wait_for(lambda: len(p := worker_pids(workers.process.pid)) == 2 and hung not in p and p,
                         timeout_s=WORKER_TIMEOUT_S + 30)
    assert restarted, f"{shared_folder(workers.process.pid)}\n{workers.output()}"
    assert "stopped answering: no heartbeat for" in workers.output()
    assert wait_for(lambda: httpx.get(f"{workers.url}/v2/health/ready", timeout=5).status_code == 200)
    assert [classify(workers.url, seed) for seed in range(4)] == [200] * 4


def test_repository_control_is_refused_with_workers(workers) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{workers.url}/v2/repository/models/r18/load", timeout=10).status_code == 401
    refused = httpx.post(f"{workers.url}/v2/repository/models/r18/unload", headers=auth, timeout=10)
    assert refused.status_code == 409 and "2 workers" in refused.json()["error"]
    assert httpx.post(f"{workers.url}/v2/repository/index", headers=auth, timeout=10).status_code == 200
    assert classify(workers.url) == 200  # still served


async def test_sigterm_drains_every_worker_losing_nothing(workers) -> None:
    async with httpx.AsyncClient(base_url=workers.url, timeout=60) as client:
        # Open the connections first (each lands on one worker), so every request below is
        # accepted before the signal.
        await asyncio.gather(*(client.get("/v2/health/live") for _ in range(16)))
        tasks = [asyncio.create_task(client.post("/v2/models/slow/classify", content=jpeg(seed=i),
                                                 headers={"content-type": "image/jpeg"})) for i in range(16)]
        # Every request received (summed over workers; the scrape itself is one more in flight),
        # each worker's batches sleeping: a request not yet written when the signal lands could meet
        # a keep-alive connection the server is closing, which is no drain's fault.
        in_flight = await asyncio.to_thread(
            wait_for, lambda: metric(workers.url, "resserve_http_in_flight_requests") >= 17, 30.0, 0.01)
        assert in_flight, "the 16 requests never were all in flight"
        workers.process.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 16
    code = await asyncio.to_thread(workers.process.wait, 90)
    assert code == 0, workers.output()
    assert "every worker drained and exited" in workers.output()


def test_a_second_server_on_the_same_port_is_refused(workers, tmp_path: Path) -> None:
    """The attack (issue 30): a second ``serve --workers`` on a taken port joined the first one's
    SO_REUSEPORT group silently, and the kernel split connections between two unrelated servers."""
    import subprocess
    import sys

    port = workers.url.rsplit(":", 1)[1]
    second = subprocess.run([sys.executable, "-m", "resserve.cli", "serve", "--model-repo", str(tmp_path / "repo"),
                             "--host", "127.0.0.1", "--port", port, "--workers", "2"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in second.stdout + second.stderr
    assert classify(workers.url) == 200  # the first one goes on, alone on its port
