"""CPU seconds per thread of running processes over an interval, from /proc (Linux).

Where the cores go under load: engine instances, preprocessing threads, the event loop, the load
generator. Run it beside a load test:

    python loadtests/cpu_by_thread.py --seconds 8 SERVER_PID LOADGEN_PID

Thread names are the kernel's (Python thread names do not reach it); ``py-spy dump --pid PID``
maps thread ids to Python names.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User+system CPU seconds of every thread of ``pid`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pids", type=int, nargs="+")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    before = {pid: thread_cpu_seconds(pid) for pid in args.pids}
    time.sleep(args.seconds)
    for pid in args.pids:
        after = thread_cpu_seconds(pid)
        used = {tid: t - before[pid].get(tid, 0.0) for tid, t in after.items()}
        print(f"process {pid}: {sum(used.values()) / args.seconds:.2f} cores")
        for tid, seconds in sorted(used.items(), key=lambda item: -item[1]):
            if seconds / args.seconds >= 0.01:
                print(f"  thread {tid}: {seconds / args.seconds:.2f} cores")


if __name__ == "__main__":
    main()
