"""Releasing a new model on a real server: versions side by side under a version policy, a
traffic split, shadow traffic compared without labels, the canary's decision (promote or
reject, written beside the model and kept over a restart), and repository polling that adds
and removes versions under load without losing a request."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from typer.testing import CliRunner

from resserve.builder.build_pipeline import BuildPipeline
from resserve.cli import app as cli_app
from resserve.config import ServerSettings
from resserve.repository import ModelRepository
from resserve.server.scores import softmax
from resserve.server.shadow import compare_scores
from resserve.serving.release import RELEASE_FILE
from tests.model_repo_fixtures import tiny_classifier
from tests.server_harness import free_port, jpeg, serve_in_thread, wait_for, write_model


def two_versions(tmp_path: Path, seeds: tuple[int, int] = (0, 1), **config: Any) -> Path:
    """Model ``m``: version 1 built from a tiny classifier of ``seeds[0]``, version 2 from ``seeds[1]``
    (``resserve build --new-version`` after the source changed)."""
    repo = tmp_path / "repo"
    source = tmp_path / "source.onnx"
    tiny_classifier(source, seeds[0])
    settings: dict[str, Any] = {"max_batch_size": 4, "intra_op_threads": 1,
                                "dynamic_batching": {"max_queue_delay_ms": 0, "max_queue_size": 64}}
    write_model(repo, "m", source, **{**settings, **config})
    builder = BuildPipeline(ModelRepository(repo))
    builder.build("m")
    tiny_classifier(source, seeds[1])
    builder.build("m", new_version=True)
    assert ModelRepository(repo).versions("m") == ["1", "2"]
    return repo


def image_request(data: bytes) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(data).decode()]}]}


def infer(client: httpx.Client, data: bytes, version: str | None = None) -> tuple[str, np.ndarray]:
    """(version that answered, logits) for one image over OIP HTTP."""
    path = "/v2/models/m/infer" if version is None else f"/v2/models/m/versions/{version}/infer"
    response = client.post(path, json=image_request(data))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)


def canary(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v2/models/m/canary", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_two_versions_serve_side_by_side_on_http_and_grpc(tmp_path: Path) -> None:
    repo = two_versions(tmp_path, version_policy={"latest": 2})
    settings = ServerSettings(model_repo=repo, grpc_port=free_port(), build_missing=False)
    with serve_in_thread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        image = jpeg(seed=3)
        answered_1, logits_1 = infer(client, image, "1")
        answered_2, logits_2 = infer(client, image, "2")
        assert (answered_1, answered_2) == ("1", "2")
        assert not np.allclose(logits_1, logits_2)  # two different models answer
        assert infer(client, image)[0] == "2"  # unversioned, no split: the newest
        index = {(e["name"], e["version"]): e["state"] for e in client.post("/v2/repository/index").json()}
        assert index == {("m", "1"): "READY", ("m", "2"): "READY"}
        assert client.get("/v2/models/m").json()["versions"] == ["1", "2"]
        assert client.get("/v2/models/m/versions/1/ready").status_code == 200
        assert client.get("/v2/models/m/versions/3/ready").status_code == 404
        classified = client.post("/v2/models/m/classify", params={"version": "1"}, content=image,
                                 headers={"content-type": "image/jpeg"})
        assert classified.status_code == 200 and classified.json()["model_version"] == "1"
        # tritonclient, both protocols, named versions
        tensor = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(server.grpc_target)
        for version in ("1", "2"):
            h_in = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
            h_in.set_data_from_numpy(tensor)
            g_in = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
            g_in.set_data_from_numpy(tensor)
            over_http = http.infer("m", [h_in], model_version=version)
            over_grpc = grpc.infer("m", [g_in], model_version=version)
            assert over_http.get_response()["model_version"] == version
            assert over_grpc.get_response().model_version == version
            np.testing.assert_allclose(over_http.as_numpy("logits"), over_grpc.as_numpy("logits"), rtol=1e-6)
        assert grpc.get_model_metadata("m").versions == ["1", "2"]
        assert grpc.is_model_ready("m", "1") and not grpc.is_model_ready("m", "7")


def test_a_90_10_split_over_2000_requests_lands_within_the_binomial_bound(tmp_path: Path) -> None:
    repo = two_versions(tmp_path, version_policy={"all": True}, traffic={"split": {"1": 90, "2": 10}})
    settings = ServerSettings(model_repo=repo, build_missing=False)
    requests = 2000
    with serve_in_thread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        image = jpeg(32, 32, seed=1)
        counts = {"1": 0, "2": 0}
        for _ in range(requests):
            response = client.post("/v2/models/m/classify", content=image, headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text
            counts[response.json()["model_version"]] += 1
    expected, sd = requests * 0.1, (requests * 0.1 * 0.9) ** 0.5
    assert abs(counts["2"] - expected) < 4.5 * sd, counts  # 4.5 standard deviations: a false alarm in 10^5 runs


def test_shadow_agreement_counts_equal_what_the_test_computes(tmp_path: Path) -> None:
    """Every unversioned request goes to version 1 and is mirrored to version 2; the server's counts
    equal what the test finds by asking version 2 itself about the same images."""
    repo = two_versions(tmp_path, version_policy={"all": True},
                        traffic={"split": {"1": 100}, "shadow": {"target": "2", "fraction": 1.0}})
    settings = ServerSettings(model_repo=repo, build_missing=False)
    images = [jpeg(64 + 8 * i, 48 + 4 * i, seed=i) for i in range(24)]
    with serve_in_thread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        primary, candidate = [], []
        for image in images:
            version, logits = infer(client, image)
            assert version == "1"
            primary.append(logits)
            candidate.append(infer(client, image, "2")[1])  # the candidate is never mirrored to itself
        status = wait_for(lambda: (s := canary(server.url))["comparisons"] and
                          s["comparisons"][0]["compared"] == len(images) and s, timeout_s=30)
        assert status, canary(server.url)
        top1, overlap, l1 = compare_scores(softmax(np.concatenate(primary)), softmax(np.concatenate(candidate)))
        comparison = status["comparisons"][0]
        assert (comparison["primary"], comparison["candidate"]) == ("1", "2")
        assert comparison["top1_agreements"] == int(top1.sum())
        assert comparison["top5_overlap_mean"] == pytest.approx(overlap.mean())
        assert comparison["prob_l1_mean"] == pytest.approx(l1.mean(), abs=1e-5)
        labels = {"model": "m", "primary": "1", "candidate": "2"}
        assert server.metric("resserve_shadow_compared_total", labels) == len(images)
        assert server.metric("resserve_shadow_top1_agreements_total", labels) == int(top1.sum())
        assert server.metric("resserve_shadow_top5_overlap_sum", labels) == int(overlap.sum())
        assert server.metric("resserve_shadow_prob_l1_count", labels) == len(images)
        assert server.metric("resserve_shadow_latency_seconds_count", {**labels, "version": "2"}) == len(images)
        # The shadow's images are not the client's: HTTP counts only the requests clients sent.
        assert server.metric("resserve_http_images_total", {"model": "m", "status": "ok"}) == 2 * len(images)
        low, high = comparison["top1_agreement_95"]
        assert 0 <= low <= comparison["top1_agreement"] <= high <= 1
        index = {e["version"]: e.get("release") for e in client.post("/v2/repository/index").json()}
        assert index == {"1": None, "2": "candidate"}
        result = CliRunner().invoke(cli_app, ["canary", "status", "m", "--url", server.url])
        assert result.exit_code == 0, result.output
        assert f"{len(images)}" in result.output and "no decision yet" in result.output


def judge_run(tmp_path: Path, seeds: tuple[int, int], images: int = 12) -> tuple[dict[str, Any], Path, list[str]]:
    repo = two_versions(tmp_path, seeds, version_policy={"all": True},
                        traffic={"split": {"1": 80, "2": 20}, "shadow": {"target": "2", "fraction": 1.0},
                                 "promote": {"min_compared": images, "min_top1_agreement": 0.99,
                                             "max_p99_ratio": 1000.0}})
    settings = ServerSettings(model_repo=repo, build_missing=False)
    with serve_in_thread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(4 * images):  # some land on version 2 (the split), the rest are mirrored
            infer(client, jpeg(40 + i, 40, seed=i), "1")
            if canary(server.url)["decisions"]:
                break
        status = wait_for(lambda: (s := canary(server.url))["decisions"] and s, timeout_s=30)
        assert status, canary(server.url)
        after = [infer(client, jpeg(seed=i))[0] for i in range(40)]
        # The repository index shows the decision beside the version (gRPC: in its reason).
        entries = client.post("/v2/repository/index").json()
        status["index"] = {e["version"]: e.get("release") for e in entries if e["name"] == "m"}
    return status, repo, after


def test_a_candidate_that_disagrees_is_rejected_and_its_share_rolled_back(tmp_path: Path) -> None:
    status, repo, after = judge_run(tmp_path, seeds=(0, 1))
    decision = status["decisions"][0]
    assert decision["outcome"] == "rejected" and decision["candidate"] == "2" and "top-1 agreement" in decision["why"]
    assert status["promoted"] is None
    assert set(after) == {"1"}  # the split's 20% for version 2 went back to version 1
    assert status["index"] == {"1": None, "2": "rejected"}
    written = json.loads((repo / "m" / RELEASE_FILE).read_text())
    assert written["decisions"][0]["outcome"] == "rejected"


def test_a_candidate_that_agrees_is_promoted_and_stays_promoted_over_a_restart(tmp_path: Path) -> None:
    status, repo, after = judge_run(tmp_path, seeds=(0, 0))  # the same weights, exported again
    decision = status["decisions"][0]
    assert decision["outcome"] == "promoted" and decision["top1_agreement"] == 1.0, decision
    assert status["promoted"] == "2" and set(after) == {"2"}
    assert status["index"] == {"1": None, "2": "promoted"}
    with serve_in_thread(ServerSettings(model_repo=repo, build_missing=False)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        assert {infer(client, jpeg(seed=i))[0] for i in range(20)} == {"2"}
        assert canary(server.url)["promoted"] == "2"
        assert canary(server.url)["comparisons"] == []  # decided: no more mirroring


def test_versions_added_and_removed_by_polling_under_load_lose_no_request(tmp_path: Path) -> None:
    repo = two_versions(tmp_path)  # policy latest 1
    shutil.move(repo / "m" / "2", tmp_path / "v2")  # start with version 1 only
    settings = ServerSettings(model_repo=repo, build_missing=False, repository_poll_s=0.1)
    failures: list[str] = []
    answered: dict[str, int] = {}
    stop = threading.Event()

    def load(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                response = client.post("/v2/models/m/infer", json=image_request(jpeg(48, 48, seed=index)))
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    version = response.json()["model_version"]
                    answered[version] = answered.get(version, 0) + 1

    with serve_in_thread(settings) as server:
        threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            shutil.move(tmp_path / "v2", repo / "m" / "2")  # a new version arrives: it replaces 1
            assert wait_for(lambda: server.app.state.resserve.manager.serving_versions("m") == ["2"], timeout_s=30)
            time.sleep(0.5)
            shutil.rmtree(repo / "m" / "2")  # and leaves: version 1 is back
            assert wait_for(lambda: server.app.state.resserve.manager.serving_versions("m") == ["1"], timeout_s=30)
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert failures == [], failures
    assert answered.get("1", 0) > 0 and answered.get("2", 0) > 0, answered


def test_a_request_that_found_a_version_is_answered_by_it_though_the_version_leaves_meanwhile(tmp_path: Path) -> None:
    """A request to version 1 whose body is still arriving when version 2 replaces it (polling) is
    answered by version 1: the version drains the requests that found it before its queue closes.
    Before, the queue closed at once and the request, which may not go elsewhere, got a 503."""
    repo = two_versions(tmp_path)
    shutil.move(repo / "m" / "2", tmp_path / "v2")
    settings = ServerSettings(model_repo=repo, build_missing=False, repository_poll_s=0.1)
    body = json.dumps(image_request(jpeg(seed=5))).encode()
    half = threading.Event()
    go_on = threading.Event()
    answers: list[httpx.Response] = []

    def slowly() -> Any:
        yield body[: len(body) // 2]
        half.set()
        go_on.wait(30)
        yield body[len(body) // 2:]

    with serve_in_thread(settings) as server:
        manager = server.app.state.resserve.manager
        sender = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{server.url}/v2/models/m/versions/1/infer", content=slowly(),
            headers={"content-type": "application/json"}, timeout=60)))
        sender.start()
        assert half.wait(30)
        shutil.move(tmp_path / "v2", repo / "m" / "2")
        # Version 2 serves; version 1 no longer takes new requests but waits for the one in flight.
        assert wait_for(lambda: manager.serving_versions("m") == ["2"], timeout_s=30)
        assert httpx.get(f"{server.url}/v2/models/m/versions/1/ready").status_code == 404
        go_on.set()
        sender.join(60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert answers[0].json()["model_version"] == "1"


def test_shadows_are_dropped_first_when_the_server_is_saturated(tmp_path: Path) -> None:
    """32 requests at once on a model with room for 9 images: every client request is answered,
    the shadows that would have taken more than half of either side's room are dropped and
    counted, and every shadow drawn is either compared or dropped."""
    repo = two_versions(tmp_path, version_policy={"all": True}, max_batch_size=1,
                        dynamic_batching={"max_queue_size": 8},
                        traffic={"split": {"1": 100}, "shadow": {"target": "2", "fraction": 1.0}})
    settings = ServerSettings(model_repo=repo, build_missing=False)
    requests = 32
    with serve_in_thread(settings) as server:
        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                async def one(i: int) -> int:
                    for _ in range(50):  # a 503 (the primary's own queue full) is retried: clients are never dropped
                        response = await client.post("/v2/models/m/infer", json=image_request(jpeg(48, 48, seed=i)))
                        if response.status_code != 503:
                            return response.status_code
                        await asyncio.sleep(0.05)
                    return 503
                return list(await asyncio.gather(*(one(i) for i in range(requests))))

        assert asyncio.run(burst()) == [200] * requests
        labels = {"model": "m", "primary": "1", "candidate": "2"}
        status = wait_for(lambda: (s := canary(server.url)["comparisons"][0])["compared"]
                          + sum(s["dropped"].values()) == requests and s, timeout_s=30)
        assert status, canary(server.url)
        assert status["dropped"].get("saturated", 0) > 0, status
        assert server.metric("resserve_shadow_dropped_total", {**labels, "reason": "saturated"}) == \
            status["dropped"]["saturated"]
