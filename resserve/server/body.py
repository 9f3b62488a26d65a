"""Request bodies as every protocol reads them: Content-Encoding undone, with a cap of its own.

A gzip body of 20 kB can inflate to 20 MiB, so decompression is capped (``max_decompressed_bytes``)
separately from the wire limit (``max_body_bytes``, enforced while streaming by the middleware)
and runs in a worker thread, away from the event loop.
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.requests import Request

from resserve.errors import InvalidRequestError, PayloadTooLargeError
from resserve.server.body_budget import RESERVATION, Reservation, copies_for

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def content_encoding(request: Request) -> str:
    """The request's Content-Encoding, lower case; "" for none or identity."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return ""
    if encoding not in _WBITS:
        raise InvalidRequestError(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    return encoding


def inflated_size(body: bytes, encoding: str, limit: int) -> tuple[int, int]:
    """``(wbits, bytes)``: the zlib format ``body`` is in and the size it inflates to, counted a
    chunk at a time and kept nowhere (a bomb is refused having held one chunk, not the limit's
    worth of a growing buffer). Raw deflate streams (no zlib header), which some clients send as
    "deflate", are accepted too."""
    for wbits in (_WBITS[encoding], -zlib.MAX_WBITS) if encoding == "deflate" else (_WBITS[encoding],):
        try:
            return wbits, _check_inflated_size(body, wbits, encoding, limit)
        except zlib.error as exc:
            error = exc
    raise InvalidRequestError(f"cannot decompress the {encoding} body: {error}")


def inflate(body: bytes, wbits: int, encoding: str, size: int) -> bytes:
    """``body`` inflated, once :func:`inflated_size` has said it is ``size`` bytes."""
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, size + 1)
    except zlib.error as exc:
        raise InvalidRequestError(f"cannot decompress the {encoding} body: {exc}") from exc
    if not inflater.eof:
        raise InvalidRequestError(f"the {encoding} body is truncated")
    return out


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip/deflate bodies (tritonclient's request compression) inflated to at most ``limit`` bytes."""
    if not encoding:
        return body
    wbits, size = inflated_size(body, encoding, limit)
    return inflate(body, wbits, encoding, size)


def _check_inflated_size(body: bytes, wbits: int, encoding: str, limit: int, chunk: int = 1 << 20) -> int:
    """The size ``body`` inflates to; PayloadTooLargeError once past ``limit`` bytes (zlib.error if
    it is not that encoding), holding at most ``chunk`` bytes of output at a time."""
    inflater = zlib.decompressobj(wbits)
    total, data = 0, body
    while True:
        total += len(inflater.decompress(data, chunk))
        if total > limit:
            raise PayloadTooLargeError(f"the {encoding} body inflates past the limit of {limit} bytes "
                                       "(max_decompressed_bytes)")
        data = inflater.unconsumed_tail
        if not data:
            break
    total += len(inflater.flush())
    if total > limit:
        raise PayloadTooLargeError(f"the {encoding} body inflates past the limit of {limit} bytes "
                                   "(max_decompressed_bytes)")
    if not inflater.eof:
        raise InvalidRequestError(f"the {encoding} body is truncated")
    return total


async def read_raw(request: Request) -> bytes:
    """The whole body as sent (capped on the wire by the middleware). Unlike ``request.body()``
    the request keeps no copy, so the caller can let it go once it is parsed."""
    return b"".join([chunk async for chunk in request.stream()])


async def read_body(request: Request, max_decompressed_bytes: int) -> bytes:
    """The whole body, decompressed off the loop. An encoded body's inflated size is counted first
    and reserved in the request's share of the body budget (:mod:`resserve.server.body_budget`)
    before it is inflated."""
    body = await read_raw(request)
    encoding = content_encoding(request)
    if not encoding:
        return body
    wbits, size = await asyncio.to_thread(inflated_size, body, encoding, max_decompressed_bytes)
    reservation: Reservation | None = request.scope.get("state", {}).get(RESERVATION)
    if reservation is not None:
        reservation.grow(size * copies_for(request.scope["headers"]))
    return await asyncio.to_thread(inflate, body, wbits, encoding, size)
