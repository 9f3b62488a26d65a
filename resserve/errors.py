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


class EngineUnavailableError(ResserveError):
    """The requested engine or execution provider is not installed or has no device."""


class EngineError(ResserveError):
    """An engine failed while loading or running a batch."""
