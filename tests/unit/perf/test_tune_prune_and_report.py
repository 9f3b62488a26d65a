"""resserve tune's pure parts: the budget's plan, the cheap stage's prediction and shortlist, a
search cut by the clock, the ranking's reasons, the Pareto front, and a resume that must match."""

from __future__ import annotations

from pathlib import Path

import pytest

from resserve.errors import ConfigError
from resserve.perf.tune_prune import EngineCurve, Prediction, predict, shortlist
from resserve.perf.tune_report import markdown, pareto_front, ranking
from resserve.perf.tune_run import Measured, TuneSettings, TuneState, load_state
from resserve.perf.tune_space import (
    Candidate,
    Machine,
    OutOfTime,
    Score,
    first_rung_size,
    plan_cost,
    successive_halving,
)

MACHINE = Machine(cores=2, engines={"onnxruntime": ("fp32", "int8")})
CURVE = EngineCurve(engine="onnxruntime", precision="fp32", threads=2, images_per_s={1: 50.0, 8: 100.0, 32: 110.0},
                    p99_ms={1: 25.0, 8: 90.0, 32: 400.0})


def candidate(**fields: object) -> Candidate:
    return Candidate.model_validate({"engine": "onnxruntime", "precision": "fp32", "max_batch_size": 8, **fields})


def test_the_plan_fits_the_budget_and_the_first_rung_is_as_wide_as_it_allows() -> None:
    # 9 candidates for 10 s, 3 for 30 s, 1 for 90 s, each with a 5 s start.
    assert plan_cost(9, 10, 3, 5) == 9 * 15 + 3 * 35 + 95
    count = first_rung_size(100, 10, 3, 5, budget_s=600)
    assert plan_cost(count, 10, 3, 5) <= 600 < plan_cost(count + 1, 10, 3, 5)
    assert first_rung_size(100, 10, 3, 5, budget_s=1) == 1


def test_a_search_cut_by_the_clock_keeps_the_rung_it_was_in() -> None:
    calls: list[str] = []

    def measure(c: Candidate, seconds: float) -> Score:
        if len(calls) == 4:
            raise OutOfTime
        calls.append(c.name)
        return Score(goodput_rps=float(c.max_batch_size))

    candidates = [Candidate(engine="onnxruntime", precision="fp32", max_batch_size=b) for b in (1, 2, 4, 8, 16, 32)]
    rungs = successive_halving(candidates, measure, first_s=1, budget_s=1000)
    assert len(rungs) == 1 and len(rungs[0].scores) == 4  # the partial rung, as far as it got


def test_the_prediction_refuses_a_batch_over_the_budget_and_scales_with_threads() -> None:
    assert predict(candidate(max_batch_size=32), CURVE, 2.0, 2, p99_ms=250).requests_per_s == 0
    whole = predict(candidate(instances=1, intra_op_threads=2), CURVE, 2.0, 2, p99_ms=250)
    # One image costs 2 threads / 100 img/s = 20 ms of CPU, plus 2 ms preprocessing and 1 ms server: 2 cores / 23 ms.
    assert whole.requests_per_s == pytest.approx(2000 / 23)
    one_thread = predict(candidate(instances=1, intra_op_threads=1), CURVE, 2.0, 2, p99_ms=150)
    assert one_thread.requests_per_s == 0 and "over the p99 budget" in one_thread.why  # 180 ms batches
    # Two instances of one thread each: a batch still runs on one thread (180 ms), whatever the total.
    assert predict(candidate(instances=2, intra_op_threads=1), CURVE, 2.0, 2, p99_ms=170).requests_per_s == 0
    assert predict(candidate(instances=1, intra_op_threads=2), CURVE, 2.0, 2, p99_ms=170).requests_per_s > 0
    # The adaptive batcher keeps its batches under its target: a large cap is no risk there.
    assert predict(candidate(instances=2, intra_op_threads=1, batching="adaptive"), CURVE, 2.0, 2,
                   p99_ms=170).requests_per_s > 0


def test_the_shortlist_keeps_the_promising_and_varies_what_the_prediction_cannot_see() -> None:
    space = [candidate(max_queue_delay_ms=d, instances=i, intra_op_threads=2 // i) for d in (0.0, 2.0, 5.0)
             for i in (1, 2)] + [candidate(max_batch_size=1, max_queue_delay_ms=0.0)]
    predicted = predictions_for(space)
    chosen = shortlist(space, predicted, count=3)
    assert len(chosen) == 3 and all(c.max_batch_size == 8 for c in chosen)  # batch 1 predicted slower
    assert len({(c.max_queue_delay_ms, c.instances) for c in chosen}) == 3
    assert shortlist(space, predicted, count=3) == chosen  # seeded: the same every run


def predictions_for(space: list[Candidate]) -> dict:
    from resserve.perf.tune_prune import Prediction

    return {c.name: Prediction(requests_per_s=80.0 if c.max_batch_size == 8 else 30.0) for c in space}


def test_the_pareto_front_holds_what_nothing_beats_on_every_axis() -> None:
    points = [(100.0, 50.0, 1.0), (200.0, 80.0, 0.99), (150.0, 40.0, 1.0), (250.0, 80.0, 0.99)]
    assert pareto_front(points) == [0, 1]


def state_with(measured: list[tuple[Candidate, float, float]], winner: str | None) -> TuneState:
    settings = TuneSettings(model="m", p99_ms=250)
    return TuneState(settings=settings, cpu="test", machine=MACHINE, winner=winner, finished=True,
                     measured=[Measured(candidate=c, seconds=s, score=Score(goodput_rps=g, p99_ms=100 if g else None,
                                                                            why="" if g else "p99 300 ms > 250 ms"),
                                        overhead_s=1.0) for c, s, g in measured])


def test_the_ranking_puts_the_winner_first_and_says_why_each_other_lost() -> None:
    a, b, c, d = (candidate(max_batch_size=n) for n in (1, 4, 8, 16))
    state = state_with([(a, 10, 50.0), (b, 10, 90.0), (c, 10, 0.0), (b, 30, 80.0), (d, 10, 85.0), (d, 30, 70.0)],
                       winner=b.name)
    rows = ranking(state)
    assert [r.candidate for r in rows] == [b.name, d.name, a.name, c.name]
    assert rows[0].why_lost == "winner" and rows[0].goodput_rps == 80.0  # its longest measurement
    assert rows[1].why_lost == "goodput 88% of the winner's"
    assert rows[2].why_lost == "not in the best 1/3 after 10 s"
    assert rows[3].why_lost.startswith("no rate met the budget: p99 300 ms")
    assert f"**Winner**: `{b.name}`" in markdown(state)


def test_a_resume_must_ask_the_same_question(tmp_path: Path) -> None:
    state = state_with([], None)
    (tmp_path / "tune.json").write_text(state.model_dump_json())
    longer = TuneSettings(model="m", p99_ms=250, budget_minutes=60)
    assert load_state(tmp_path / "tune.json", longer).settings.budget_minutes == 60  # the budget may grow
    with pytest.raises(ConfigError, match="other settings"):
        load_state(tmp_path / "tune.json", TuneSettings(model="m", p99_ms=100))
    (tmp_path / "tune.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a resserve tune state"):
        load_state(tmp_path / "tune.json", longer)


def test_every_promising_engine_and_precision_gets_a_server_run() -> None:
    int8 = [candidate(precision="int8", max_queue_delay_ms=d, instances=i, intra_op_threads=2 // i)
            for d in (0.0, 2.0, 5.0) for i in (1, 2)]
    fp32 = [candidate(max_queue_delay_ms=d) for d in (0.0, 2.0)]
    predicted = {c.name: Prediction(requests_per_s=100.0 if c.precision == "int8" else 60.0) for c in int8 + fp32}
    chosen = shortlist(int8 + fp32, predicted, count=3)
    assert [c.precision for c in chosen] == ["int8", "int8", "fp32"]  # best first; fp32 still measured once
    assert [c.precision for c in shortlist(int8 + fp32, predicted, count=1)] == ["int8"]
    slow = {**predicted, **{c.name: Prediction(requests_per_s=40.0) for c in fp32}}
    assert {c.precision for c in shortlist(int8 + fp32, slow, count=3)} == {"int8"}  # under half the best: out
