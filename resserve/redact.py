"""What answers anyone can read may show of the server's files: their names, never their folders.

Model metadata (``/v2/models/{name}``) and configuration (``.../config``) answer without a key
unless API keys are on; where the repository lives, where weights were read from, and the paths
of calibration images say nothing a client needs and much that an attacker wants. Failure
reasons (readiness, the repository index) name files relative to the repository, or by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from resserve.config import ModelConfig, is_weights_name

_ABSOLUTE = re.compile(r"^(/|~|\\\\|[A-Za-z]:[\\/])")  # POSIX, home, UNC, drive letter
MAX_REASON_CHARS = 240
# An absolute POSIX path (or ~/...) inside a sentence, not the second half of a relative one or of a URL.
_ABSOLUTE_IN_TEXT = re.compile(r"(?<![\w.~/:-])~?/[^\s'\"`,;:()\[\]{}<>]*")


def file_name(path: str) -> str:
    """The last component of a POSIX or Windows path."""
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1]


def without_paths(value: Any) -> Any:
    """``value`` (JSON-like) with every ``path`` field and every absolute path reduced to a file name."""
    if isinstance(value, dict):
        return {key: file_name(item) if key == "path" and isinstance(item, str) else without_paths(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    if isinstance(value, str) and _ABSOLUTE.match(value):
        return file_name(value)
    return value


def weights_name(source: str) -> str:
    """A weights source as shown: ``torchvision:``/``timm:`` names and descriptions as they are, files by name."""
    return source if is_weights_name(source) else file_name(source)


def public_config(config: ModelConfig) -> dict[str, Any]:
    """A model's configuration as ``/v2/models/{name}/config`` shows it.

    Dropped: ``fault_injection`` (how to make the engine fail) and ``calibration.images`` (a path);
    source weights, source ONNX and label files appear by file name only.
    """
    doc = config.model_dump(mode="json", exclude={"fault_injection": True, "calibration": {"images"}})
    source = doc["source"]
    if source.get("weights") is not None:
        source["weights"] = weights_name(source["weights"])
    if source.get("onnx") is not None:
        source["onnx"] = file_name(source["onnx"])
    if doc.get("labels") is not None:
        doc["labels"] = file_name(doc["labels"])
    result: dict[str, Any] = without_paths(doc)
    return result


def failure_reason(exc: BaseException, root: Path) -> str:
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
    message = _ABSOLUTE_IN_TEXT.sub(lambda match: file_name(match.group()), message)
    if len(message) > MAX_REASON_CHARS:
        message = message[: MAX_REASON_CHARS - 3] + "..."
    return message
