"""Domain exceptions. No HTTP here: the server maps them to status codes in one place."""

from __future__ import annotations


class ResserveError(Exception):
    """Base class of every error resserve raises on purpose."""


class ConfigError(ResserveError):
    """A configuration file or option has a bad value."""


class WeightsError(ResserveError):
    """Model weights are missing, unreadable, or do not match the architecture."""


class ExportError(ResserveError):
    """Exporting or optimizing an ONNX graph failed, or the result failed its checks."""


class ParityError(ExportError):
    """Two implementations of the same model disagree beyond the stated tolerance."""


class AccuracyError(ResserveError):
    """A compiled variant agrees with its fp32 reference less than the configured floor."""


class EngineUnavailableError(ResserveError):
    """The requested engine or execution provider is not installed or has no device."""


class EngineError(ResserveError):
    """An engine failed while loading or running a batch."""


class EngineHungError(EngineError):
    """An engine call outlived the watchdog's ``engine_timeout_s`` (HTTP 500, as any engine failure)."""


class ModelNotFoundError(ResserveError):
    """No model (or version) of that name is in the repository (HTTP 404)."""


class ModelNotReadyError(ResserveError):
    """The model is loading, draining, unloaded or its engine stopped answering (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(ResserveError):
    """The batch queue is full: retry after ``retry_after_s`` (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(ResserveError):
    """The request's deadline passed before it was answered (HTTP 504)."""


class UnauthorizedError(ResserveError):
    """A control endpoint was called without the right bearer token (HTTP 401)."""


class ForbiddenError(ResserveError):
    """A control endpoint is disabled by configuration (HTTP 403)."""


class ConflictError(ResserveError):
    """The request cannot be carried out the way the server runs now, e.g. with workers (HTTP 409)."""


class InvalidRequestError(ResserveError):
    """A request is malformed or has bad parameters (HTTP 400, gRPC INVALID_ARGUMENT)."""


class InvalidImageError(ResserveError):
    """The image bytes are empty, corrupt, truncated or undecodable (HTTP 400)."""


class ImageTooLargeError(ResserveError):
    """The image has more pixels (or bytes) than the configured limit (HTTP 413)."""


class UnsupportedMediaTypeError(ResserveError):
    """The content type or the sniffed image format is not one resserve decodes (HTTP 415)."""


class PayloadTooLargeError(ResserveError):
    """A request body is larger than the configured limit (HTTP 413)."""


class TooManyImagesError(PayloadTooLargeError):
    """A request carries more images (or tensor rows) than ``max_images_per_request`` (HTTP 413)."""


class ClientDisconnectedError(ResserveError):
    """The client went away before its answer was ready; its work was cancelled (HTTP 499, logged only)."""


class RequestTimeoutError(ResserveError):
    """The request body did not arrive within ``body_timeout_s`` (HTTP 408)."""
