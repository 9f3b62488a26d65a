"""Per-thread CPU accounting: kernel thread names and CPU by job over a real process tree."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from resserve.perf.thread_cpu import ServerCpu, ThreadTime, group_of, process_tree
from resserve.threads import set_os_thread_name

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def _comm(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_a_thread_names_itself_for_the_kernel() -> None:
    seen: dict[str, str] = {}

    def named(name: str) -> None:
        assert set_os_thread_name(name)
        seen[name] = _comm(threading.get_native_id())

    for name in ("rs-engine-0", "rs-preprocess-and-more"):
        thread = threading.Thread(target=named, args=(name,))
        thread.start()
        thread.join()
    assert seen == {"rs-engine-0": "rs-engine-0", "rs-preprocess-and-more": "rs-preprocess-a"}  # 15 bytes
    assert _comm(threading.get_native_id()) != "rs-engine-0"  # the caller's own name is untouched


def test_groups_follow_names_and_main_threads() -> None:
    def thread(pid: int, tid: int, name: str) -> ThreadTime:
        return ThreadTime(pid, tid, name, 0.0)

    assert group_of(thread(10, 11, "rs-engine-1"), 10, False) == "engine threads"
    assert group_of(thread(10, 12, "rs-preprocess"), 10, False) == "preprocessing threads"
    assert group_of(thread(10, 10, "python"), 10, False) == "event loops"
    assert group_of(thread(10, 10, "python"), 10, True) == "supervisor"
    assert group_of(thread(20, 20, "python"), 10, True) == "event loops"  # a worker's main thread
    assert group_of(thread(10, 13, "ort-pool"), 10, False) == "other threads"


SPINNERS = textwrap.dedent("""
    import subprocess, sys, threading, time
    from resserve.threads import set_os_thread_name

    def spin(name):
        set_os_thread_name(name)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            sum(range(1000))

    for name in ("rs-engine-0", "rs-preprocess"):
        threading.Thread(target=spin, args=(name,), daemon=True).start()
    child = subprocess.Popen([sys.executable, "-c", "import time\\nend = time.monotonic() + 30\\n"
                              "while time.monotonic() < end: sum(range(1000))"])
    print("ready", flush=True)
    time.sleep(30)
""")


def test_cpu_of_a_process_tree_is_split_by_job() -> None:
    """A 'supervisor' that sleeps, with an engine and a preprocessing thread spinning, and a child
    process ('worker') spinning in its main thread: each lands in its group, the sleeper in none."""
    root = subprocess.Popen([sys.executable, "-c", SPINNERS], stdout=subprocess.PIPE, text=True)
    try:
        assert root.stdout is not None and root.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while len(process_tree(root.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(process_tree(root.pid)) == 2
        cpu = ServerCpu(root.pid)
        cpu.start()
        time.sleep(1.5)
        used = cpu.stop()
    finally:
        for pid in process_tree(root.pid)[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        root.kill()
        root.wait(10)
        root.stdout.close()
    # Three spinners share the cores: each gets a fair part of 1.5 s; the sleeping main thread none.
    for group in ("engine threads", "preprocessing threads", "event loops"):
        assert used[group] > 0.2, used
    assert used["supervisor"] < 0.1 and used["other threads"] < 0.1, used
    assert used["load generator"] < 0.2 and used["idle"] >= 0.0, used
