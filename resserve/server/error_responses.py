"""The one place domain errors become HTTP answers: ``{"error": "..."}`` as OIP v2 specifies."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from resserve import errors
from resserve.config import validation_problems

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ResserveError], int] = {
    errors.InvalidImageError: 400,
    errors.UnauthorizedError: 401,
    errors.ForbiddenError: 403,
    errors.ModelNotFoundError: 404,
    errors.ConflictError: 409,
    errors.ImageTooLargeError: 413,
    errors.PayloadTooLargeError: 413,
    errors.ClientDisconnectedError: 499,
    errors.RequestTimeoutError: 408,
    errors.UnsupportedMediaTypeError: 415,
    errors.InvalidRequestError: 400,
    errors.ConfigError: 422,
    errors.EngineError: 500,
    errors.ModelNotReadyError: 503,
    errors.QueueFullError: 503,
    errors.DeadlineExceededError: 504,
}


def status_of(exc: BaseException) -> int:
    """HTTP status for an exception (500 for anything unexpected)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json",
                    headers=headers)


def response_for(exc: BaseException) -> Response:
    """The JSON error answer for ``exc``; unexpected errors are logged and answered generically."""
    status = status_of(exc)
    headers = None
    if isinstance(exc, errors.QueueFullError | errors.ModelNotReadyError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    elif isinstance(exc, errors.UnauthorizedError):
        headers = {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, errors.ResserveError):
        return error_response(status, str(exc), headers)
    log.error("unexpected error: %s", exc, exc_info=exc)
    return error_response(500, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through :func:`response_for`; FastAPI's parameter validation answers 400
    like every other malformed request (Triton's and KServe's clients, and gateways' retry rules,
    read 400 as "the request is wrong")."""

    async def on_resserve_error(_request: Request, exc: Exception) -> Response:
        return response_for(exc)

    async def on_validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, validation_problems(exc.errors()))  # a bad request, as InvalidRequestError

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    app.add_exception_handler(errors.ResserveError, on_resserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    async def on_disconnect(_request: Request, _exc: Exception) -> Response:
        # The client went away mid-upload: nobody reads this answer, and it is no server error.
        return response_for(errors.ClientDisconnectedError("the client disconnected while sending the body"))

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_resserve_error)
