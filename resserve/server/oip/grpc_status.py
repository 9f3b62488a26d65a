"""The one place domain errors become gRPC status codes.

Mapped from the HTTP status the error has (:func:`resserve.server.error_responses.status_of`), so both
protocols answer the same error alike: 400/413/415/422 -> INVALID_ARGUMENT (Triton's choice for a
request it will not run; a too-large request is the client's to fix, not an exhausted resource),
401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 404 -> NOT_FOUND, 408/504 -> DEADLINE_EXCEEDED,
409 -> FAILED_PRECONDITION,
499 -> CANCELLED, 503 queue full -> RESOURCE_EXHAUSTED, 503 not ready -> UNAVAILABLE, anything else
-> INTERNAL with a generic message (the traceback is logged). A refusal that may be retried
carries ``retry-after`` (seconds) in the trailing metadata, as HTTP's Retry-After.
"""

from __future__ import annotations

import logging

import grpc

from resserve import errors
from resserve.server.error_responses import status_of

log = logging.getLogger(__name__)

_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """Code, message and trailing metadata for ``exc``; unexpected errors are logged, not shown."""
    if not isinstance(exc, errors.ResserveError):
        log.error("unexpected error: %s", exc, exc_info=exc)
        return grpc.StatusCode.INTERNAL, "internal server error", ()
    code = _BY_HTTP.get(status_of(exc), grpc.StatusCode.INTERNAL)
    if isinstance(exc, errors.QueueFullError):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, errors.QueueFullError | errors.ModelNotReadyError):
        trailers = (("retry-after", str(max(1, round(exc.retry_after_s)))),)
    return code, str(exc), trailers

