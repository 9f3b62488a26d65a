"""Download one weights file into the cache, verified before it is moved into place.

A download lands in a ``.part`` file beside its target and replaces the target only once its
sha256 matched what the source promised, so an interrupted or tampered transfer never leaves a
file that looks cached.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from resserve.errors import WeightsError

log = logging.getLogger(__name__)

TIMEOUT_S = 30
NETWORK_ERRORS = (urllib.error.URLError, OSError, TimeoutError)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx responses back to the caller: the Hub's checksum header is on the redirect."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def checksum_and_location(url: str) -> tuple[str | None, str]:
    """The sha256 a Hub advertises for ``url`` (``X-Linked-Etag``, the LFS object id) and where the
    bytes are (the redirect target, or ``url`` itself). Raises the urllib errors when unreachable.

    This is what ``huggingface_hub`` reads before a download; read here without following the
    redirect, because the CDN answer that follows does not carry it.
    """
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, method="HEAD")
    try:
        response = opener.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise
        response = exc
    with response:
        headers = response.headers
        etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").removeprefix("W/").strip('"')
        location = urllib.parse.urljoin(url, headers.get("Location") or url)
    is_sha256 = len(etag) == 64 and all(c in "0123456789abcdef" for c in etag.lower())
    return (etag.lower() if is_sha256 else None), location


def download_verified(url: str, target: Path, verify: Callable[[str], None], *, offline_hint: str) -> Path:
    """Fetch ``url`` to ``target``; ``verify(sha256_hex)`` raises WeightsError to reject the bytes.

    ``offline_hint`` ends the error when the source cannot be reached (where to put the file).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, target)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    tmp.write(chunk)
        except NETWORK_ERRORS as exc:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise WeightsError(f"could not download {url} ({exc}). Offline? {offline_hint}") from exc
    try:
        verify(digest.hexdigest())
    except WeightsError:
        tmp_path.unlink(missing_ok=True)
        raise
    tmp_path.replace(target)
    return target



def check_sha256(digest: str, expected: str, path: Path, *, prefix: bool = False) -> None:
    """Raise WeightsError unless ``digest`` equals ``expected`` (or starts with it, for torch hub's
    file names that carry the first hex digits of their sha256)."""
    if digest.startswith(expected) if prefix else digest == expected:
        return
    wanted = f"a prefix of {expected}" if prefix else f"{expected[:16]}..."
    raise WeightsError(f"{path} has sha256 {digest[:16]}..., expected {wanted}: the file is damaged "
                       "or not the published one; delete it and fetch again")
