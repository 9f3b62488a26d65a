"""Where a server's CPU goes: CPU seconds per thread from ``/proc`` (Linux), grouped by job.

The server names its threads for the kernel (``resserve.threads``): engine threads
``rs-engine-N``, preprocessing threads ``rs-preprocess``. A process's main thread runs its event
loop (HTTP, routing, batching, answers). With ``--workers`` the root process is the supervisor and
its children are the workers. Threads a native library starts (OpenVINO's or ONNX Runtime's pools)
carry the name of the thread that started them, or their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from resserve.threads import ENGINE_PREFIX, PREPROCESS_PREFIX

GROUPS = ("engine threads", "preprocessing threads", "event loops", "supervisor", "other threads")


@dataclass(frozen=True)
class ThreadTime:
    pid: int
    tid: int
    name: str
    cpu_s: float


def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def thread_times(pid: int, proc: Path = Path("/proc")) -> list[ThreadTime]:
    """User+system CPU seconds so far of every thread of ``pid``; threads that end meanwhile are skipped."""
    ticks = _ticks()
    out = []
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:  # the process ended
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out.append(ThreadTime(pid, int(task.name), name, (int(fields[11]) + int(fields[12])) / ticks))
    return out


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Direct child processes of ``pid`` (every thread's ``children`` file)."""
    found: dict[int, None] = {}  # a child can be listed by more than one thread's file
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            found.update(dict.fromkeys(int(c) for c in (task / "children").read_text().split()))
        except OSError:
            continue
    return list(found)


def process_tree(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """``pid`` and all its descendants."""
    tree: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        if current not in tree:
            tree.append(current)
            stack += children(current, proc)
    return tree


def group_of(thread: ThreadTime, root: int, has_workers: bool) -> str:
    """Which job a thread does, from its process and kernel name."""
    if thread.name.startswith(ENGINE_PREFIX):
        return "engine threads"
    if thread.name.startswith(PREPROCESS_PREFIX):
        return "preprocessing threads"
    if thread.tid == thread.pid:
        return "supervisor" if thread.pid == root and has_workers else "event loops"
    return "other threads"


def idle_cpu_seconds(proc: Path = Path("/proc")) -> float:
    """Idle + iowait seconds of all CPUs so far (``/proc/stat``)."""
    fields = (proc / "stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / _ticks()


@dataclass
class Sample:
    threads: dict[tuple[int, int], ThreadTime]
    groups: dict[tuple[int, int], str]
    idle_s: float
    own_s: float


class ServerCpu:
    """CPU of a server process tree by group, of this process (the load generator) and idle,
    between :meth:`start` and :meth:`stop`."""

    def __init__(self, root_pid: int, proc: Path = Path("/proc")) -> None:
        self.root = root_pid
        self.proc = proc
        self._start: Sample | None = None

    def _sample(self) -> Sample:
        tree = process_tree(self.root, self.proc)
        has_workers = len(tree) > 1
        threads: dict[tuple[int, int], ThreadTime] = {}
        groups: dict[tuple[int, int], str] = {}
        for pid in tree:
            for thread in thread_times(pid, self.proc):
                threads[(thread.pid, thread.tid)] = thread
                groups[(thread.pid, thread.tid)] = group_of(thread, self.root, has_workers)
        own = os.times()
        return Sample(threads, groups, idle_cpu_seconds(self.proc), own.user + own.system)

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since :meth:`start`, plus ``load generator`` (this process) and ``idle``."""
        if self._start is None:
            raise RuntimeError("ServerCpu.stop() before start()")
        end = self._sample()
        used = dict.fromkeys(GROUPS, 0.0)
        for key, thread in end.threads.items():
            before = self._start.threads.get(key)
            used[end.groups[key]] += thread.cpu_s - (before.cpu_s if before else 0.0)
        used["load generator"] = end.own_s - self._start.own_s
        used["idle"] = end.idle_s - self._start.idle_s
        return used
