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


def _read_int(path: Path) -> int | None:
    """A whole number from a cgroup file; None where it is missing, "max" or not a number."""
    try:
        return int(_read(path) or "")
    except ValueError:
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
        if quota.isdigit() and period.isdigit() and int(period) > 0:
            limits.append(int(quota) / int(period))
    if not limits and (folder := _v1_folder(root, proc_cgroup, "cpu")) is not None:
        quota_us, period_us = _read_int(folder / "cpu.cfs_quota_us"), _read_int(folder / "cpu.cfs_period_us")
        if quota_us and period_us and quota_us > 0 and period_us > 0:
            limits.append(quota_us / period_us)
    return min(limits) if limits else None


def cgroup_cpu_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """Whole cores the CPU quota pays for (rounded up: 1.5 CPUs keep two threads busy), or None."""
    limit = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, math.ceil(limit)) if limit is not None else None


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """Bytes of memory the cgroup allows (the smallest limit on the way to the root), or None."""
    limits: list[int] = []
    limits += [v for folder in _v2_folders(root, proc_cgroup) if (v := _read_int(folder / "memory.max")) is not None]
    if not limits and (folder := _v1_folder(root, proc_cgroup, "memory")) is not None:
        value = _read_int(folder / "memory.limit_in_bytes")
        if value is not None and 0 < value < _UNLIMITED_V1:
            limits.append(value)
    return min(limits) if limits else None
