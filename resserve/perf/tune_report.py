"""``resserve tune``'s output: the ranked table (Markdown, JSON), the Pareto plot, and the winner's
model folder (``--write``).

Every candidate the server measured is ranked by its longest measurement (longer measurements
are the later rounds of successive halving, so the finalists come first), then by goodput and CPU
per image; each row says why it lost. What never reached a server is counted with its reason:
refused by the accuracy gate, or dropped by the cheap stage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml
from pydantic import BaseModel

from resserve.errors import ConfigError
from resserve.files import atomic_write_text
from resserve.perf.tune import candidate_config, raw_config
from resserve.perf.tune_run import Measured, TuneState
from resserve.repository import ModelRepository


class Row(BaseModel):
    """One measured candidate in the ranking."""

    rank: int
    candidate: str
    goodput_rps: float
    p99_ms: float | None
    cpu_ms_per_image: float | None
    top1_agreement: float | None  # None: the exact fp32 path
    measured_s: float
    why_lost: str


def ranking(state: TuneState) -> list[Row]:
    """The measured candidates, the winner first."""
    longest: dict[str, Measured] = {}
    for m in state.measured:
        if m.candidate.name not in longest or m.seconds > longest[m.candidate.name].seconds:
            longest[m.candidate.name] = m
    ordered = sorted(longest.values(), key=lambda m: (m.candidate.name != state.winner, -m.seconds, m.score.key()))
    best = longest.get(state.winner) if state.winner else None
    rows = []
    for rank, m in enumerate(ordered, 1):
        gate = state.gate_of(m.candidate)
        rows.append(Row(rank=rank, candidate=m.candidate.name, goodput_rps=m.score.goodput_rps, p99_ms=m.score.p99_ms,
                        cpu_ms_per_image=m.score.cpu_ms_per_image,
                        top1_agreement=gate.top1_agreement if gate and gate.source != "reference" else None,
                        measured_s=m.seconds, why_lost=_why_lost(m, best, state)))
    return rows


def _why_lost(m: Measured, best: Measured | None, state: TuneState) -> str:
    if best is not None and m.candidate.name == best.candidate.name:
        return "winner" if state.finished else f"best so far (stopped by {state.stopped_by or 'the budget'})"
    if m.score.goodput_rps <= 0:
        return f"no rate met the budget: {m.score.why}" if m.score.why else "no rate met the budget"
    if best is None:
        return ""
    if m.seconds < best.seconds:
        return f"not in the best 1/{state.settings.eta} after {m.seconds:g} s"
    if m.score.goodput_rps < best.score.goodput_rps:
        return f"goodput {m.score.goodput_rps / best.score.goodput_rps:.0%} of the winner's"
    return "same goodput, more CPU per image"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(state: TuneState) -> str:
    """The report: winner, ranking, the gate's verdicts, the cheap stage, the plot."""
    s = state.settings
    rows = ranking(state)
    status = "finished" if state.finished else f"stopped by {state.stopped_by or 'interrupt'} (resume with the same command)"
    lines = [
        f"# resserve tune: {s.model}, p99 <= {s.p99_ms:g} ms, top-1 agreement >= {s.min_top1_agreement:.2%}",
        "",
        f"CPU: {state.cpu}, {state.machine.cores} cores; engines: "
        + ", ".join(f"{e} ({'/'.join(p)})" for e, p in state.machine.engines.items())
        + f". {state.elapsed_s / 60:.1f} of {s.budget_minutes:g} minutes; {status}.",
        "",
    ]
    # The winner's longest run: the figures its place in the ranking comes from.
    best = max((m for m in state.measured if m.candidate.name == state.winner), key=lambda m: m.seconds,
               default=None)
    if best is not None:
        lines += [f"**Winner**: `{best.candidate.name}`: {best.score.goodput_rps:,.1f} req/s with p99 "
                  f"{_num(best.score.p99_ms, 0)} ms, {_num(best.score.cpu_ms_per_image, 2)} ms of server CPU per "
                  "image. Its config keys:", "", "```yaml",
                  yaml.safe_dump(best.candidate.config_overlay(s.p99_ms), sort_keys=False).rstrip(), "```", "",
                  f"Worker processes are the server's, not the model's: serve it with `resserve serve --workers "
                  f"{best.candidate.workers}`.", ""]
    else:
        lines += ["**No winner**: no candidate met the budget.", ""]
    lines += ["## Ranking (measured end to end through the server)", "",
              "| # | candidate | goodput req/s | p99 ms | server CPU ms/image | top-1 agreement | measured s | "
              "why it lost |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agreement = "exact" if r.top1_agreement is None else f"{r.top1_agreement:.2%}"
        lines.append(f"| {r.rank} | `{r.candidate}` | {_num(r.goodput_rps)} | {_num(r.p99_ms, 0)} | "
                     f"{_num(r.cpu_ms_per_image, 2)} | {agreement} | {r.measured_s:g} | {r.why_lost} |")
    lines += ["", f"## Accuracy gate ({state.gate_images or 'the builds accuracy reports'})", "",
              "| way of serving | top-1 agreement | verdict | candidates refused |", "|---|---|---|---|"]
    for g in state.gate:
        agreement = "reference" if g.source == "reference" else _pct(g.top1_agreement)
        verdict = "pass" if g.passed else g.why
        lines.append(f"| `{g.key}` | {agreement} | {verdict} | {state.refused.get(g.key, 0)} |")
    dropped = sum(1 for p in state.predicted.values() if p.requests_per_s <= 0)
    lines += ["", "## Cheap stage", "",
              f"{state.space} candidates in the space; {sum(state.refused.values())} refused by the gate; "
              f"{dropped} whose batch cannot meet the budget; {len(state.shortlist)} sent to the server "
              f"({len(state.predicted) - dropped - len(state.shortlist)} more were predicted slower).", "",
              "| engine | precision | batch | img/s (bare engine) | batch p99 ms |", "|---|---|---|---|---|"]
    for c in state.curves:
        for batch, rate in sorted(c.images_per_s.items()):
            lines.append(f"| {c.engine} | {c.precision} | {batch} | {rate:,.1f} | {c.p99_ms[batch]:,.1f} |")
    lines += ["", "| preprocessing (fast, uint8) | ms per image, one core |", "|---|---|"]
    lines += [f"| {key} | {ms:.2f} |" for key, ms in sorted(state.preprocess_ms.items())]
    lines += ["", "![goodput against p99, coloured by top-1 agreement](pareto.png)", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def pareto_front(points: list[tuple[float, float, float]]) -> list[int]:
    """Indices of the (p99, goodput, agreement) points no other beats on all three (lower p99,
    higher goodput, higher agreement) and is better on one."""
    front = []
    for i, (p99, good, agree) in enumerate(points):
        dominated = any(q <= p99 and g >= good and a >= agree and (q, g, a) != (p99, good, agree)
                        for q, g, a in points)
        if not dominated:
            front.append(i)
    return front


def plot(state: TuneState, path: Path) -> bool:
    """goodput against p99 for every measured candidate (its longest run), coloured by top-1
    agreement, the Pareto front joined; False where nothing met the budget."""
    rows = [r for r in ranking(state) if r.goodput_rps > 0 and r.p99_ms is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r.p99_ms or 0.0, r.goodput_rps, 1.0 if r.top1_agreement is None else r.top1_agreement) for r in rows]
    front = pareto_front(points)
    # The front on the two axes drawn (lower p99, higher goodput) as a step line; the points that
    # only agreement keeps on the front are ringed.
    flat = sorted(pareto_front([(p99, good, 1.0) for p99, good, _ in points]), key=lambda i: points[i][0])
    figure, axes = plt.subplots(figsize=(8, 5))
    scatter = axes.scatter([p[0] for p in points], [p[1] for p in points], c=[p[2] for p in points],
                           cmap="viridis", vmin=min(min(p[2] for p in points), state.settings.min_top1_agreement),
                           vmax=1.0, edgecolors="black", linewidths=0.4, zorder=3)
    axes.step([points[i][0] for i in flat], [points[i][1] for i in flat], where="post", color="tab:red",
              linewidth=1, label="Pareto front (p99, goodput)")
    ringed = [i for i in front if i not in flat]
    if ringed:
        axes.scatter([points[i][0] for i in ringed], [points[i][1] for i in ringed], s=120, facecolors="none",
                     edgecolors="tab:red", label="on the front by agreement", zorder=2)
    winner = next((i for i, r in enumerate(rows) if r.candidate == state.winner), None)
    if winner is not None:
        axes.annotate(f"winner: {state.winner}", points[winner][:2], textcoords="offset points", xytext=(-30, -30),
                      fontsize=8, ha="right", arrowprops={"arrowstyle": "->", "linewidth": 0.8})
    axes.axvline(state.settings.p99_ms, color="grey", linestyle="--", linewidth=1, label="p99 budget")
    axes.set_xlabel("p99 at the goodput rate (ms)")
    axes.set_ylabel("goodput (requests/s under the budget, no errors)")
    axes.set_title(f"resserve tune: {state.settings.model} on {state.cpu}")
    figure.colorbar(scatter, ax=axes, label="top-1 agreement with fp32 (exact = 1)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_report(state: TuneState, out: Path) -> Path:
    """README.md, ranking.json and pareto.png in ``out`` (tune.json is already there)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = ranking(state)
    atomic_write_text(out / "ranking.json", "[\n" + ",\n".join(r.model_dump_json() for r in rows) + "\n]\n")
    plot(state, out / "pareto.png")
    readme = out / "README.md"
    atomic_write_text(readme, markdown(state))
    return readme


def write_winner(state: TuneState, repository: Path, name: str) -> Path:
    """The winner as a new model folder ``name`` of ``repository``: the model's files (hard links
    where the filesystem allows, else copies) and its config.yaml with the winner's keys. Its
    versions are built by ``resserve build`` (or ``serve``'s build of missing versions)."""
    if state.winner is None:
        raise ConfigError("no winner to write: no candidate met the budget")
    candidate = next(m.candidate for m in state.measured if m.candidate.name == state.winner)
    source = repository / state.settings.model
    target = repository / name
    if target.exists():
        raise ConfigError(f"{target} exists: --write needs a new model name")
    config = candidate_config(raw_config(repository, state.settings.model), candidate, state.settings.p99_ms)
    if candidate.precision != "fp32":  # its build checks the floor the tuner was given, not the default
        calibration = dict(config.get("calibration") or {})  # type: ignore[call-overload]
        calibration["min_top1_agreement"] = state.settings.min_top1_agreement
        config["calibration"] = calibration
    staging = repository / f".{name}.tune-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for entry in source.iterdir():
            if entry.name == "config.yaml" or entry.name.startswith(".") or entry.name.isdigit():
                continue
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, copy_function=_link_or_copy)
            else:
                _link_or_copy(str(entry), str(staging / entry.name))
        header = (f"# resserve tune: {candidate.name}, p99 <= {state.settings.p99_ms:g} ms on {state.cpu}.\n"
                  f"# Serve with --workers {candidate.workers} (a server setting, not a model's).\n")
        (staging / "config.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    ModelRepository(repository).config(name)  # what was written validates
    return target


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target
