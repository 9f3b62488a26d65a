"""Terminal output that stays readable when piped or logged.

Off a terminal Rich assumes 80 columns: log lines wrap mid-message and table cells are cut to
``272…``. So on a terminal output is Rich's; off one, tables are drawn at their natural width and
logs are plain lines, one per event, with a timestamp, that ``grep`` and log collectors can read.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

# Wide enough that no table of ours is ever squeezed; Rich draws tables at their natural width.
PIPED_WIDTH = 10_000
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_console(stderr: bool = False) -> Console:
    """A Rich console for stdout (or stderr) that never wraps or truncates when not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True)


def configure_logging(level: str) -> None:
    """Rich log lines on a terminal; off one, plain lines that never wrap."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=make_console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
