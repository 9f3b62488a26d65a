"""Structured logs: one JSON object per line (python-json-logger), each record carrying the id of
the request it was written for.

The request id lives in a context variable that the server's request-id middleware sets for the
request's task, so every record written while handling it (the access line, an error with its
traceback, a warning deep in the pipeline) carries ``request_id`` without being passed it.
"""

from __future__ import annotations

import logging
import re
import time
from contextvars import ContextVar
from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("resserve_request_id", default=None)

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
_RENAME = {"asctime": "timestamp", "levelname": "level", "name": "logger"}
# uvicorn gives its records a ``color_message`` extra: the message again, with ANSI colour escapes.
_NOT_FIELDS = (*RESERVED_ATTRS, "color_message")


class RequestContext(logging.Filter):
    """Adds ``request_id`` (None outside a request) to every record, and ``trace_id`` and ``span_id``
    while a span is recording (tracing on): a log line leads to its trace and back."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        span = trace.get_current_span().get_span_context()
        if span.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = f"{span.trace_id:032x}"
            record.span_id = f"{span.span_id:016x}"
        return True


def json_formatter() -> logging.Formatter:
    """timestamp (ISO 8601, UTC), level, logger, message, request_id, and any ``extra`` fields."""
    formatter = JsonFormatter(JSON_FIELDS, rename_fields=_RENAME, timestamp=False, json_ensure_ascii=False,
                              reserved_attrs=_NOT_FIELDS)
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


# C0 and C1 control characters and DEL: a newline in a client's path would forge a log line, an
# ANSI escape would repaint the operator's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``): one line, inert."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1] if m.group() in "\n\r\t" else f"\\x{ord(m.group()):02x}",
                        text)


class TextFormatter(logging.Formatter):
    """Text lines whose message cannot hold a control character: what a client sent (a path, a
    header) is logged escaped. A traceback, which the server writes itself, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)
