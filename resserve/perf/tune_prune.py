"""``resserve tune``'s cheap stage: bare-engine curves and preprocessing cost, to prune the space.

A server run costs a start and several seconds of load; an engine curve costs a fraction of a
second per batch size, and preprocessing a second per mode. From those the tuner predicts each
candidate's capacity (cores over the CPU one image costs: engine at its batch size, its
preprocessing, and the server's own per-request work) and whether its batch can meet the p99
budget at all, and sends only the most promising to the server. The prediction only ranks: every
figure the tuner reports is measured end to end.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from resserve.engines.factory import open_engine
from resserve.perf.bench_engine import bench_engine
from resserve.perf.tune import BuiltPair
from resserve.perf.tune_gate import Mode
from resserve.perf.tune_space import Candidate
from resserve.preprocess import DecodeOptions, preprocess
from resserve.repository import ModelRepository

# The server's own CPU per request outside the engine and decode (HTTP, parsing, batching,
# response), held under one process's GIL: loadtests/scaling_costs.py measured about 1 ms.
SERVER_MS_PER_REQUEST = 1.0
# A full batch may take at most this share of the p99 budget. Not less: the batcher fills the
# largest batch only near overload, so a cap whose full batch takes most of the budget can still
# have the best goodput (ResNet-50 int8 with batches of 32 on one thread each came second).
BATCH_SHARE_OF_BUDGET = 1.0


class EngineCurve(BaseModel):
    """One (engine, precision) on every core: images/s and p99 latency (ms) per batch size."""

    engine: str
    precision: str
    threads: int  # the intra-op threads it ran with
    images_per_s: dict[int, float]
    p99_ms: dict[int, float]


class Prediction(BaseModel):
    """What the cheap stage expects of a candidate, and why it was dropped where it was."""

    requests_per_s: float
    why: str = ""


def engine_curves(pairs: Sequence[BuiltPair], model: str, batch_sizes: Sequence[int], cores: int,
                  round_s: float = 0.5) -> list[EngineCurve]:
    """Each built pair's bare engine, one round per batch size (one engine loaded at a time)."""
    curves = []
    for pair in pairs:
        version = ModelRepository(pair.repository).version(model)
        engine = open_engine(version.variant, version.config, version.folder)
        try:
            results = bench_engine(engine, list(batch_sizes), rounds=1, round_s=round_s, warmup_calls=2)
        finally:
            engine.close()
        curves.append(EngineCurve(engine=pair.engine, precision=pair.precision,
                                  threads=version.config.intra_op_threads or cores,
                                  images_per_s={r.batch_size: r.images_per_s for r in results},
                                  p99_ms={r.batch_size: r.latency_ms["p99_ms"] for r in results}))
    return curves


def preprocess_costs(repository: Path, model: str, images: Sequence[bytes], modes: Sequence[Mode],
                     seconds: float = 0.5, rounds: int = 2) -> dict[str, float]:
    """Milliseconds of one core per image, per (fast, uint8) mode, rounds interleaved; keyed
    ``"fast,u8"`` as booleans ``0``/``1`` (JSON keys are strings)."""
    contract = ModelRepository(repository).version(model).contract
    times: dict[Mode, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            options = DecodeOptions(fast_jpeg_draft=mode[0], fast_transform=mode[0], uint8_pixels=mode[1])
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or done == 0:
                preprocess(images[done % len(images)], contract, options)
                done += 1
            times[mode].append((time.perf_counter() - start) * 1000 / done)
    return {mode_key(mode): min(values) for mode, values in times.items()}


def mode_key(mode: Mode) -> str:
    return f"{int(mode[0])},{int(mode[1])}"


def predict(candidate: Candidate, curve: EngineCurve, preprocess_ms: float, cores: int, p99_ms: float) -> Prediction:
    """Requests/s the candidate should sustain, 0 with a reason where its batch cannot meet the budget."""
    batch = candidate.max_batch_size
    threads = candidate.intra_op_threads  # a batch runs on one instance: its threads, not all of them
    # An instance with fewer threads than the curve's takes proportionally longer.
    batch_ms = curve.p99_ms[batch] * curve.threads / min(threads, cores)
    # The adaptive batcher sizes each batch to its latency target: its cap is never a latency risk.
    if batch > 1 and candidate.batching == "fixed" and \
            batch_ms + candidate.max_queue_delay_ms > p99_ms * BATCH_SHARE_OF_BUDGET:
        return Prediction(requests_per_s=0.0, why=f"a batch of {batch} takes {batch_ms:.0f} ms on an "
                                                  f"instance of {threads} thread(s): over the p99 budget")
    engine_ms = curve.threads * 1000.0 / curve.images_per_s[batch]  # CPU per image
    capacity = cores * 1000.0 / (engine_ms + preprocess_ms + SERVER_MS_PER_REQUEST)
    server_bound = candidate.workers * 1000.0 / SERVER_MS_PER_REQUEST  # one GIL per worker
    return Prediction(requests_per_s=min(capacity, server_bound))


def predictions(candidates: Sequence[Candidate], curves: Sequence[EngineCurve], preprocess_ms: dict[str, float],
                cores: int, p99_ms: float) -> dict[str, Prediction]:
    by_pair = {(c.engine, c.precision): c for c in curves}
    return {c.name: predict(c, by_pair[(c.engine, c.precision)], preprocess_ms[mode_key((c.fast_preprocess,
                                                                                         c.uint8_input))],
                            cores, p99_ms) for c in candidates}


def shortlist(candidates: Sequence[Candidate], predicted: dict[str, Prediction], count: int,
              floor: float = 0.5, seed: int = 0) -> list[Candidate]:
    """The ``count`` most promising: predicted within ``floor`` of the best. Each engine x
    precision within it first sends its best candidate (the prediction may misjudge an engine
    as a whole; one run each says so), then the rest go highest first; equal predictions (they
    differ in what the cheap stage cannot see: delay, instances, workers) in a seeded shuffle,
    so the server runs cover those too."""
    feasible = [c for c in candidates if predicted[c.name].requests_per_s > 0]
    if not feasible or count < 1:
        return []
    best = max(predicted[c.name].requests_per_s for c in feasible)
    promising = [c for c in feasible if predicted[c.name].requests_per_s >= floor * best]
    rng = random.Random(seed)
    order = {c.name: rng.random() for c in promising}
    # Within 5% of each other is a tie: the prediction is not finer than that.
    promising.sort(key=lambda c: (-math.floor(math.log(predicted[c.name].requests_per_s, 1.05)), order[c.name]))
    chosen: list[Candidate] = []
    for candidate in promising:  # the best of each engine x precision, best pair first
        if all((c.engine, c.precision) != (candidate.engine, candidate.precision) for c in chosen):
            chosen.append(candidate)
    chosen = chosen[:count]
    chosen += [c for c in promising if c not in chosen][:count - len(chosen)]
    return sorted(chosen, key=promising.index)
