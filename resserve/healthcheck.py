"""The container image's HEALTHCHECK: ask the server on loopback whether it is ready.

Standard library only and one request: the check costs a Python start, not an import of the
server. It reads the environment the server reads, so it asks what a kubelet probe would:

- the port: ``RESSERVE_METRICS_PORT`` when set (the probes live there then, and a flood of the
  inference port cannot fail the check), else ``RESSERVE_PORT`` (8000);
- the address: ``RESSERVE_HOST``, loopback when it is a wildcard (``0.0.0.0``, ``::``);
- a key, sent as ``X-API-Key`` only when one is configured (``RESSERVE_AUTH_HEALTH=true`` makes
  health need one): the first of ``RESSERVE_API_KEYS`` (a JSON list or comma-separated), else the
  first line of ``RESSERVE_API_KEYS_FILE``.

Exit 0 when ``/v2/health/ready`` answers 200, 1 otherwise, with the reason on stderr (Docker keeps
it in ``docker inspect``'s health log). Usage: ``python -m resserve.healthcheck [--live]``.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def probe_url(env: Mapping[str, str], path: str = "/v2/health/ready") -> str:
    """Where the probe goes: the metrics port when there is one, on loopback for a wildcard host."""
    port = env.get("RESSERVE_METRICS_PORT") or env.get("RESSERVE_PORT") or "8000"
    host = env.get("RESSERVE_HOST", "127.0.0.1").strip()
    if host in WILDCARDS:
        host = "::1" if ":" in host else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{int(port)}{path}"


def configured_key(env: Mapping[str, str]) -> str | None:
    """The first configured API key, or None when the server has none."""
    raw = env.get("RESSERVE_API_KEYS", "").strip()
    if raw:
        keys = json.loads(raw) if raw.startswith("[") else raw.split(",")
        for key in keys:
            if str(key).strip():
                return str(key).strip()
    path = env.get("RESSERVE_API_KEYS_FILE", "").strip()
    if path:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    return line.strip()
    return None


def check(env: Mapping[str, str], path: str = "/v2/health/ready", timeout_s: float = 2.0) -> tuple[bool, str]:
    """Whether the server answers ``path`` with 200, and what it said."""
    request = urllib.request.Request(probe_url(env, path))
    try:
        key = configured_key(env)
    except (OSError, ValueError) as exc:
        return False, f"cannot read the API key: {exc}"
    if key is not None:
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status == 200, f"{request.full_url}: {answer.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{request.full_url}: {exc.code} {exc.read(512).decode('utf-8', 'replace')}"
    except (OSError, ValueError) as exc:
        return False, f"{request.full_url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = "/v2/health/live" if "--live" in args else "/v2/health/ready"
    healthy, said = check(os.environ, path)
    print(said, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
