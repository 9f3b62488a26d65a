"""``POST /v2/models/{name}[/versions/{v}]/classify``: images in, top-k labels out.

The body is the image itself (``Content-Type: image/jpeg`` etc.) or ``multipart/form-data`` with
one or more ``file`` parts. A protocol adapter only: limits, deadlines and metrics are the
pipeline's (:mod:`resserve.server.request_pipeline`).
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.responses import Response
from starlette.types import Message

from resserve.errors import InvalidRequestError, PayloadTooLargeError, TooManyImagesError
from resserve.preprocess import SUPPORTED_MEDIA_TYPES, check_media_type
from resserve.server.body import content_encoding, read_body
from resserve.server.disconnect import CancelOnDisconnect
from resserve.server.request_pipeline import MAX_TIMEOUT_MS
from resserve.server.scores import top_k_classes
from resserve.server.app_state import AppState, get_state, labelled

router = APIRouter()

TopK = Annotated[int, Query(alias="top_k", ge=1, description="how many classes per image, best first")]
TimeoutMs = Annotated[float | None, Query(gt=0, le=MAX_TIMEOUT_MS,
                                          description="deadline in ms from arrival (default: the model's)")]

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "one encoded image as the body, or multipart/form-data with one or more `file` parts",
        "content": {
            **{media: _IMAGE_BODY for media in sorted(SUPPORTED_MEDIA_TYPES)},
            "application/octet-stream": _IMAGE_BODY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                },
            },
        },
    },
}


def _replay(body: bytes) -> Any:
    """An ASGI receive that hands out ``body`` (already read and decompressed) once."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class InMemoryParts(MultiPartParser):
    """Multipart file parts kept in memory, where the body budget counts them: Starlette spools a
    part over 1 MiB to an unlinked file in ``$TMPDIR`` (40 held uploads used 760 MiB of disk that
    ``du`` does not show, outside any budget). A part is at most ``max_body_bytes`` anyway."""

    spool_max_size = 1 << 62


async def read_images(request: Request, state: AppState, max_images: int) -> list[bytes]:
    """The request's encoded images: the raw body, or every multipart ``file`` part."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    limits = state.settings
    if media_type != "multipart/form-data":
        check_media_type(media_type)
        return [await read_body(request, limits.max_decompressed_bytes)]
    source = request
    if content_encoding(request):  # the parser streams raw bytes: inflate first, then parse
        source = Request(request.scope, _replay(await read_body(request, limits.max_decompressed_bytes)))
    max_files = min(max_images, limits.max_multipart_files)
    try:
        async with aclosing(source.stream()) as stream:
            form = await InMemoryParts(source.headers, stream, max_files=max_files,
                                       max_fields=limits.max_multipart_files).parse()
    except PayloadTooLargeError:
        raise
    except Exception as exc:  # starlette raises HTTPException(400) or MultiPartException for bad bodies
        detail = getattr(exc, "detail", None) or str(exc)
        if "Too many files" in detail:
            setting = "max_images_per_request" if max_files == max_images else "max_multipart_files"
            raise TooManyImagesError(f"more than {max_files} images in one request: at most {max_files} "
                                     f"parts ({setting})") from exc
        if "Too many fields" in detail:
            raise InvalidRequestError(f"{detail} (at most {limits.max_multipart_files} parts)") from exc
        raise InvalidRequestError(f"malformed multipart body: {detail}") from exc
    try:
        parts = [part for part in form.getlist("file") if isinstance(part, UploadFile)]
        if not parts:
            raise InvalidRequestError("multipart body has no 'file' parts")
        images = []
        for part in parts:
            check_media_type(part.content_type)
            images.append(await part.read())
        return images
    finally:
        await form.close()


@router.post("/v2/models/{name}/classify", openapi_extra=OPENAPI_BODY)
@router.post("/v2/models/{name}/versions/{version}/classify", openapi_extra=OPENAPI_BODY)
async def classify(
    request: Request, name: str, version: str | None = None, top_k_: TopK = 5, timeout_ms: TimeoutMs = None,
) -> Response:
    """Classify one or more images."""
    state = get_state(request)
    pipeline = state.pipeline
    if top_k_ > state.settings.max_top_k:
        raise InvalidRequestError(f"top_k must be <= {state.settings.max_top_k}, got {top_k_}")
    with pipeline.request(name, version, "http", found=labelled(request)) as ticket:
        served = ticket.served
        with pipeline.tracing.span("read"):
            images = await read_images(request, state, pipeline.max_images(served))
        async with CancelOnDisconnect(request.receive):
            outputs = await pipeline.run_images(ticket, images, timeout_ms)
    with pipeline.tracing.span("encode"):
        body = {
            "model_name": served.name,
            "model_version": served.version,
            "random_weights": served.random_weights,
            "results": [{"predictions": preds} for preds in top_k_classes(served, outputs, top_k_)],
        }
        return Response(orjson.dumps(body), media_type="application/json")
