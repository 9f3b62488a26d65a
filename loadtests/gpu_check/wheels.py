"""``gpu-wheels/``: install, into a temporary folder, each wheel whose package is missing or older here."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _older(installed: str, offered: str) -> bool:
    try:
        from packaging.version import Version
    except ImportError:  # cannot compare: keep what is there
        return False
    try:
        return Version(installed) < Version(offered)
    except ValueError:
        return False


def install_wheels(folder: Path, log: TextIO) -> dict[str, Any]:
    """Install into a temporary folder each wheel of ``folder`` whose package is missing here or
    older (the machine's own compiled packages, newer or equal, stay in use)."""
    if not folder.is_dir():
        return {"status": "none", "note": f"no {folder.name}/ folder (make gpu-wheels, then carry it)"}
    offered: dict[str, str] = {}
    for wheel in folder.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        name = _canonical(name)
        if name not in offered or _older(offered[name], version):
            offered[name] = version
    wanted = []
    for name, version in sorted(offered.items()):
        try:
            if not _older(importlib.metadata.version(name), version):
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        wanted.append(f"{name}=={version}")
    if not wanted:
        return {"status": "ok", "installed": [], "note": f"{len(offered)} wheels offered, all already installed"}
    site = Path(tempfile.gettempdir()) / "resserve-gpu-site"
    shutil.rmtree(site, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
               "--no-deps", "--no-compile", "--no-cache-dir", "--find-links", str(folder), "--target", str(site),
               *wanted]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"status": "failed", "note": f"pip install did not finish: {exc}"}
    log.write(f"[wheels] {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "note": f"pip install exited {done.returncode}: {tail[0]}"}
    return {"status": "ok", "installed": wanted, "site": str(site),
            "note": f"installed {len(wanted)} of {len(offered)} wheels into {site}"}
