"""Fixed-delay vs SLO-aware batching on a simulated engine: the batchers' logic without machine noise.

The engine sleeps ``a + c * b`` seconds per batch of ``b`` (defaults: a single-thread ResNet-50
int8 OpenVINO instance here), two instances share one queue, requests arrive as a Poisson process.
Only the batching differs between the two runs of each rate.

    .venv/bin/python loadtests/simulate_batching.py --rates 25,100,200,280
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import numpy as np

from resserve.serving.adaptive import SloBatchPolicy
from resserve.serving.batching import BatchQueue


class SimulatedEngine:
    def __init__(self, a_s: float, c_s: float) -> None:
        self.a_s, self.c_s = a_s, c_s

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.a_s + self.c_s * batch.shape[0])
        return batch


async def run(rate: float, adaptive: bool, args: argparse.Namespace) -> tuple[float, float]:
    engines = [SimulatedEngine(args.a_ms / 1000, args.c_ms / 1000) for _ in range(args.instances)]
    policy = (SloBatchPolicy(target_s=args.target_ms / 1000, max_batch_size=32, max_wait_s=args.target_ms / 2000,
                             instances=args.instances) if adaptive else None)
    queue = BatchQueue(engines, max_batch_size=32 if adaptive else 16, max_queue_delay_ms=5, max_queue_size=4096,
                       preferred_batch_sizes=[] if adaptive else [8, 16], policy=policy)
    await queue.start()
    latencies: list[float] = []
    rng = random.Random(1)

    async def one() -> None:
        start = time.monotonic()
        await queue.submit(np.zeros((1, 1), np.float32), start + 30)
        latencies.append(time.monotonic() - start)

    tasks, end = [], time.monotonic() + args.seconds
    while time.monotonic() < end:
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    await queue.close()
    kept = np.array(latencies[len(latencies) // 5:]) * 1000  # the first fifth is warm-up (learning)
    return float(np.percentile(kept, 50)), float(np.percentile(kept, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,100,200,280")
    parser.add_argument("--a-ms", type=float, default=2.5)
    parser.add_argument("--c-ms", type=float, default=6.5)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--target-ms", type=float, default=250)
    parser.add_argument("--seconds", type=float, default=6)
    args = parser.parse_args()
    print("| requests/s | fixed p50 / p99 ms | adaptive p50 / p99 ms |\n|---|---|---|")
    for rate in (float(r) for r in args.rates.split(",")):
        fixed = asyncio.run(run(rate, False, args))
        adaptive = asyncio.run(run(rate, True, args))
        print(f"| {rate:g} | {fixed[0]:.1f} / {fixed[1]:.1f} | {adaptive[0]:.1f} / {adaptive[1]:.1f} |")


if __name__ == "__main__":
    main()
