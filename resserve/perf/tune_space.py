"""``resserve tune``'s search space and search (issue 33, first piece: no CLI yet).

A :class:`Candidate` is one way to serve a model: engine and precision, batching, engine
instances x intra-op threads, worker processes, fast preprocessing, uint8 input. The space holds
only what this machine can run (:class:`Machine`: its cores, the engines installed and the
precisions each can run here) and never more threads than cores. Reduced precision and fast
preprocessing change the answers: such a candidate must pass the accuracy gate before it is
measured at all (:meth:`Candidate.gated`).

The search measures few candidates for long (successive halving, as Hyperband's inner loop):
every candidate gets a short measurement, the best ``1/eta`` of them a ``eta`` times longer one,
and so on until one is left or the budget is spent. The objective is goodput: the highest
Poisson rate whose p99 stays under the budget with no errors; ties go to the lower CPU per image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from resserve.engine_registry import ENGINES, engine_spec

Batching = Literal["fixed", "adaptive"]


class Machine(BaseModel):
    """What the tuner may use here: cores, and the precisions each installed engine runs."""

    cores: int = Field(ge=1)
    engines: dict[str, tuple[str, ...]]

    @classmethod
    def this(cls) -> Machine:
        """This machine: engines whose packages are installed, bf16 only where the CPU has it, fp16
        and TensorRT only with an NVIDIA GPU that TensorRT can use."""
        from resserve.engines.hardware import (
            _installed,
            available_cores,
            cpu_supports_bf16,
            nvidia_gpu_with_tensorrt,
        )

        gpu, _ = nvidia_gpu_with_tensorrt()
        bf16 = cpu_supports_bf16()
        engines: dict[str, tuple[str, ...]] = {}
        for spec in ENGINES:
            if spec.runs_source_weights:  # the torch engine serves the source model: not a tuning target
                continue
            if spec.name == "tensorrt" and not gpu:
                continue
            if spec.name == "openvino" and not _installed("openvino"):
                continue
            engines[spec.name] = tuple(p for p in spec.precisions
                                       if (p != "bf16" or bf16) and (p != "fp16" or gpu))
        return cls(cores=available_cores(), engines=engines)


class Candidate(BaseModel):
    """One configuration of a model and the server around it."""

    model_config = ConfigDict(frozen=True)

    engine: str
    precision: str
    max_batch_size: int = Field(ge=1)
    batching: Batching = "fixed"
    max_queue_delay_ms: float = Field(2.0, ge=0)
    instances: int = Field(1, ge=1)
    intra_op_threads: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
    fast_preprocess: bool = False
    uint8_input: bool = False

    @property
    def name(self) -> str:
        """Short and unique: ``openvino-int8 b16 fixed-2ms 2x1 w1 fast u8``."""
        batching = f"fixed-{self.max_queue_delay_ms:g}ms" if self.batching == "fixed" else "adaptive"
        extras = [e for e, on in (("fast", self.fast_preprocess), ("u8", self.uint8_input)) if on]
        return " ".join([f"{self.engine}-{self.precision}", f"b{self.max_batch_size}", batching,
                         f"{self.instances}x{self.intra_op_threads}", f"w{self.workers}", *extras])

    @property
    def gated(self) -> bool:
        """Whether its answers may differ from the fp32 exact path: it must pass the accuracy gate."""
        return self.precision != "fp32" or self.fast_preprocess

    @property
    def threads(self) -> int:
        """Engine threads it runs at once, over all workers."""
        return self.workers * self.instances * self.intra_op_threads

    def config_overlay(self, p99_ms: float) -> dict[str, object]:
        """The ``config.yaml`` keys this candidate sets (the model's own config gives the rest)."""
        batching: dict[str, object] = (
            {"max_queue_delay_ms": self.max_queue_delay_ms} if self.batching == "fixed"
            # The adaptive batcher aims at the budget itself, with room for preprocessing and HTTP.
            else {"latency_target_ms": round(p99_ms * 0.8, 1)})
        overlay: dict[str, object] = {
            "engine": self.engine, "precision": self.precision, "max_batch_size": self.max_batch_size,
            "dynamic_batching": batching, "instance_count": self.instances,
            "intra_op_threads": self.intra_op_threads, "fast_preprocess": self.fast_preprocess,
            "fast_jpeg_decode": self.fast_preprocess, "uint8_input": self.uint8_input,
        }
        if self.engine == "openvino":
            overlay["openvino"] = {"inference_threads": self.intra_op_threads}
        return overlay


class SpaceLimits(BaseModel):
    """The values the space is built from."""

    max_batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
    delays_ms: tuple[float, ...] = (0.0, 2.0, 5.0)
    adaptive: bool = True
    max_workers: int | None = None  # default: the cores
    fast_preprocess: tuple[bool, ...] = (False, True)


def search_space(machine: Machine, limits: SpaceLimits | None = None) -> list[Candidate]:
    """Every candidate this machine can run, no more engine threads than cores (each worker's
    instances x threads fill its share of them)."""
    limits = limits or SpaceLimits()
    max_workers = min(limits.max_workers or machine.cores, machine.cores)
    found: list[Candidate] = []
    for engine, precisions in machine.engines.items():
        pixels = (False, True) if engine_spec(engine).pixel_input else (False,)
        for precision, batch, workers, fast, uint8 in itertools.product(
                precisions, limits.max_batch_sizes, range(1, max_workers + 1), limits.fast_preprocess, pixels):
            share = machine.cores // workers  # each worker's cores
            for instances in _divisors(share):
                threads = share // instances
                batchings: list[tuple[Batching, float]] = [("fixed", d) for d in limits.delays_ms]
                if limits.adaptive and batch > 1:
                    batchings.append(("adaptive", 0.0))
                for batching, delay in batchings:
                    if batch == 1 and delay > 0:
                        continue  # nothing to wait for
                    found.append(Candidate(engine=engine, precision=precision, max_batch_size=batch,
                                           batching=batching, max_queue_delay_ms=delay, instances=instances,
                                           intra_op_threads=threads, workers=workers, fast_preprocess=fast,
                                           uint8_input=uint8))
    return found


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class Score(BaseModel):
    """One measurement of a candidate: goodput under the p99 budget, and the CPU it took."""

    goodput_rps: float = Field(ge=0)
    p99_ms: float | None = None
    cpu_ms_per_image: float | None = None
    why: str = ""  # why it lost, where it did (accuracy, p99, errors)
    probes: list[str] = []  # the rate search's steps: "260.0 req/s fail: p99 312 ms > 250 ms"

    def key(self) -> tuple[float, float]:
        """Higher goodput first; at equal goodput, less CPU."""
        return (-self.goodput_rps, self.cpu_ms_per_image if self.cpu_ms_per_image is not None else math.inf)


class Rung(BaseModel):
    """One round of successive halving: how long each candidate was measured, and its scores."""

    seconds: float
    scores: dict[str, Score]


class OutOfTime(Exception):
    """Raised by a measurement when the tuner's time is spent: the search ends with what it has."""


def successive_halving(candidates: Sequence[Candidate], measure: Callable[[Candidate, float], Score],
                       first_s: float, budget_s: float, eta: int = 3, overhead_s: float = 0.0) -> list[Rung]:
    """Measure every candidate for ``first_s``, keep the best ``1/eta``, measure those ``eta``
    times longer, until one is left or the next round would pass ``budget_s`` (each measurement
    costs its seconds plus ``overhead_s``, a server's start). The last rung's best is the winner.
    A measurement that raises :class:`OutOfTime` ends the search; a rung it cut keeps what it had."""
    if eta < 2:
        raise ValueError("eta must be at least 2")
    alive = list(candidates)
    seconds = first_s
    spent = 0.0
    rungs: list[Rung] = []
    while alive:
        if rungs and spent + (seconds + overhead_s) * len(alive) > budget_s:
            break
        scores: dict[str, Score] = {}
        try:
            for candidate in alive:
                scores[candidate.name] = measure(candidate, seconds)
        except OutOfTime:
            if scores:
                rungs.append(Rung(seconds=seconds, scores=scores))
            return rungs
        spent += (seconds + overhead_s) * len(alive)
        rungs.append(Rung(seconds=seconds, scores=scores))
        if len(alive) == 1:
            break
        ranked = sorted(alive, key=lambda c: scores[c.name].key())
        alive = ranked[:max(1, len(alive) // eta)]
        seconds *= eta
    return rungs


def plan_cost(count: int, first_s: float, eta: int, overhead_s: float) -> float:
    """Seconds successive halving takes over ``count`` candidates, down to one."""
    total, seconds = 0.0, first_s
    while True:
        total += (seconds + overhead_s) * count
        if count == 1:
            return total
        count, seconds = max(1, count // eta), seconds * eta


def first_rung_size(available: int, first_s: float, eta: int, overhead_s: float, budget_s: float) -> int:
    """The most candidates whose halving down to one fits ``budget_s`` (at least one)."""
    count = available
    while count > 1 and plan_cost(count, first_s, eta, overhead_s) > budget_s:
        count -= 1
    return count


def winner(rungs: Sequence[Rung]) -> tuple[str, Score] | None:
    """The best candidate of the last rung (name and score)."""
    if not rungs:
        return None
    return min(rungs[-1].scores.items(), key=lambda item: item[1].key())
