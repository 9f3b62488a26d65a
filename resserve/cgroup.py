"""The CPU and memory this process may use, from its cgroup (a Kubernetes limit is one).

A container's CPU limit is a quota of CPU time per period (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1), not a smaller affinity mask: a pod limited
to 2 CPUs on a 64-core node still sees 64 cores, and thread pools sized by that would be
throttled. Memory likewise: ``memory.max`` (v2) or ``memory.limit_in_bytes`` (v1). Every limit
on the way from the process's cgroup to the root applies, so the smallest one wins. A leaf: no
resserve imports.
"""

from __future__ import annotations

import math
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_UNLIMITED_V1 = 1 << 60  # v1 writes "no limit" as a huge page-rounded number


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """The process's cgroup v2 folder and its parents up to the root (innermost first)."""
    text = _read(proc_cgroup) or ""
    relative = next((line.split(":", 2)[2] for line in text.splitlines() if line.startswith("0::")), None)
    if relative is None:
        return []
    folder = root / relative.lstrip("/")
    if not folder.is_dir():  # a private cgroup namespace mounts the process's own cgroup at the root
        folder = root
    folders = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        folders.append(folder)
    return folders


def _v1_folder(root: Path, proc_cgroup: Path, controller: str) -> Path | None:
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        _, controllers, relative = [*line.split(":", 2), "", ""][:3]
        if controller in controllers.split(","):
            for mount in (root / controllers, root / controller):
                candidate = mount / relative.lstrip("/")
                if candidate.is_dir():
                    return candidate
                if mount.is_dir():  # namespaced: the process's cgroup is the mount itself
                    return mount
    return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs' worth of time the cgroup allows (quota / period, e.g. 1.5), or None when unlimited."""
    limits: list[float] = []
    for folder in _v2_folders(root, proc_cgroup):
        quota, _, period = (_read(folder / "cpu.max") or "max").partition(" ")
        if quota != "max" and period:
            try:
                limits.append(int(quota) / int(period))
            except (ValueError, ZeroDivisionError):
                continue
    if not limits:
        folder = _v1_folder(root, proc_cgroup, "cpu")
        if folder is not None:
            try:
                quota_us = int(_read(folder / "cpu.cfs_quota_us") or "-1")
                period_us = int(_read(folder / "cpu.cfs_period_us") or "0")
            except ValueError:
                quota_us, period_us = -1, 0
            if quota_us > 0 and period_us > 0:
                limits.append(quota_us / period_us)
    return min(limits) if limits else None


def cgroup_cpu_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """Whole cores the CPU quota pays for (rounded up: 1.5 CPUs keep two threads busy), or None."""
    limit = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, math.ceil(limit)) if limit is not None else None


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """Bytes of memory the cgroup allows (the smallest limit on the way to the root), or None."""
    limits: list[int] = []
    for folder in _v2_folders(root, proc_cgroup):
        value = _read(folder / "memory.max")
        if value and value != "max":
            try:
                limits.append(int(value))
            except ValueError:
                continue
    if not limits:
        folder = _v1_folder(root, proc_cgroup, "memory")
        if folder is not None:
            try:
                value_v1 = int(_read(folder / "memory.limit_in_bytes") or "0")
            except ValueError:
                value_v1 = 0
            if 0 < value_v1 < _UNLIMITED_V1:
                limits.append(value_v1)
    return min(limits) if limits else None
