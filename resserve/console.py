"""Terminal output that stays readable when piped or logged.

Off a terminal Rich assumes 80 columns: log lines wrap mid-message and table cells are cut to
``272…``. So on a terminal output is Rich's; off one, tables are drawn at their natural width and
logs are plain lines, one per event, with a timestamp, that ``grep`` and log collectors can read.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

from rich.console import Console
from rich.logging import RichHandler

from resserve.logs import RequestContext, TextFormatter, json_formatter

# Wide enough that no table of ours is ever squeezed; Rich draws tables at their natural width.
PIPED_WIDTH = 10_000
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_console(stderr: bool = False) -> Console:
    """A Rich console for stdout (or stderr) that never wraps or truncates when not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True)


LogFormat = Literal["auto", "json", "text"]


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, as logging's own last-resort
    handler does: a stream swapped and closed under the logger (click's CliRunner, a test's
    capture) never leaves it writing to a closed file."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure_logging(level: str, log_format: LogFormat = "auto") -> None:
    """``json``: one JSON object per line (:mod:`resserve.logs`); ``text``: Rich lines on a terminal,
    plain lines that never wrap off one; ``auto``: JSON off a terminal (a container, a pipe), text
    on one. Every record carries the request id it was written for; uvicorn's loggers propagate
    to the same handler."""
    handler: logging.Handler
    on_terminal = sys.stderr.isatty()
    if log_format == "json" or (log_format == "auto" and not on_terminal):
        handler = StderrHandler()
        handler.setFormatter(json_formatter())
    elif on_terminal:
        handler = RichHandler(console=make_console(stderr=True), show_path=False)
        handler.setFormatter(TextFormatter("%(message)s"))
    else:
        handler = StderrHandler()
        handler.setFormatter(TextFormatter(PLAIN_FORMAT))
    handler.addFilter(RequestContext())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own, through ours
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
