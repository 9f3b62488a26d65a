"""The stages: one module each (``env`` first, then those below), each with ``run(result, save, args)``
run in a child of its own. Here: what each needs, its time limit, and why one is skipped."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

StageRun = Callable[[dict[str, Any], Callable[[], None], argparse.Namespace], None]

_CORE = ["numpy", "PIL", "pydantic", "pydantic_settings", "yaml"]
# Stage -> (time limit in seconds, modules it imports, needs torchvision).
STAGES: dict[str, tuple[int, list[str], bool]] = {
    "tests": (100, ["pytest"], False),
    "engine": (100, [*_CORE, "onnxruntime"], False),
    "preprocess": (60, _CORE, True),
    "server": (190, [*_CORE, "typer", "rich", "fastapi", "uvicorn", "python_multipart", "orjson",
                     "prometheus_client", "opentelemetry.sdk.trace", "pythonjsonlogger", "httpx", "aiohttp",
                     "onnx", "onnxruntime", "onnxscript", "safetensors"], False),
}
ENV_LIMIT_S = 90  # the environment probe, which every stage's skip reason reads
CHILDREN = ("env", *STAGES)  # what a child runs: ``--stage NAME``


def stage_run(name: str) -> StageRun:
    """The ``run`` of stage ``name``'s module (imported here: only a child needs it)."""
    run: StageRun = importlib.import_module(f"{__name__}.{name}").run
    return run


def skip_reason(stage: str, env: dict[str, Any], remaining_s: float, wheels: dict[str, Any]) -> str | None:
    """Why ``stage`` cannot run here, or None."""
    _, needs, torchvision = STAGES[stage]
    torch = env.get("torch") or {}
    if not torch.get("version"):
        return f"torch does not import: {torch.get('error', 'environment probe failed')}"
    if not torch.get("cuda_available"):
        return f"no CUDA GPU ({torch.get('why')})"
    missing = [m for m in needs if not env.get("modules", {}).get(m, {}).get("version")]
    if torchvision:
        missing += [] if (env.get("torchvision") or {}).get("version") else ["torchvision"]
    if missing:
        hint = "" if wheels.get("status") == "ok" else " (make gpu-wheels here, carry gpu-wheels/ there)"
        return f"needs {', '.join(missing)}, which do not import{hint}"
    if remaining_s < 20:
        return f"only {remaining_s:.0f} s left of the budget"
    return None
