"""``resserve tune``: the cheapest configuration that meets an accuracy floor and a p99 budget."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from resserve.console import make_console
from resserve.errors import ResserveError

console = make_console()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _workers(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"--workers: auto or a positive integer, not {text!r}") from None
    if value < 1:
        raise typer.BadParameter("--workers must be at least 1")
    return value


def tune(
    model_repo: Annotated[Path, typer.Argument(help="the model repository folder")],
    model: Annotated[str, typer.Option(help="the model to tune")],
    p99_ms: Annotated[float, typer.Option(help="the latency budget: p99 end to end, milliseconds")],
    min_top1_agreement: Annotated[float, typer.Option(
        help="the accuracy floor: top-1 agreement with fp32 on the exact path")] = 0.99,
    images: Annotated[Path | None, typer.Option(
        help="real images for the accuracy gate and the load (default: calibration.images for the gate, "
             "generated photos for the load)")] = None,
    budget_minutes: Annotated[float, typer.Option(help="the whole run's time, resumed runs included")] = 20.0,
    workers: Annotated[str, typer.Option(help="worker processes: auto (1 to the cores) or a number")] = "auto",
    out: Annotated[Path, typer.Option(help="report folder: tune.json (resumable), README.md, ranking.json, "
                                           "pareto.png")] = Path("tune-report"),
    write: Annotated[str | None, typer.Option(help="write the winner as a new model folder of this name")] = None,
    engines: Annotated[list[str] | None, typer.Option(help="only these engines (default: every one this machine "
                                                           "runs)")] = None,
    precisions: Annotated[list[str] | None, typer.Option(help="only these precisions (default: every one the "
                                                              "engines run here)")] = None,
    batch_sizes: Annotated[str, typer.Option(help="max batch sizes to try, comma-separated")] = "1,4,8,16,32",
    fast_preprocess: Annotated[bool, typer.Option(help="try fast preprocessing (through the accuracy gate)")] = True,
    first_seconds: Annotated[float, typer.Option(help="each candidate's first measurement, seconds")] = 10.0,
    grid: Annotated[bool, typer.Option(help="measure every candidate the gate passes once, for --first-seconds, "
                                            "no pruning: the exhaustive baseline the search is judged against")] = False,
    work: Annotated[Path | None, typer.Option(help="where the pairs are built (default: a folder under $TMPDIR)")] = None,
) -> None:
    """Search engine x precision x batching x instances x threads x workers x preprocessing for
    the highest goodput under --p99-ms whose answers stay within --min-top1-agreement of fp32;
    Ctrl-C keeps what was measured, and the same command resumes."""
    from resserve.perf.bench_commands import parse_batch_sizes
    from resserve.perf.tune_report import write_report, write_winner
    from resserve.perf.tune_run import Tuner, TuneSettings

    settings = TuneSettings(model=model, p99_ms=p99_ms, min_top1_agreement=min_top1_agreement, images=images,
                            budget_minutes=budget_minutes, workers=_workers(workers),
                            engines=tuple(engines) if engines else None,
                            precisions=tuple(precisions) if precisions else None, grid=grid,
                            batch_sizes=tuple(parse_batch_sizes(batch_sizes)), fast_preprocess=fast_preprocess,
                            first_seconds=first_seconds)

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False)

    try:
        tuner = Tuner(model_repo, settings, out, say, work)
    except ResserveError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    previous = signal.signal(signal.SIGTERM, _interrupt)  # kill, or a CI job's timeout: as Ctrl-C
    try:
        state = tuner.run()
    except KeyboardInterrupt:
        tuner.state.stopped_by = "interrupt"
        tuner.save()
        report = write_report(tuner.state, out)
        say(f"interrupted: {len(tuner.state.measured)} server runs kept in {tuner.state_path}; report {report}; "
            "the same command resumes")
        raise typer.Exit(130) from None
    except ResserveError as exc:
        tuner.save()
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = write_report(state, out)
    say(f"wrote {report}")
    if state.winner is None:
        say("no candidate met the budget: see the report for why")
        raise typer.Exit(2)
    say(f"winner: {state.winner}")
    if write:
        try:
            folder = write_winner(state, model_repo, write)
        except ResserveError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from exc
        workers_needed = next(m.candidate.workers for m in state.measured if m.candidate.name == state.winner)
        say(f"wrote {folder}: build it with `resserve build {model_repo} --model {write}`, serve it with "
            f"`resserve serve --model-repo {model_repo} --workers {workers_needed}`")
