"""API keys for the inference and metadata endpoints: a pure ASGI middleware, registered only when
``api_keys`` (``RESSERVE_API_KEYS`` / ``RESSERVE_API_KEYS_FILE``) holds a key.

Everything needs a key (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``) except the
repository control endpoints when they have a token of their own (``RESSERVE_CONTROL_TOKEN``;
control allowed without a token needs an API key like everything else), and, unless ``auth_health`` /
``auth_metrics`` say otherwise, the health probes and ``/metrics``. Listing what stays open, not
what is closed, means a route added later is covered without anyone remembering to.

The check reads the headers only, before any route runs and before a byte of the body is read: an
unauthenticated upload costs one hash. The presented key is compared with every configured key,
all of them, as SHA-256 digests (equal lengths) with ``hmac.compare_digest``: the time taken says
neither which key matched nor how much of one did.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from resserve.server.errors import error_response

HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"
CONTROL_PREFIX = "/v2/repository/"  # repository control checks RESSERVE_CONTROL_TOKEN itself
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request offers: ``Authorization: Bearer <key>`` and ``X-API-Key: <key>`` values."""
    found = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and rest.strip():
                found.append(rest.strip())
        elif name == b"x-api-key" and value.strip():
            found.append(value.strip())
    return found


class ApiKeys:
    """The configured keys as digests, and the constant-time check every protocol uses."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys or any(not key.strip() for key in keys):
            raise ValueError("API keys: at least one key and no blank ones")
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def _valid(self, key: bytes) -> bool:
        digest = hashlib.sha256(key).digest()
        matched = False
        for known in self._digests:  # every key, no early exit
            matched |= hmac.compare_digest(digest, known)
        return matched

    def accepts(self, presented: Sequence[bytes]) -> bool:
        """Whether any presented key is configured; every one is checked, whatever the first says."""
        valid = [self._valid(key) for key in presented]
        return any(valid)


def missing_key_message(presented: Sequence[bytes]) -> str:
    return ("the API key is not valid" if presented else
            "this endpoint needs an API key: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")


class ApiKeyMiddleware:
    """Answer 401 (``WWW-Authenticate: Bearer``, JSON ``{"error": ...}``) unless a configured key is given."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], auth_health: bool = False,
                 auth_metrics: bool = False, control_has_token: bool = True) -> None:
        self.app = app
        self._keys = ApiKeys(keys)
        self._open = frozenset((set() if auth_health else set(HEALTH_PATHS))
                               | (set() if auth_metrics else {METRICS_PATH}))
        self._control_open = control_has_token

    def _exempt(self, path: str) -> bool:
        return path in self._open or (self._control_open and path.startswith(CONTROL_PREFIX))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = presented_keys(scope["headers"])
        if self._keys.accepts(given):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
            return
        await error_response(401, missing_key_message(given), CHALLENGE)(scope, receive, send)
