"""CPU and memory limits read from cgroup files laid out as the kernel lays them out (v2 and v1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resserve.cgroup import cgroup_cpu_cores, cgroup_cpu_limit, cgroup_memory_limit


def _tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir()
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc_file = tmp_path / "proc-self-cgroup"
    proc_file.write_text(proc)
    return root, proc_file


def test_a_kubernetes_cpu_limit_is_read_from_cpu_max(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/pod1/ctr/cpu.max": "150000 100000\n",  # limits.cpu: 1500m
        "kubepods/pod1/ctr/memory.max": "4294967296\n",
        "kubepods/pod1/cpu.max": "max 100000\n",
    })
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    assert cgroup_cpu_cores(root, proc) == 2  # 1.5 CPUs keep two threads busy
    assert cgroup_memory_limit(root, proc) == 4 << 30


def test_the_smallest_limit_on_the_way_to_the_root_wins(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/outer/inner\n", {
        "outer/inner/cpu.max": "max 100000\n",
        "outer/inner/memory.max": "max\n",
        "outer/cpu.max": "50000 100000\n",
        "outer/memory.max": "1073741824\n",
    })
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)
    assert cgroup_cpu_cores(root, proc) == 1
    assert cgroup_memory_limit(root, proc) == 1 << 30


def test_no_limit_is_none(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n", "memory.max": "max\n"})
    assert cgroup_cpu_limit(root, proc) is None and cgroup_cpu_cores(root, proc) is None
    assert cgroup_memory_limit(root, proc) is None


def test_a_namespaced_cgroup_reads_the_mount_itself(tmp_path: Path) -> None:
    """With a private cgroup namespace /proc/self/cgroup names a path the mount does not have."""
    root, proc = _tree(tmp_path, "0::/kubepods/pod1/ctr\n", {"cpu.max": "200000 100000\n"})
    assert cgroup_cpu_cores(root, proc) == 2


def test_cgroup_v1_quota_and_memory(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "memory/docker/abc/memory.limit_in_bytes": "536870912\n",
    })
    assert cgroup_cpu_cores(root, proc) == 3
    assert cgroup_memory_limit(root, proc) == 512 << 20


def test_cgroup_v1_without_limits(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "4:memory:/\n3:cpu,cpuacct:/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n",
    })
    assert cgroup_cpu_limit(root, proc) is None and cgroup_memory_limit(root, proc) is None


def test_garbage_is_no_limit(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path, "0::/x\n", {"x/cpu.max": "lots 0\n", "x/memory.max": "many\n"})
    assert cgroup_cpu_limit(root, proc) is None and cgroup_memory_limit(root, proc) is None
    assert cgroup_cpu_limit(root, tmp_path / "missing") is None


def test_available_cores_never_exceed_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    from resserve.engines import hardware

    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: 1.2)
    assert hardware.available_cores() == min(2, len(__import__("os").sched_getaffinity(0)))
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: 0.25)
    assert hardware.available_cores() == 1
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: None)
    assert hardware.available_cores() == len(__import__("os").sched_getaffinity(0))
