"""``resserve tune``'s run: build, gate, prune, measure, and keep every step in one JSON file.

The steps, each saved to ``tune.json`` as soon as it is done (a run that is stopped, by Ctrl-C or
its budget, resumes from there: what was measured is never measured again):

1. each (engine, precision) this machine runs is built once (:func:`resserve.perf.tune.build_pairs`);
2. the accuracy gate (:mod:`resserve.perf.tune_gate`) refuses what changes the answers too much;
3. the cheap stage (:mod:`resserve.perf.tune_prune`) predicts each remaining candidate and keeps
   the most promising, as many as the budget lets successive halving measure;
4. successive halving through real servers (:func:`resserve.perf.tune.score_candidate`).

The budget (``budget_minutes``) counts every run on the same ``tune.json`` together.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from resserve.errors import ConfigError
from resserve.files import atomic_write_text
from resserve.perf.bench_engine import cpu_model
from resserve.perf.images import Payload, generate, load_folder
from resserve.perf.measure import MeasurementSettings
from resserve.perf.tune import BuiltPair, build_pairs, score_candidate, work_folder
from resserve.perf.tune_gate import GateResult, calibration_images, gate, gate_key
from resserve.perf.tune_prune import (
    EngineCurve,
    Prediction,
    engine_curves,
    predictions,
    preprocess_costs,
    shortlist,
)
from resserve.perf.tune_space import (
    Candidate,
    Machine,
    OutOfTime,
    Rung,
    Score,
    SpaceLimits,
    first_rung_size,
    search_space,
    successive_halving,
    winner,
)

STATE_FILE = "tune.json"
PROBES = 5  # bisection steps of one measurement
START_GUESS_S = 6.0  # a server's start and stop, until one has been timed


class TuneSettings(BaseModel):
    """What ``resserve tune`` was asked for."""

    model: str
    p99_ms: float = Field(gt=0)
    min_top1_agreement: float = Field(0.99, ge=0, le=1)
    images: Path | None = None
    budget_minutes: float = Field(20.0, gt=0)
    workers: int | None = Field(None, ge=1)  # None: auto, 1 to the cores
    engines: tuple[str, ...] | None = None  # None: every engine this machine runs
    precisions: tuple[str, ...] | None = None  # None: every precision those engines run here
    grid: bool = False  # measure every candidate the gate passes, once, for first_seconds (a baseline)
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
    fast_preprocess: bool = True  # whether fast preprocessing is in the space (through the gate)
    first_seconds: float = Field(10.0, gt=0)
    eta: int = Field(3, ge=2)

    def identity(self) -> dict[str, object]:
        """What a resumed run must share with the run it resumes (the budget may grow)."""
        return self.model_dump(mode="json", exclude={"budget_minutes"})


class Measured(BaseModel):
    """One server run of a candidate."""

    candidate: Candidate
    seconds: float
    score: Score
    overhead_s: float  # the run's time beyond its measurement: the server's start and stop


class TuneState(BaseModel):
    """Everything the run found so far: the resumable ``tune.json``."""

    settings: TuneSettings
    cpu: str
    machine: Machine
    pairs: list[BuiltPair] = []
    gate: list[GateResult] = []
    gate_images: str = ""  # where the gate's images came from, "" when there were none
    curves: list[EngineCurve] = []
    preprocess_ms: dict[str, float] = {}
    space: int = 0
    refused: dict[str, int] = {}  # gate key -> candidates the gate refused
    predicted: dict[str, Prediction] = {}
    shortlist: list[Candidate] = []
    measured: list[Measured] = []
    rungs: list[Rung] = []
    winner: str | None = None
    finished: bool = False
    stopped_by: str = ""  # "budget" or "interrupt" where the run did not finish its search
    elapsed_s: float = 0.0

    def gate_of(self, candidate: Candidate) -> GateResult | None:
        key = gate_key(candidate.engine, candidate.precision, candidate.fast_preprocess, candidate.uint8_input)
        return next((g for g in self.gate if g.key == key), None)

    def candidate(self, name: str) -> Candidate | None:
        return next((m.candidate for m in self.measured if m.candidate.name == name), None)

    def overhead_s(self) -> float:
        """The mean server start and stop seen so far."""
        if not self.measured:
            return START_GUESS_S
        return sum(m.overhead_s for m in self.measured) / len(self.measured)


def load_state(path: Path, settings: TuneSettings) -> TuneState | None:
    """The state a previous run left in ``path``, if it was for the same question."""
    if not path.exists():
        return None
    try:
        state = TuneState.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"{path}: not a resserve tune state ({exc}); choose another --out") from exc
    if state.settings.identity() != settings.identity():
        raise ConfigError(f"{path} holds a run with other settings ({state.settings.identity()}); "
                          "choose another --out, or repeat those settings to resume it")
    state.settings = settings
    return state


class Tuner:
    """One ``resserve tune`` run over ``repository``'s ``settings.model``, saving into ``out``."""

    def __init__(self, repository: Path, settings: TuneSettings, out: Path, say: Callable[[str], None] = print,
                 work: Path | None = None) -> None:
        self.repository, self.settings, self.out, self.say = repository, settings, out, say
        self.work = work_folder(work) / settings.model
        self.state_path = out / STATE_FILE
        self.started = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        previous = load_state(self.state_path, settings)
        if previous is not None:
            self.say(f"resuming {self.state_path}: {len(previous.measured)} server runs kept, "
                     f"{previous.elapsed_s / 60:.1f} of {settings.budget_minutes:g} minutes spent")
            previous.finished, previous.stopped_by = False, ""
        self.state = previous or TuneState(settings=settings, cpu=cpu_model(), machine=self._machine())
        self.spent_before = self.state.elapsed_s

    def _machine(self) -> Machine:
        machine = Machine.this()
        if self.settings.engines is not None:
            unknown = set(self.settings.engines) - set(machine.engines)
            if unknown:
                raise ConfigError(f"--engines: {', '.join(sorted(unknown))} cannot run here "
                                  f"(this machine runs {', '.join(machine.engines)})")
            machine = machine.model_copy(update={"engines": {e: p for e, p in machine.engines.items()
                                                             if e in self.settings.engines}})
        if self.settings.precisions is not None:
            engines = {e: tuple(p for p in precisions if p in self.settings.precisions)
                       for e, precisions in machine.engines.items()}
            machine = machine.model_copy(update={"engines": {e: p for e, p in engines.items() if p}})
            if not machine.engines:
                raise ConfigError(f"--precisions: none of {', '.join(self.settings.precisions)} runs on the engines "
                                  "chosen here")
        return machine

    def remaining_s(self) -> float:
        return self.settings.budget_minutes * 60 - self.spent_before - (time.monotonic() - self.started)

    def save(self) -> None:
        self.state.elapsed_s = self.spent_before + time.monotonic() - self.started
        atomic_write_text(self.state_path, self.state.model_dump_json(indent=1))

    def run(self) -> TuneState:
        """Every step not yet done; the state, saved."""
        settings, state = self.settings, self.state
        gate_images = self._gate_images()
        if not state.pairs:
            pairs = [(e, p) for e, precisions in state.machine.engines.items() for p in precisions]
            if ("onnxruntime", "fp32") not in pairs:
                pairs.insert(0, ("onnxruntime", "fp32"))  # the reference
            self.say(f"building {len(pairs)} engine x precision pairs of {settings.model} in {self.work}")
            # With real images the gate measures every pair itself; without, the build's report is the gate.
            state.pairs = build_pairs(self.repository, settings.model, pairs, self.work,
                                      0.0 if gate_images else settings.min_top1_agreement)
            self.save()
        if not state.gate:
            images = [p.body for p in load_folder(gate_images[1], limit=300)] if gate_images else None
            state.gate_images = f"{gate_images[0]} ({len(images)} images)" if images else ""
            self.say(f"accuracy gate: top-1 agreement with fp32 on the exact path >= {settings.min_top1_agreement:.2%}"
                     f" ({state.gate_images or 'the builds accuracy reports; no real images'})")
            state.gate = gate(state.pairs, settings.model, settings.min_top1_agreement,
                              (False, True) if settings.fast_preprocess else (False,), images,
                              gate_images[0] if gate_images else "")
            for result in state.gate:
                agreement = "" if result.top1_agreement is None else f" {result.top1_agreement:.2%}"
                self.say(f"  {result.key}: {'pass' if result.passed else 'refused'}{agreement} {result.why}".rstrip())
            self.save()
        candidates = self._candidates()
        if not state.shortlist:
            self._cheap_stage(candidates)
        self._halving()
        return state

    def _gate_images(self) -> tuple[str, Path] | None:
        if self.settings.images is not None:
            return "--images", self.settings.images
        folder = calibration_images(self.repository, self.settings.model)
        return ("calibration.images", folder) if folder is not None else None

    def _candidates(self) -> list[Candidate]:
        """The space, less what the gate refused (counted by gate key in the state)."""
        settings, state = self.settings, self.state
        limits = SpaceLimits(max_batch_sizes=settings.batch_sizes, max_workers=settings.workers,
                             fast_preprocess=(False, True) if settings.fast_preprocess else (False,))
        space = [c for c in search_space(state.machine, limits)
                 if settings.workers is None or c.workers == settings.workers]
        state.space, state.refused = len(space), {}
        passing = []
        for candidate in space:
            verdict = state.gate_of(candidate)
            if verdict is not None and verdict.passed:
                passing.append(candidate)
            else:
                key = gate_key(candidate.engine, candidate.precision, candidate.fast_preprocess,
                               candidate.uint8_input)
                state.refused[key] = state.refused.get(key, 0) + 1
        return passing

    def _cheap_stage(self, candidates: list[Candidate]) -> None:
        settings, state = self.settings, self.state
        if not candidates:
            raise ConfigError("no candidate passed the accuracy gate (see the gate's lines above)")
        pairs = [p for p in state.pairs if any((c.engine, c.precision) == (p.engine, p.precision) for c in candidates)]
        self.say(f"cheap stage: bare-engine curves of {len(pairs)} pair(s) at batch sizes "
                 f"{', '.join(map(str, settings.batch_sizes))}, preprocessing cost per mode")
        state.curves = engine_curves(pairs, settings.model, settings.batch_sizes, state.machine.cores)
        modes = sorted({(c.fast_preprocess, c.uint8_input) for c in candidates})
        images = [p.body for p in self.payloads]
        state.preprocess_ms = preprocess_costs(pairs[0].repository, settings.model, images, modes)
        state.predicted = predictions(candidates, state.curves, state.preprocess_ms, state.machine.cores,
                                      settings.p99_ms)
        feasible = sum(1 for c in candidates if state.predicted[c.name].requests_per_s > 0)
        if settings.grid:  # the baseline the search is judged against: everything, no prediction
            state.shortlist = list(candidates)
        else:
            count = first_rung_size(max(1, feasible), settings.first_seconds, settings.eta, state.overhead_s(),
                                    self.remaining_s())
            state.shortlist = shortlist(candidates, state.predicted, count)
        self.say(f"{state.space} candidates: {sum(state.refused.values())} refused by the gate, "
                 f"{len(candidates) - feasible} whose batch cannot meet {settings.p99_ms:g} ms, "
                 f"{len(state.shortlist)} to measure through the server (the budget's share)")
        for key, ms in sorted(state.preprocess_ms.items()):
            self.say(f"  preprocessing (fast,u8)={key}: {ms:.2f} ms per image on one core")
        self.save()

    @functools.cached_property
    def payloads(self) -> list[Payload]:
        """What the load generator sends: ``--images``, else generated photos of common sizes (read
        once: the cheap stage and every server run use the same)."""
        return load_folder(self.settings.images, limit=300) if self.settings.images else generate()

    def _halving(self) -> None:
        settings, state = self.settings, self.state
        payloads = self.payloads
        pairs = {(p.engine, p.precision): p for p in state.pairs}
        done = {(m.candidate.name, m.seconds): m for m in state.measured}
        ran_out: list[bool] = []

        def measure(candidate: Candidate, seconds: float) -> Score:
            if (candidate.name, seconds) in done:
                return done[(candidate.name, seconds)].score
            if self.remaining_s() < seconds + state.overhead_s():
                ran_out.append(True)
                raise OutOfTime
            high = self._high_rps(candidate)
            start = time.monotonic()
            score = score_candidate(candidate, pairs[(candidate.engine, candidate.precision)], settings.model,
                                    settings.p99_ms, payloads, high, measurement_settings(seconds),
                                    iterations=PROBES)
            measured = Measured(candidate=candidate, seconds=seconds, score=score,
                                overhead_s=max(0.0, time.monotonic() - start - seconds))
            state.measured.append(measured)
            done[(candidate.name, seconds)] = measured
            self.save()
            result = f"{score.goodput_rps:.1f} req/s, p99 {score.p99_ms:.0f} ms" if score.goodput_rps > 0 and \
                score.p99_ms is not None else f"no rate passed ({score.why})"
            self.say(f"[{seconds:g} s] {candidate.name}: {result}; {self.remaining_s() / 60:.1f} min left")
            return score

        if settings.grid:
            scores: dict[str, Score] = {}
            try:
                for candidate in state.shortlist:
                    scores[candidate.name] = measure(candidate, settings.first_seconds)
            except OutOfTime:
                pass
            state.rungs = [Rung(seconds=settings.first_seconds, scores=scores)] if scores else []
        else:
            # A resumed run replays the measurements it kept: give their cost back to the budget, so
            # the replay makes the same cuts the first run made.
            replayed = sum(m.seconds + state.overhead_s() for m in state.measured)
            state.rungs = successive_halving(state.shortlist, measure, settings.first_seconds,
                                             max(0.0, self.remaining_s()) + replayed, settings.eta,
                                             state.overhead_s())
        best = winner(state.rungs)
        state.winner = best[0] if best and best[1].goodput_rps > 0 else None
        state.finished = not ran_out
        state.stopped_by = "budget" if ran_out else ""
        self.save()

    def _high_rps(self, candidate: Candidate) -> float:
        """The top of the bisection: above what is expected, and above what was measured."""
        predicted = self.state.predicted[candidate.name].requests_per_s
        measured = max((m.score.goodput_rps for m in self.state.measured if m.candidate.name == candidate.name),
                       default=0.0)
        return max(10.0, 1.5 * predicted, 1.5 * measured)


def measurement_settings(seconds: float) -> MeasurementSettings:
    """One probe's share of a ``seconds`` measurement: a short warm-up, then one window."""
    probe = seconds / PROBES
    return MeasurementSettings(warmup_s=min(1.0, 0.3 * probe), window_s=max(0.2, probe - min(1.0, 0.3 * probe)),
                               stable_windows=1, max_windows=1)

