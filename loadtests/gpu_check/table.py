"""The rows a stage reports, and the two tables the parent prints: the environment and the results."""

from __future__ import annotations

import platform
from collections.abc import Collection
from typing import Any

TABLE_COLUMNS = ("stage", "what", "batch", "img/s", "p50 ms", "p99 ms", "note")
RIGHT_ALIGNED = {2, 3, 4, 5}


def text_table(headers: tuple[str, ...], rows: list[list[str]], right: Collection[int] = ()) -> str:
    """Plain columns at their natural width: nothing wraps or is cut, piped or not."""
    cells = [list(headers), *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(row) for row in cells[1:])])


def _fmt(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def row(stage: str, what: str, *, batch: int | str | None = None, img_s: float | None = None,
        p50_ms: float | None = None, p99_ms: float | None = None, note: str = "") -> dict[str, Any]:
    """One line of the final table (and of the JSON's ``table``)."""
    return {"stage": stage, "what": what, "batch": batch, "img_s": img_s, "p50_ms": p50_ms, "p99_ms": p99_ms,
            "note": note}


def env_rows(env: dict[str, Any], wheels: dict[str, Any]) -> list[list[str]]:
    torch = env.get("torch") or {}
    rows = [["python", env.get("python", platform.python_version())],
            ["cpu", f"{env.get('cpu', '?')}, {env.get('cores', '?')} cores"],
            ["gpu-wheels", f"{wheels['status']}: {wheels.get('note', '')}"]]
    if torch.get("version"):
        rows.append(["torch", f"{torch['version']} (CUDA build {torch.get('cuda_build') or 'none'}, cuDNN "
                              f"{torch.get('cudnn') or 'none'})"])
        rows.append(["gpu", torch.get("gpu") or f"none ({torch.get('why')})"])
    else:
        rows.append(["torch", f"does not import: {torch.get('error', '?')}"])
    tv = env.get("torchvision") or {}
    rows.append(["torchvision", tv.get("version") or f"missing: {tv.get('error', '?')}"])
    if env.get("driver"):
        rows.append(["nvidia driver", env["driver"]])
    for module, info in (env.get("modules") or {}).items():
        where = " (gpu-wheels)" if info.get("from_wheels") else ""
        rows.append([module, f"{info['version']}{where}" if info.get("version") else f"missing: {info.get('error')}"])
    if env.get("onnxruntime_providers"):
        rows.append(["onnxruntime providers", ", ".join(env["onnxruntime_providers"])])
    if env.get("status") != "ok":
        rows.append(["environment probe", f"{env.get('status')}: {env.get('reason', '')}"])
    return rows


def table_rows(stages: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for stage in stages:
        for r in stage.get("rows", []):
            rows.append([r["stage"], r["what"], _fmt(r.get("batch"), 0), _fmt(r.get("img_s"), 1),
                         _fmt(r.get("p50_ms"), 3), _fmt(r.get("p99_ms"), 3), r.get("note", "")])
        if stage["status"] != "ok" or not stage.get("rows"):
            rows.append([stage["name"], stage["status"], "", "", "", "", stage.get("reason", "")])
        for note in stage.get("notes", []):
            rows.append([stage["name"], "note", "", "", "", "", note])
    return rows
