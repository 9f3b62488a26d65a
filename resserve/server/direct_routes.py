"""The inference endpoints straight to their handlers, past FastAPI's router.

On a cheap request FastAPI's routing (a pattern per route, tried in order) and dependency solving
(pydantic per parameter) cost more CPU than the rest of the ASGI stack (py-spy and cProfile on
the tiny model, issue 33). The two inference endpoints take only path parameters and, for
classify, two numeric query parameters, so :class:`DirectRoutes` matches their four paths with one
pattern, reads the query itself and calls the very handler the FastAPI route calls. A query it
cannot read with certainty (a repeated or malformed parameter) goes on to FastAPI, which answers
as before (400 with pydantic's words); every other path and method does too. The FastAPI routes
stay: they define the API (OpenAPI) and serve what this passes on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from resserve.errors import ClientDisconnectedError, ResserveError
from resserve.server.error_responses import error_response, response_for
from resserve.server.middleware.access import route_path
from resserve.server.oip.http_routes import infer
from resserve.server.request_pipeline import MAX_TIMEOUT_MS
from resserve.server.routes.classify import classify

_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/(?P<endpoint>classify|infer)")
_INTEGER = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,12})?")
_TEMPLATES = {
    ("classify", False): "/v2/models/{name}/classify",
    ("classify", True): "/v2/models/{name}/versions/{version}/classify",
    ("infer", False): "/v2/models/{name}/infer",
    ("infer", True): "/v2/models/{name}/versions/{version}/infer",
}
Handler = Callable[..., Awaitable[Response]]


def query_parameters(query_string: bytes, endpoint: str, versioned: bool) -> dict[str, Any] | None:
    """The route's query parameters as its handler takes them (``version`` where the path names
    none, classify's ``top_k`` and ``timeout_ms``), or None where FastAPI must judge the query (a
    value this does not read with certainty, or one given twice)."""
    found: dict[str, Any] = {}
    if not query_string:
        return found
    names = {"version"} if not versioned else set()
    if endpoint == "classify":
        names |= {"top_k", "timeout_ms"}
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return None
    seen: set[str] = set()
    for key, value in pairs:
        if key not in names:
            continue  # FastAPI ignores what a route does not declare
        if key in seen:
            return None
        seen.add(key)
        if key == "version":
            found["version"] = value
        elif key == "top_k":
            if not _INTEGER.fullmatch(value) or int(value) < 1:
                return None
            found["top_k_"] = int(value)
        else:
            if not _DECIMAL.fullmatch(value) or not (0 < (ms := float(value)) <= MAX_TIMEOUT_MS) or math.isnan(ms):
                return None
            found["timeout_ms"] = ms
    return found


class DirectRoutes:
    """POST classify and infer to their handlers; everything else to ``app`` (FastAPI's stack).
    Every error of a handled request is answered here, as FastAPI's handlers would answer it.

    ``routes``: the routes of the two endpoints (their routers' own), whose templates name the
    request's span (``scope["route"]``) as FastAPI's router would."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._route_of = {path: route for route in routes if (path := getattr(route, "path", None)) in _TEMPLATES.values()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or (match := _PATH.fullmatch(route_path(scope))) is None:
            await self.app(scope, receive, send)
            return
        endpoint, version = match["endpoint"], match["version"]
        query = query_parameters(scope["query_string"], endpoint, version is not None)
        if query is None:
            await self.app(scope, receive, send)
            return
        handler: Handler = classify if endpoint == "classify" else infer
        scope["route"] = self._route_of.get(_TEMPLATES[endpoint, version is not None])
        scope["path_params"] = {"name": match["name"], **({"version": version} if version is not None else {})}
        if version is not None:
            query["version"] = version
        request = Request(scope, receive, send)
        try:
            response = await handler(request, match["name"], **query)
        except ResserveError as error:
            response = response_for(error)
        except StarletteHTTPException as http_error:  # as FastAPI's handler answers one (none is raised today)
            response = error_response(http_error.status_code, str(http_error.detail), dict(http_error.headers or {}))
        except ClientDisconnect:  # mid-upload: nobody reads this answer, and it is no server error
            response = response_for(ClientDisconnectedError("the client disconnected while sending the body"))
        except Exception as unexpected:  # FastAPI's error layer is not around this: logged, 500 as there
            response = response_for(unexpected)
        await response(scope, receive, send)
