"""CPU seconds per thread of running processes over an interval, from /proc (Linux).

Where the cores go under load: engine instances, preprocessing threads, the event loop, the load
generator. Run it beside a load test:

    python loadtests/cpu_by_thread.py --seconds 8 SERVER_PID LOADGEN_PID

resserve names its threads for the kernel (``rs-engine-N``, ``rs-preprocess``; the main thread
runs the event loop), so the names printed say which is which. ``resserve bench server`` reads
the same figures by thread group for its windows (``resserve.perf.thread_cpu``).
"""

from __future__ import annotations

import argparse
import time

from resserve.perf.thread_cpu import thread_times


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User+system CPU seconds of every thread of ``pid`` so far."""
    return {t.tid: t.cpu_s for t in thread_times(pid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pids", type=int, nargs="+")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    before = {pid: {t.tid: t for t in thread_times(pid)} for pid in args.pids}
    time.sleep(args.seconds)
    for pid in args.pids:
        after = thread_times(pid)
        used = [(t, t.cpu_s - (before[pid][t.tid].cpu_s if t.tid in before[pid] else 0.0)) for t in after]
        print(f"process {pid}: {sum(s for _, s in used) / args.seconds:.2f} cores")
        for thread, seconds in sorted(used, key=lambda item: -item[1]):
            if seconds / args.seconds >= 0.01:
                print(f"  thread {thread.tid} {thread.name}: {seconds / args.seconds:.2f} cores")


if __name__ == "__main__":
    main()
