"""resserve tune's search space and successive halving, without a server: the space holds only
what a machine can run, never more threads than cores, and the search finds the grid's best
while measuring a fraction of what the grid would."""

from __future__ import annotations

import random

import pytest

from resserve.config import ModelConfig
from resserve.perf.tune_space import (
    Candidate,
    Machine,
    Score,
    SpaceLimits,
    search_space,
    successive_halving,
    winner,
)

AVX2 = Machine(cores=2, engines={"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "int8")})
FOUR = Machine(cores=4, engines={"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")})


def test_the_space_holds_what_the_machine_runs_and_no_more_threads_than_cores() -> None:
    space = search_space(AVX2)
    assert len({c.name for c in space}) == len(space)  # names are unique
    assert {c.precision for c in space} == {"fp32", "int8"}  # no bf16 without the CPU for it
    assert all(c.threads <= AVX2.cores for c in space)
    assert {(c.workers, c.instances, c.intra_op_threads) for c in space} == {(1, 1, 2), (1, 2, 1), (2, 1, 1)}
    assert all(c.max_queue_delay_ms == 0 for c in space if c.max_batch_size == 1)
    assert not any(c.batching == "adaptive" and c.max_batch_size == 1 for c in space)
    four = search_space(FOUR, SpaceLimits(max_workers=2))
    assert "bf16" in {c.precision for c in four} and max(c.workers for c in four) == 2
    assert all(c.threads <= FOUR.cores for c in four)


def test_reduced_precision_and_fast_preprocessing_must_pass_the_gate() -> None:
    exact = Candidate(engine="onnxruntime", precision="fp32", max_batch_size=8)
    assert not exact.gated and not exact.model_copy(update={"uint8_input": True}).gated  # same answers
    assert exact.model_copy(update={"precision": "int8"}).gated
    assert exact.model_copy(update={"fast_preprocess": True}).gated


def test_a_candidate_overlays_a_valid_model_config() -> None:
    base = {"name": "m", "source": {"onnx": "m.onnx"}}
    for candidate in search_space(AVX2)[::37]:
        config = ModelConfig.model_validate({**base, **candidate.config_overlay(p99_ms=250)})
        assert config.instance_count == candidate.instances and config.max_batch_size == candidate.max_batch_size
        if candidate.batching == "adaptive":
            assert config.dynamic_batching.latency_target_ms == 200.0


def synthetic_goodput(candidate: Candidate, noise: random.Random, seconds: float) -> Score:
    """A made-up but structured landscape: int8 and bigger batches help, more threads per instance
    help less than more instances, measurement noise shrinks with time."""
    base = 100.0 * (1.8 if candidate.precision == "int8" else 1.0) * (1 + 0.1 * min(candidate.max_batch_size, 16) / 4)
    base *= 1.0 + 0.15 * (candidate.instances - 1) + 0.05 * (candidate.intra_op_threads - 1)
    base *= 0.9 if candidate.batching == "adaptive" else 1.0 - 0.01 * candidate.max_queue_delay_ms
    base *= 1.05 if candidate.fast_preprocess else 1.0
    jitter = noise.gauss(0, 0.05 / seconds ** 0.5)
    return Score(goodput_rps=max(0.0, base * (1 + jitter)), cpu_ms_per_image=10.0 / candidate.intra_op_threads)


def test_successive_halving_finds_the_grid_best_in_a_fraction_of_its_time() -> None:
    space = search_space(AVX2)
    true = {c.name: synthetic_goodput(c, random.Random(0), 1e9).goodput_rps for c in space}
    best = max(true.values())
    noise = random.Random(1)
    measured: list[float] = []

    def measure(candidate: Candidate, seconds: float) -> Score:
        measured.append(seconds)
        return synthetic_goodput(candidate, noise, seconds)

    grid_s = 27.0 * len(space)  # the grid: every candidate as long as the search's last rung
    rungs = successive_halving(space, measure, first_s=1.0, budget_s=grid_s / 3)
    name, _ = winner(rungs)  # type: ignore[misc]
    assert true[name] >= 0.95 * best  # within 5% of the grid's best
    assert sum(measured) <= grid_s / 3
    assert [r.seconds for r in rungs][:3] == [1.0, 3.0, 9.0] and len(rungs[-1].scores) < len(space)


def test_ties_go_to_less_cpu_and_the_budget_stops_the_search() -> None:
    a = Candidate(engine="onnxruntime", precision="fp32", max_batch_size=8, intra_op_threads=2)
    b = Candidate(engine="onnxruntime", precision="fp32", max_batch_size=8, instances=2)
    scores = {a.name: Score(goodput_rps=50, cpu_ms_per_image=9.0), b.name: Score(goodput_rps=50, cpu_ms_per_image=7.0)}
    rungs = successive_halving([a, b], lambda c, s: scores[c.name], first_s=1, budget_s=100, eta=2)
    assert winner(rungs)[0] == b.name  # type: ignore[index]
    assert len(successive_halving([a, b], lambda c, s: scores[c.name], first_s=10, budget_s=25, eta=2)) == 1
    with pytest.raises(ValueError):
        successive_halving([a], lambda c, s: scores[c.name], first_s=1, budget_s=1, eta=1)
