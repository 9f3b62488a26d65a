"""Per-thread CPU accounting: kernel thread names and CPU by job over a real process tree."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
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


# Each spinner burns a fixed amount of its own CPU time (time.thread_time) between "go" and "done",
# then stays alive (an ended thread or process leaves /proc, and its CPU with it): what each group
# used is known however the machine is shared, with no wall-clock window.
WORK_S = 0.25

WORKER = textwrap.dedent("""
    import sys, time
    print("ready", flush=True)
    assert sys.stdin.readline() == "go\\n"
    end, deadline = time.thread_time() + float(sys.argv[1]), time.monotonic() + 60
    while time.thread_time() < end and time.monotonic() < deadline:
        sum(range(1000))
    print("done", flush=True)
    sys.stdin.read()  # until the supervisor closes it
""")

SPINNERS = textwrap.dedent("""
    import subprocess, sys, threading, time
    from resserve.threads import set_os_thread_name

    work_s, worker = float(sys.argv[1]), sys.argv[2]
    go, stop = threading.Event(), threading.Event()

    def spin(name, done):
        set_os_thread_name(name)
        go.wait()
        end, deadline = time.thread_time() + work_s, time.monotonic() + 60
        while time.thread_time() < end and time.monotonic() < deadline:
            sum(range(1000))
        done.set()
        stop.wait()

    dones = []
    for name in ("rs-engine-0", "rs-preprocess"):
        dones.append(threading.Event())
        threading.Thread(target=spin, args=(name, dones[-1]), daemon=True).start()
    child = subprocess.Popen([sys.executable, "-c", worker, str(work_s)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\\n"
    print("ready", flush=True)
    assert sys.stdin.readline() == "go\\n"
    go.set()
    child.stdin.write("go\\n")
    child.stdin.flush()
    for done in dones:
        done.wait()
    assert child.stdout.readline() == "done\\n"
    print("done", flush=True)
    sys.stdin.read()  # until the test has measured and closes it
    stop.set()
    child.stdin.close()
    child.wait(30)
""")


def test_cpu_of_a_process_tree_is_split_by_job() -> None:
    """A 'supervisor' that waits, with an engine and a preprocessing thread spinning, and a child
    process ('worker') spinning in its main thread: each lands in its group, the waiter in none."""
    root = subprocess.Popen([sys.executable, "-c", SPINNERS, str(WORK_S), WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert root.stdin is not None and root.stdout is not None
    try:
        assert root.stdout.readline() == "ready\n"  # the worker is started and waits too
        assert len(process_tree(root.pid)) == 2
        cpu = ServerCpu(root.pid)
        cpu.start()
        root.stdin.write("go\n")
        root.stdin.flush()
        assert root.stdout.readline() == "done\n"
        used = cpu.stop()
        root.stdin.close()
        assert root.wait(30) == 0
    finally:
        for pid in process_tree(root.pid)[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        root.kill()
        root.wait(10)
        root.stdout.close()
    # /proc counts in clock ticks (10 ms): each spinner's WORK_S, to a tick or two; the waiters none.
    for group in ("engine threads", "preprocessing threads", "event loops"):
        assert used[group] == pytest.approx(WORK_S, abs=0.05), used
    assert used["supervisor"] < 0.05 and used["other threads"] < 0.05, used
    assert used["load generator"] < 0.2 and used["idle"] >= 0.0, used
