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

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def content_encoding(request: Request) -> str:
    """The request's Content-Encoding, lower case; "" for none or identity."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return ""
    if encoding not in _WBITS:
        raise InvalidRequestError(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    return encoding


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip/deflate bodies (tritonclient's request compression) inflated to at most ``limit`` bytes.

    Raw deflate streams (no zlib header), which some clients send as "deflate", are accepted too.
    """
    if not encoding:
        return body
    for wbits in (_WBITS[encoding], -zlib.MAX_WBITS) if encoding == "deflate" else (_WBITS[encoding],):
        try:
            # Measured first, a chunk at a time and kept nowhere: a bomb is refused having held one
            # chunk, not the limit's worth of output (whose buffer grows by copies as it inflates).
            _check_inflated_size(body, wbits, encoding, limit)
            inflater = zlib.decompressobj(wbits)
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            error = exc
            continue
        if not inflater.eof:
            raise InvalidRequestError(f"the {encoding} body is truncated")
        return out
    raise InvalidRequestError(f"cannot decompress the {encoding} body: {error}")


def _check_inflated_size(body: bytes, wbits: int, encoding: str, limit: int, chunk: int = 1 << 20) -> None:
    """Raise PayloadTooLargeError once ``body`` inflates past ``limit`` bytes (zlib.error if it is
    not that encoding), holding at most ``chunk`` bytes of output at a time."""
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
    if total + len(inflater.flush()) > limit:
        raise PayloadTooLargeError(f"the {encoding} body inflates past the limit of {limit} bytes "
                                   "(max_decompressed_bytes)")


async def read_raw(request: Request) -> bytes:
    """The whole body as sent (capped on the wire by the middleware). Unlike ``request.body()``
    the request keeps no copy, so the caller can let it go once it is parsed."""
    return b"".join([chunk async for chunk in request.stream()])


async def read_body(request: Request, max_decompressed_bytes: int) -> bytes:
    """The whole body, decompressed off the loop."""
    body = await read_raw(request)
    encoding = content_encoding(request)
    if not encoding:
        return body
    return await asyncio.to_thread(decompress, body, encoding, max_decompressed_bytes)
