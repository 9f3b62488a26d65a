"""``POST /v2/models/{name}[/versions/{v}]/classify``: images in, top-k labels out.

The body is the image itself (``Content-Type: image/jpeg`` etc.) or ``multipart/form-data`` with
one or more ``file`` parts.
"""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from resserve.errors import InvalidRequestError, PayloadTooLargeError
from resserve.preprocess import check_media_type
from resserve.server.inference import top_k
from resserve.server.state import AppState, get_state

router = APIRouter()

TopK = Annotated[int, Query(alias="top_k", ge=1, description="how many classes per image, best first")]
TimeoutMs = Annotated[float | None, Query(gt=0, description="deadline in ms (default: the model's)")]


async def read_images(request: Request, state: AppState) -> list[bytes]:
    """The request's encoded images: the raw body, or every multipart ``file`` part."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        limits = state.settings
        try:
            form = await request.form(max_files=limits.max_multipart_files, max_fields=limits.max_multipart_files)
        except PayloadTooLargeError:
            raise
        except Exception as exc:  # starlette raises HTTPException(400) or MultiPartException for bad bodies
            detail = getattr(exc, "detail", None) or str(exc)
            if "Too many files" in detail or "Too many fields" in detail:
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
    check_media_type(media_type)
    return [await request.body()]


@router.post("/v2/models/{name}/classify")
@router.post("/v2/models/{name}/versions/{version}/classify")
async def classify(
    request: Request, name: str, version: str | None = None, top_k_: TopK = 5, timeout_ms: TimeoutMs = None,
) -> Response:
    """Classify one or more images."""
    received = time.monotonic()
    state = get_state(request)
    served = state.manager.get(name, version)
    request.state.model, request.state.version = served.name, served.version
    if top_k_ > state.settings.max_top_k:
        raise InvalidRequestError(f"top_k must be <= {state.settings.max_top_k}, got {top_k_}")
    with state.service.admit(served):
        images = await read_images(request, state)
        deadline = state.service.deadline(served, timeout_ms)
        try:
            outputs = await state.service.infer_images(served, images, deadline, received)
            scores = state.service.scores(served, outputs)
        except BaseException as exc:
            state.metrics.images.labels(name, "error").inc(len(images))
            raise exc
    state.metrics.images.labels(name, "ok").inc(len(images))
    body = {
        "model_name": served.name,
        "model_version": served.version,
        "random_weights": served.random_weights,
        "results": [{"predictions": preds} for preds in top_k(scores, top_k_, served.labels)],
    }
    return Response(orjson.dumps(body), media_type="application/json")
