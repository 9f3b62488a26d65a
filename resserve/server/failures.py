"""Models that failed to load: a short reason for HTTP answers, the full story in the log.

Whatever goes wrong while a model loads (a truncated ``model.onnx``, metadata that is not JSON,
an engine that refuses the file) fails that model only. Readiness and the repository index say
why in a sentence; the sentence names the exception's type and files relative to the model
repository (other absolute paths by file name), never where the repository lives.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resserve.server.state import AppState

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 240
# An absolute POSIX path (or ~/...), not the second half of a relative one or of a URL.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/:-])~?/[^\s'\"`,;:()\[\]{}<>]*")


def load_failure_reason(exc: BaseException, root: Path) -> str:
    """``Type: message`` on one line, with paths under ``root`` relative to it and other absolute
    paths cut to their file name."""
    message = without_paths_under(str(exc), root)
    kind = type(exc).__name__
    return f"{kind}: {message}" if message else kind


def without_paths_under(text: str, root: Path) -> str:
    """``text`` on one line, at most MAX_REASON_CHARS, with paths under ``root`` relative to it and
    other absolute paths cut to their file name: what an unauthenticated answer may show."""
    message = " ".join(text.split())
    for prefix in sorted({str(root), str(root.resolve())}, key=len, reverse=True):
        escaped = re.escape(prefix.rstrip("/"))
        message = re.sub(escaped + "/", "", message)
        message = re.sub(escaped + r"(?![\w.-])", "<model_repo>", message)
    message = _ABSOLUTE_PATH.sub(lambda match: match.group().rstrip("/").rsplit("/", 1)[-1], message)
    if len(message) > MAX_REASON_CHARS:
        message = message[: MAX_REASON_CHARS - 3] + "..."
    return message


def record_load_failure(state: AppState, name: str, exc: BaseException) -> str:
    """Log why ``name`` did not load (with the traceback), remember the short reason, return it."""
    reason = load_failure_reason(exc, state.repository.root)
    log.error("model %s not loaded: %s", name, reason, exc_info=exc)
    state.failed[name] = reason
    return reason
