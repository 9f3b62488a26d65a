"""What the observers cost per image: the bookkeeping of one single-image request, written the old
way (metrics and statistics called side by side, as resserve did before the observers) against
the same events through ``Observers`` with the Prometheus and statistics sinks.

    python loadtests/observer_cost.py --rounds 7 --calls 20000

Interleaved rounds, the median reported; CPU time (``time.process_time``) per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from resserve.metrics import Metrics
from resserve.perf.bench_engine import environment
from resserve.serving.observers import BatchRun, Observers
from resserve.serving.sinks import PrometheusSink, StatisticsSink
from resserve.serving.statistics import ModelStatistics

IMAGE = b"\xff\xd8" + bytes(1000)


def direct(metrics: Metrics, stats: ModelStatistics, calls: int) -> float:
    """The old code's calls for one image in one request, in one batch of one."""
    started = time.process_time()
    for _ in range(calls):
        metrics.queue_depth.labels("m", "1").set(1)
        metrics.preprocess_wait.labels("m").observe(0.0001)
        metrics.decode.labels("m").observe(0.002)
        metrics.preprocess.labels("m").observe(0.001)
        stats.preprocessed(0.003)
        metrics.queue_depth.labels("m", "1").set(0)
        metrics.queue_wait.labels("m", "1").observe(0.001)
        metrics.inference.labels("m", "1").observe(0.004)
        metrics.batch_size.labels("m", "1").observe(1)
        stats.batch_done([1], [0.001], 0.0, 0.004, 0.0)
        metrics.images.labels("m", "ok").inc(1)
        stats.request_done(True, 0.01, 1)
    return (time.process_time() - started) / calls


def observed(observers: Observers, calls: int) -> float:
    """The same events through the observers."""
    started = time.process_time()
    for _ in range(calls):
        observers.queue_depth(1)
        observers.image_preprocessed(IMAGE, 0.0001, 0.002, 0.001, 0.0)
        observers.queue_depth(0)
        run = BatchRun(rows=(1,), waited_s=(0.001,), traces=(None,), started_ns=0)
        observers.batch_started(run)
        with observers.batch_scope(run):
            pass
        observers.batch_done(BatchRun(rows=(1,), waited_s=(0.001,), traces=(None,), started_ns=0, elapsed_s=0.004,
                                      infer_s=0.004))
        observers.request_done(True, 0.01, 1, "http")
    return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--json")
    args = parser.parse_args()
    metrics = Metrics()
    stats = ModelStatistics("m", "1")
    observers = Observers([PrometheusSink(metrics, "m", "1"), StatisticsSink(stats)])
    old, new = [], []
    for _ in range(args.rounds):
        old.append(direct(metrics, stats, args.calls) * 1e6)
        new.append(observed(observers, args.calls) * 1e6)
    result = {"environment": environment(), "calls": args.calls, "rounds": args.rounds,
              "direct_us_per_request": old, "observers_us_per_request": new,
              "direct_median_us": statistics.median(old), "observers_median_us": statistics.median(new)}
    print(f"direct calls: {result['direct_median_us']:.1f} us per request; through the observers: "
          f"{result['observers_median_us']:.1f} us (median of {args.rounds} interleaved rounds)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
