"""Repository control (index, load, unload) on a real server: auth, state changes, reload under load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from resserve.config import ServerSettings
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

TOKEN = "s3cret"
JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def repo(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("control_repo")
    write_model(root, "r18", model_onnx)
    write_model(root, "spare", model_onnx)
    return root


@pytest.fixture
def token_server(repo: Path) -> Iterator[RunningServer]:
    with serve_in_thread(ServerSettings(model_repo=repo, control_token=TOKEN)) as running:
        yield running


@pytest.fixture
def open_server(repo: Path) -> Iterator[RunningServer]:
    with serve_in_thread(ServerSettings(model_repo=repo, allow_repository_control=True)) as running:
        yield running


def control(server: RunningServer, path: str, token: str | None = TOKEN, **headers: str) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(f"{server.url}/v2/repository/{path}", headers=headers, timeout=60)


def classify(server: RunningServer, model: str = "r18") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/classify", content=jpeg(), headers=JPEG, timeout=30)


def states(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {entry["name"]: entry["state"] for entry in response.json()}


def test_control_is_off_without_token_or_permission(repo: Path) -> None:
    with serve_in_thread(ServerSettings(model_repo=repo)) as server:
        for path in ("models/r18/load", "models/r18/unload"):
            response = control(server, path, token=None)
            assert response.status_code == 403, response.text
            assert "RESSERVE_CONTROL_TOKEN" in response.json()["error"]
            # A token is no key when none is configured.
            assert control(server, path, token="anything").status_code == 403
        # The index only reads: served without control, as Triton serves it in every control mode.
        assert "r18" in [m["name"] for m in control(server, "index", token=None).json()]
        assert classify(server).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer s3cre"},  # a prefix of the token
        {"authorization": "Bearer s3cret2"},
        {"authorization": "Bearer"},
        {"authorization": "Basic s3cret"},
        {"authorization": "s3cret"},
        {"authorization": "Bearers3cret"},
    ],
)
def test_wrong_or_missing_token_is_401_with_challenge(token_server: RunningServer, headers: dict[str, str]) -> None:
    for path in ("models/r18/load", "models/r18/unload", "models/nope/load"):
        response = control(token_server, path, token=None, **headers)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Bearer" in response.json()["error"]
    # Nothing was unloaded by the refused calls.
    assert classify(token_server).status_code == 200


def test_token_unload_and_load_cycle(token_server: RunningServer) -> None:
    url = token_server.url
    index = control(token_server, "index")
    assert index.json() == [{"name": "r18", "version": "1", "state": "READY"},
                            {"name": "spare", "version": "1", "state": "READY"}]
    # The scheme is case-insensitive (RFC 7235).
    assert control(token_server, "index", token=None, authorization=f"bearer {TOKEN}").status_code == 200

    response = control(token_server, "models/r18/unload")
    assert response.status_code == 200 and response.json() == {}
    entries = {e["name"]: e for e in control(token_server, "index").json()}
    assert entries["r18"] == {"name": "r18", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"}
    assert entries["spare"]["state"] == "READY"
    unloaded = classify(token_server)
    assert unloaded.status_code == 503 and "not loaded" in unloaded.json()["error"]
    assert httpx.get(f"{url}/v2/models/r18/ready").status_code == 503
    assert httpx.get(f"{url}/v2/models/r18").status_code == 503
    assert classify(token_server, "spare").status_code == 200
    # Server readiness covers the models that are loaded: an unloaded model was taken out on
    # purpose, so the server stays ready while another one serves.
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    # Unloading what is not loaded is a 404, not a crash.
    assert control(token_server, "models/r18/unload").status_code == 404

    # With nothing loaded at all the server is not ready (and says "loading").
    assert control(token_server, "models/spare/unload").status_code == 200
    assert set(states(control(token_server, "index")).values()) == {"UNAVAILABLE"}
    ready = httpx.get(f"{url}/v2/health/ready")
    assert ready.status_code == 503 and "not ready" in ready.json()["error"]
    assert httpx.get(f"{url}/v2/health/live").status_code == 200

    assert control(token_server, "models/r18/load").status_code == 200
    assert states(control(token_server, "index")) == {"r18": "READY", "spare": "UNAVAILABLE"}
    again = classify(token_server)
    assert again.status_code == 200, again.text
    assert again.json()["model_name"] == "r18" and again.json()["model_version"] == "1"
    assert httpx.get(f"{url}/v2/models/r18/ready").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert token_server.metric("resserve_model_ready", {"model": "r18", "version": "1"}) == 1
    assert token_server.metric("resserve_model_ready", {"model": "spare", "version": "1"}) == 0


@pytest.mark.parametrize("name", ["nope", "..", "r18x"])
def test_load_of_an_unknown_model_is_404(token_server: RunningServer, name: str) -> None:
    response = control(token_server, f"models/{name}/load")
    assert response.status_code == 404, response.text
    assert "error" in response.json()
    assert control(token_server, f"models/{name}/unload").status_code == 404
    assert states(control(token_server, "index")) == {"r18": "READY", "spare": "READY"}


def test_allow_repository_control_without_token(open_server: RunningServer) -> None:
    assert states(control(open_server, "index", token=None)) == {"r18": "READY", "spare": "READY"}
    # A stray Authorization header is harmless when no token is configured.
    assert control(open_server, "index", token="whatever").status_code == 200
    assert control(open_server, "models/spare/unload", token=None).status_code == 200
    assert classify(open_server, "spare").status_code == 503
    assert control(open_server, "models/spare/load", token=None).status_code == 200
    assert classify(open_server, "spare").status_code == 200
    assert control(open_server, "models/nope/load", token=None).status_code == 404


async def test_reload_under_steady_load_fails_no_request(open_server: RunningServer) -> None:
    """Reloads swap in new engines and drain the old ones: requests in flight all succeed."""
    manager = open_server.app.state.resserve.manager
    first = manager.get("r18")
    images = [jpeg(seed=seed) for seed in range(4)]
    results: list[tuple[int, str]] = []
    reloads_done = asyncio.Event()
    done_at_reload: list[int] = []
    deadline = time.monotonic() + 25

    async with httpx.AsyncClient(base_url=open_server.url, timeout=20) as client:

        async def worker(index: int) -> None:
            sent = 0
            # At least 10 requests each, and keep the load on until every reload has finished.
            while (sent < 10 or not reloads_done.is_set()) and time.monotonic() < deadline:
                response = await client.post("/v2/models/r18/classify", content=images[index], headers=JPEG)
                body = response.json()
                results.append((response.status_code, body.get("error", "")))
                sent += 1

        async def reloader() -> None:
            try:
                for _ in range(3):
                    await asyncio.sleep(0.15)
                    while len(results) <= (done_at_reload[-1] if done_at_reload else 0):
                        await asyncio.sleep(0.02)  # reload only once requests are flowing, on a busy machine too
                    done_at_reload.append(len(results))
                    response = await client.post("/v2/repository/models/r18/load")
                    assert response.status_code == 200, response.text
            finally:
                reloads_done.set()

        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(4)), reloader()), timeout=30)

    failures = [r for r in results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed during reloads: {failures[:5]}"
    assert len(results) >= 40
    # The reloads really happened while requests were flowing.
    assert len(done_at_reload) == 3 and done_at_reload[0] > 0 and done_at_reload[-1] < len(results)
    current = manager.get("r18")
    assert current is not first and current.serving and not first.serving and current.loaded_at > first.loaded_at
    assert open_server.metric("resserve_model_ready", {"model": "r18", "version": "1"}) == 1
    assert classify(open_server).status_code == 200
