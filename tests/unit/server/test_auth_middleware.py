"""The access policy at the HTTP door, on a bare ASGI app: what it guards, what it leaves open, how it compares."""

from __future__ import annotations

import hmac
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from resserve.server.access_policy import AccessPolicy, ApiKeys, presented_keys
from resserve.server.middleware.access import AccessMiddleware

KEYS = ["old-key", "new-key"]


class Echo:
    """An app that answers 200 and records whether it ran and whether anyone read the body."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def client(**options: Any) -> tuple[httpx.AsyncClient, Echo]:
    inner = Echo()
    app = AccessMiddleware(inner, AccessPolicy(KEYS, **options))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), inner


@pytest.mark.parametrize("path", ["/v2", "/v2/models/r18", "/v2/models/r18/ready", "/v2/models/r18/config",
                                  "/v2/models/r18/versions/1", "/docs", "/openapi.json", "/anything-new"])
async def test_guarded_paths_need_a_key(path: str) -> None:
    http, inner = client()
    async with http:
        refused = await http.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "API key" in refused.json()["error"]
        assert inner.calls == 0
        for key in KEYS:  # every configured key works, in either header
            assert (await http.get(path, headers={"authorization": f"Bearer {key}"})).status_code == 200
            assert (await http.get(path, headers={"x-api-key": key})).status_code == 200
        assert (await http.get(path, headers={"authorization": f"bearer   {KEYS[0]}  "})).status_code == 200


async def test_health_and_metrics_stay_open_by_default_and_control_takes_its_own_token() -> None:
    http, inner = client(control_token="control-secret")
    async with http:
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert (await http.get(path)).status_code == 200, path
        unload = "/v2/repository/models/r18/unload"
        for headers in ({}, {"x-api-key": "old-key"}, {"authorization": "Bearer old-key"}):
            refused = await http.post(unload, headers=headers)  # an API key is not the token
            assert refused.status_code == 401 and "repository control needs" in refused.json()["error"]
        calls = inner.calls
        ok = await http.post(unload, headers={"authorization": "Bearer control-secret"})
        assert ok.status_code == 200 and inner.calls == calls + 1
        # The index only reads: it follows inference's rules (a key), never the control token's.
        assert (await http.post("/v2/repository/index")).status_code == 401
        assert (await http.post("/v2/repository/index", headers={"x-api-key": "old-key"})).status_code == 200


async def test_control_without_a_token_is_forbidden_and_says_so_only_to_a_caller_with_a_key() -> None:
    http, inner = client()
    async with http:
        assert (await http.post("/v2/repository/models/r18/load")).status_code == 401
        refused = await http.post("/v2/repository/models/r18/load", headers={"x-api-key": "old-key"})
        assert refused.status_code == 403 and "disabled" in refused.json()["error"]
        assert inner.calls == 0
        # The read-only index is served with a key, control or not (Triton serves it in every mode).
        assert (await http.post("/v2/repository/index", headers={"x-api-key": "old-key"})).status_code == 200


async def test_health_and_metrics_can_be_guarded() -> None:
    http, _ = client(auth_health=True, auth_metrics=True)
    async with http:
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, headers={"x-api-key": "new-key"})).status_code == 200
    http, _ = client(auth_metrics=True)
    async with http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/v2/health/ready")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer"},
        {"authorization": "Bearer "},
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer old-ke"},  # a prefix of a key
        {"authorization": "Bearer old-key2"},
        {"authorization": "Basic old-key"},
        {"authorization": "old-key"},
        {"authorization": "Bearerold-key"},
        {"x-api-key": ""},
        {"x-api-key": "Bearer old-key"},
        {"x-api-key": "OLD-KEY"},
    ],
)
async def test_wrong_or_malformed_keys_are_refused(headers: dict[str, str]) -> None:
    http, inner = client()
    async with http:
        response = await http.post("/v2/models/r18/infer", headers=headers, content=b"x" * 1000)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert inner.calls == 0


async def test_refused_without_reading_the_body() -> None:
    app = AccessMiddleware(Echo(), AccessPolicy(KEYS))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v2/models/r18/infer", "headers": [
        (b"content-length", b"10000000")], "query_string": b""}
    await app(scope, receive, send)
    assert sent[0]["status"] == 401


async def test_every_key_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(len(a))
        assert len(a) == len(b)  # digests: equal lengths whatever the key's length
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    http, _ = client()
    async with http:
        assert (await http.get("/v2", headers={"x-api-key": KEYS[0]})).status_code == 200
        assert len(compared) == len(KEYS)
        compared.clear()
        assert (await http.get("/v2", headers={"x-api-key": "x"})).status_code == 401
        assert len(compared) == len(KEYS)


async def test_websocket_without_a_key_is_closed() -> None:
    app = AccessMiddleware(Echo(), AccessPolicy(KEYS))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "websocket", "path": "/v2/models/r18/stream", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_presented_keys_reads_both_headers() -> None:
    headers = [(b"authorization", b"Bearer  a "), (b"x-api-key", b" b"), (b"authorization", b"Basic c"),
               (b"x-api-key", b"  ")]
    assert presented_keys(headers) == [b"a", b"b"]


@pytest.mark.parametrize("keys", [[], [""], ["ok", "  "]])
def test_no_or_blank_keys_are_refused(keys: list[str]) -> None:
    with pytest.raises(ValueError, match="no blank"):
        ApiKeys(keys)


async def test_the_path_is_classified_as_the_router_sees_it_behind_a_root_path() -> None:
    """uvicorn --root-path and Mount keep the prefix in scope["path"]; the router strips it."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: Any) -> None:
        sent.append(message)

    inner = Echo()
    app = AccessMiddleware(inner, AccessPolicy(KEYS))
    for path in ("/x/v2/repository/models/r18/load", "/x/v2/repository/index", "/x/v2/models/r18/infer"):
        sent.clear()
        await app({"type": "http", "method": "POST", "path": path, "root_path": "/x", "headers": [],
                   "query_string": b""}, receive, send)
        assert sent[0]["status"] == 401, path
    sent.clear()  # the probes stay open behind the prefix too
    await app({"type": "http", "method": "GET", "path": "/x/v2/health/ready", "root_path": "/x", "headers": [],
               "query_string": b""}, receive, send)
    assert sent[0]["status"] == 200 and inner.calls == 1
