"""Classify and infer reach their handlers past FastAPI's router, with the parameters FastAPI
would have given them; whatever the direct path cannot read with certainty goes on to FastAPI."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.responses import Response

from resserve.server import direct_routes
from resserve.server.direct_routes import DirectRoutes, query_parameters


@pytest.mark.parametrize(("query", "endpoint", "versioned", "expected"), [
    (b"", "classify", False, {}),
    (b"top_k=3&timeout_ms=250.5", "classify", False, {"top_k_": 3, "timeout_ms": 250.5}),
    (b"version=2&other=x", "classify", False, {"version": "2"}),
    (b"version=2", "classify", True, {}),  # the path names the version; FastAPI ignores the query's
    (b"version=2&top_k=3", "infer", False, {"version": "2"}),  # infer takes no top_k
    (b"top_k=0", "classify", False, None),
    (b"top_k=-1", "classify", False, None),
    (b"top_k=3.0", "classify", False, None),
    (b"top_k=%203", "classify", False, None),
    (b"top_k=1&top_k=2", "classify", False, None),
    (b"timeout_ms=0", "classify", False, None),
    (b"timeout_ms=nan", "classify", False, None),
    (b"timeout_ms=1e400", "classify", False, None),
    (b"timeout_ms=3600000.5", "classify", False, None),
    (b"version=1&version=2", "infer", False, None),
])
def test_the_query_is_read_as_fastapi_would_or_left_to_it(query: bytes, endpoint: str, versioned: bool,
                                                           expected: dict[str, Any] | None) -> None:
    assert query_parameters(query, endpoint, versioned) == expected


async def test_requests_go_to_the_handler_or_on_to_fastapi(monkeypatch: pytest.MonkeyPatch) -> None:
    handled: list[tuple[str, str, dict[str, Any]]] = []
    passed_on: list[str] = []

    def handler(endpoint: str) -> Any:
        async def handle(request: Any, name: str, **params: Any) -> Response:
            handled.append((endpoint, name, params))
            assert request.scope["route"].path.endswith(endpoint)
            return Response(b"")
        return handle

    async def fastapi(scope: Any, receive: Any, send: Any) -> None:
        passed_on.append(f"{scope['method']} {scope['path']}?{scope['query_string'].decode()}")

    async def send(message: Any) -> None:
        pass

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    monkeypatch.setattr(direct_routes, "classify", handler("classify"))
    monkeypatch.setattr(direct_routes, "infer", handler("infer"))
    routes = [type("Route", (), {"path": path})() for path in direct_routes._TEMPLATES.values()]
    app = DirectRoutes(fastapi, routes)  # type: ignore[arg-type]
    for method, path, query, root in [
        ("POST", "/v2/models/m/classify", b"top_k=3", ""),
        ("POST", "/v2/models/m/versions/2/infer", b"version=9", ""),
        ("POST", "/api/v2/models/m/infer", b"", "/api"),  # behind a proxy prefix
        ("GET", "/v2/models/m/classify", b"", ""),  # 405 is FastAPI's
        ("POST", "/v2/models/m/classify/", b"", ""),  # its redirect too
        ("POST", "/v2/models/m/classify", b"top_k=0", ""),  # its 400
        ("POST", "/v2/models/m/stats", b"", ""),
    ]:
        await app({"type": "http", "method": method, "path": path, "root_path": root, "query_string": query,
                   "headers": []}, receive, send)
    assert handled == [("classify", "m", {"top_k_": 3}), ("infer", "m", {"version": "2"}), ("infer", "m", {})]
    assert passed_on == ["GET /v2/models/m/classify?", "POST /v2/models/m/classify/?",
                         "POST /v2/models/m/classify?top_k=0", "POST /v2/models/m/stats?"]

