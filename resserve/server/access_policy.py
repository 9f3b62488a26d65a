"""Who may call what: one access policy that HTTP and gRPC both ask, before any work is done.

Endpoints come in four kinds. ``inference`` (everything not listed below, so a route added later
is covered without anyone remembering to) needs an API key when ``api_keys`` holds one.
``health`` and ``metrics`` are open unless ``auth_health`` / ``auth_metrics`` close them.
``control`` (repository load, unload, index) needs the control token when one is set; without
one it is refused (403) unless ``allow_repository_control``, and then needs an API key like
inference. Keys come from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (HTTP headers,
gRPC metadata).

Every secret is compared as a SHA-256 digest (equal lengths) with ``hmac.compare_digest``, each
configured key every time: the time taken says neither which key matched nor how much of one did.
An unauthenticated request costs a header scan and one hash per key.

Example::

    policy = AccessPolicy.from_settings(settings)
    policy.check("inference", [(b"authorization", b"Bearer s3cret")])  # raises UnauthorizedError
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Literal

from resserve.config import ServerSettings
from resserve.errors import ForbiddenError, UnauthorizedError

Endpoint = Literal["inference", "health", "metrics", "control"]
Headers = Iterable[tuple[bytes, bytes]]


def presented_keys(headers: Headers) -> list[bytes]:
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


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class ApiKeys:
    """The configured keys as digests, and the constant-time check."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys or any(not key.strip() for key in keys):
            raise ValueError("API keys: at least one key and no blank ones")
        self._digests = [_digest(key.encode()) for key in keys]

    def _valid(self, key: bytes) -> bool:
        digest = _digest(key)
        matched = False
        for known in self._digests:  # every key, no early exit
            matched |= hmac.compare_digest(digest, known)
        return matched

    def accepts(self, presented: Sequence[bytes]) -> bool:
        """Whether any presented key is configured; every one is checked, whatever the first says."""
        valid = [self._valid(key) for key in presented]
        return any(valid)


class AccessPolicy:
    """The one place that decides whether a caller may reach an endpoint (HTTP and gRPC)."""

    def __init__(self, api_keys: Sequence[str] = (), *, auth_health: bool = False, auth_metrics: bool = False,
                 control_token: str | None = None, allow_repository_control: bool = False) -> None:
        self._keys = ApiKeys(api_keys) if api_keys else None
        self._open: frozenset[Endpoint] = frozenset(
            ({"health"} if not auth_health else set()) | ({"metrics"} if not auth_metrics else set()))
        self._control = _digest(control_token.encode()) if control_token is not None else None
        self._allow_control = allow_repository_control

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> AccessPolicy:
        return cls(settings.api_keys, auth_health=settings.auth_health, auth_metrics=settings.auth_metrics,
                   control_token=settings.control_token,
                   allow_repository_control=settings.allow_repository_control)

    @property
    def needs_keys(self) -> bool:
        return self._keys is not None

    def identifies(self, headers: Headers) -> bool:
        """Whether these headers carry a valid API key, or no key is needed anywhere: who may read
        details an open endpoint (readiness) leaves out for anyone else (model names, error types)."""
        return self._keys is None or self._keys.accepts(presented_keys(headers))

    def check(self, endpoint: Endpoint, headers: Headers, carrier: str = "header") -> None:
        """Raise UnauthorizedError (401) or ForbiddenError (403) unless these headers (or gRPC
        metadata: ``carrier="metadata"``) may call ``endpoint``."""
        if endpoint != "control" and (self._keys is None or endpoint in self._open):
            return  # the common case, per request: nothing to read
        headers = list(headers)
        if endpoint == "control" and self._control is not None:
            self._check_control_token(headers)
            return
        if endpoint not in self._open and self._keys is not None:
            given = presented_keys(headers)
            if not self._keys.accepts(given):
                raise UnauthorizedError(_missing_key(given, carrier))
        # Only a caller who passed the key check learns that control is off.
        if endpoint == "control" and not self._allow_control:
            raise ForbiddenError("repository control is disabled: set RESSERVE_CONTROL_TOKEN to enable it")

    def _check_control_token(self, headers: list[tuple[bytes, bytes]]) -> None:
        authorization = next((value for name, value in headers if name == b"authorization"), b"")
        scheme, _, given = authorization.strip().partition(b" ")
        assert self._control is not None
        if scheme.lower() != b"bearer" or not hmac.compare_digest(_digest(given.strip()), self._control):
            raise UnauthorizedError("repository control needs 'Authorization: Bearer <token>'")


def _missing_key(presented: Sequence[bytes], carrier: str) -> str:
    if presented:
        return "the API key is not valid"
    if carrier == "metadata":
        return "this endpoint needs an API key: metadata 'authorization: Bearer <key>' or 'x-api-key: <key>'"
    return "this endpoint needs an API key: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
