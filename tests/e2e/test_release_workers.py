"""``resserve serve --workers 2`` with ``repository_poll_s``: each worker follows the repository on
its own and both converge on the version the policy names, losing no request meanwhile."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from resserve.builder.build_pipeline import BuildPipeline
from resserve.perf.server_process import server_process
from resserve.repository import ModelRepository
from tests.model_repo_fixtures import tiny_classifier
from tests.server_harness import jpeg, write_model
from tests.server_harness import wait_for as harness_wait_for


def ready_versions(url: str) -> dict[str, float]:
    """``resserve_model_ready`` of model m by version: the smallest over the live workers."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {sample.labels["version"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == "resserve_model_ready" for sample in family.samples if sample.labels.get("model") == "m"}


def test_every_worker_converges_on_the_version_the_policy_names(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    source = tmp_path / "source.onnx"
    tiny_classifier(source, 0)
    write_model(repo, "m", source, max_batch_size=2, intra_op_threads=1)
    builder = BuildPipeline(ModelRepository(repo))
    builder.build("m")
    tiny_classifier(source, 1)
    builder.build("m", new_version=True)
    shutil.move(repo / "m" / "2", tmp_path / "v2")
    failures: list[str] = []
    stop = threading.Event()

    def load(url: str) -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            # A fresh connection each time: the kernel spreads them over both workers.
            response = httpx.post(f"{url}/v2/models/m/classify", content=jpeg(64, 48), timeout=30,
                                  headers={"content-type": "image/jpeg", "connection": "close"})
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")

    with server_process(repo, "--workers", "2", "--no-build-missing", kill=True,
                        env={"RESSERVE_REPOSITORY_POLL_S": "0.2", "RESSERVE_LOG_FORMAT": "text"}) as server:
        assert harness_wait_for(lambda: ready_versions(server.url) == {"1": 1.0}, 30, 0.2), ready_versions(server.url)
        sender = threading.Thread(target=load, args=(server.url,))
        sender.start()
        try:
            shutil.move(tmp_path / "v2", repo / "m" / "2")
            # The gauge first (livemin over the workers that know the version), then the answers: a
            # worker that has not polled yet has no sample for version 2, so only requests spread
            # over fresh connections show that every worker moved.
            converged = harness_wait_for(lambda: ready_versions(server.url).get("2") == 1.0
                                         and ready_versions(server.url).get("1", 0.0) == 0.0, 60, 0.2)
            assert converged, f"{ready_versions(server.url)}\n{server.output()}"
            answered = harness_wait_for(lambda: answered_versions(server.url, 20) == {"2"}, 30, 0.5)
            assert answered, f"{answered_versions(server.url, 20)}\n{server.output()}"
        finally:
            stop.set()
            sender.join(120)
    assert failures == [], failures[:5]


def answered_versions(url: str, count: int) -> set[str]:
    """The versions that ``count`` fresh connections were answered by (the kernel spreads them)."""
    return {httpx.post(f"{url}/v2/models/m/classify", content=jpeg(64, 48), timeout=30,
                       headers={"content-type": "image/jpeg", "connection": "close"}).json()["model_version"]
            for _ in range(count)}
