"""``resserve loadtest``: one load point or sweep against a running server, variant sweeps, reports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from resserve.console import make_console
from resserve.errors import ResserveError

loadtest_app = typer.Typer(help="Load tests: closed/open loop, max-rate search, variant sweeps, reports.",
                           no_args_is_help=True)
console = make_console()


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise typer.BadParameter(f"{what}: values must be positive")
    return values


def _write_json(path: Path | None, data: object) -> None:
    """``--json``: results as JSON, folders made as needed."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    console.print(f"wrote {path}")


def _print_points(title: str, points: list) -> None:  # list[LoadPoint]
    table = Table(title=title)
    for column in ("load", "img/s", "p50", "p90", "p95", "p99", "p99.9 ms", "statuses", "stable",
                   "mean batch", "gen CPU us/req"):
        table.add_column(column, justify="right")
    for p in points:
        lat = p.latency_ms
        table.add_row(p.label, f"{p.throughput_img_s:.1f}",
                      *(f"{lat[k]:.1f}" if k in lat else "-" for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms",
                                                                      "p99.9_ms")),
                      ", ".join(f"{k}: {v}" for k, v in sorted(p.statuses.items())), "yes" if p.stable else "no",
                      f"{p.server.mean_batch_size:.1f}" if p.server else "-", f"{p.generator_cpu_us_per_request:.0f}")
    console.print(table)


@loadtest_app.command("run")
def run_cmd(
    url: Annotated[str, typer.Argument(help="server base URL, e.g. http://127.0.0.1:8000")],
    model: Annotated[str, typer.Option(help="model to load")] = "resnet50",
    mode: Annotated[Literal["closed", "open", "max-rate"], typer.Option(help="closed, open or max-rate")] = "closed",
    concurrency: Annotated[str, typer.Option(help="closed: comma-separated client counts")] = "1,2,4,8,16,32",
    rates: Annotated[str, typer.Option(help="open: comma-separated requests/s")] = "10,20,40",
    arrival: Annotated[Literal["poisson", "constant"], typer.Option(help="open/max-rate: arrivals")] = "poisson",
    p99_ms: Annotated[float, typer.Option(help="max-rate: the p99 bound")] = 250.0,
    high_rps: Annotated[float, typer.Option(help="max-rate: upper end of the search")] = 500.0,
    iterations: Annotated[int, typer.Option(help="max-rate: bisection steps")] = 5,
    images: Annotated[Path | None, typer.Option(help="folder of images to cycle (default: generated)")] = None,
    endpoint: Annotated[str, typer.Option(help="path template")] = "/v2/models/{model}/classify",
    warmup_s: Annotated[float, typer.Option()] = 2.0,
    window_s: Annotated[float, typer.Option()] = 2.0,
    max_windows: Annotated[int, typer.Option()] = 6,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the points as JSON")] = None,
    server_metrics: Annotated[bool, typer.Option(
        help="scrape the server's /metrics for the stage breakdown (off for servers other than resserve)")] = True,
    grpc_target: Annotated[str | None, typer.Option(
        "--grpc", help="send over gRPC (OIP v2 ModelInfer, the image as BYTES, top 5 classes) to HOST:PORT; "
                       "URL still serves /metrics")] = None,
) -> None:
    """Load a running server: a closed-loop sweep, an open-loop sweep, or the max-rate search."""
    from resserve.perf.generator import LoadGenerator
    from resserve.perf.images import generate, load_folder
    from resserve.perf.measure import MeasurementSettings, closed_point, open_point
    from resserve.perf.search import find_max_rate

    settings = MeasurementSettings(warmup_s=warmup_s, window_s=window_s, max_windows=max_windows)
    payloads = load_folder(images) if images else generate()
    base = url.rstrip("/")
    scrape = {"metrics_url": f"{base}/metrics", "model": model} if server_metrics else {}

    async def run() -> list:
        if grpc_target is not None:
            from resserve.perf.grpc_generator import GrpcLoadGenerator

            client: LoadGenerator = GrpcLoadGenerator(grpc_target, model, payloads, base)
        else:
            client = LoadGenerator(base + endpoint.format(model=model), payloads)
        async with client as generator:
            if mode == "closed":
                return [await closed_point(generator, int(c), settings, **scrape)
                        for c in _floats(concurrency, "--concurrency")]
            if mode == "open":
                return [await open_point(generator, r, settings, arrival, **scrape) for r in _floats(rates, "--rates")]
            search = await find_max_rate(generator, p99_ms, high_rps, settings, iterations=iterations,
                                         arrival=arrival, **scrape)
            console.print(f"max {arrival} rate with p99 <= {p99_ms:g} ms: [bold]{search.max_rate_rps:.1f} req/s[/]")
            for probe in search.probes:
                console.print(f"  {probe.rate_rps:.1f} req/s: {'pass' if probe.passed else 'fail'} ({probe.why})")
            return [probe.point for probe in search.probes]

    try:
        points = asyncio.run(run())
    except ResserveError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    where = f"grpc://{grpc_target}" if grpc_target else base
    _print_points(f"{model} at {where}, {len(payloads)} images", points)
    _write_json(json_out, [p.model_dump(mode="json") for p in points])


@loadtest_app.command("sweep")
def sweep_cmd(
    sweep_file: Annotated[Path, typer.Argument(help="loadtests/sweeps/*.yaml")],
    out: Annotated[Path, typer.Option(help="report folder (results.json, README.md, PNGs)")],
    variant: Annotated[list[str] | None, typer.Option(help="only these models")] = None,
) -> None:
    """Start a server per variant, run the sweep's scenarios, write JSON + Markdown + plots."""
    from resserve.perf.load_report import write_report
    from resserve.perf.sweep import load_sweep, run_sweep

    try:
        sweep = load_sweep(sweep_file)
    except ResserveError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    if variant:
        sweep.variants = [v for v in sweep.variants if v.model in variant]
        if not sweep.variants:
            raise typer.BadParameter(f"no variant of {sweep_file} is one of {variant}")
    result = run_sweep(sweep, say=console.print, save=lambda partial: write_report(partial, out))
    report = write_report(result, out)
    console.print(f"wrote {report} ({result.duration_s / 60:.1f} min)")
    failed = [v.label for v in result.variants if v.error]
    if failed:
        console.print(f"[bold red]failed variants:[/] {', '.join(failed)}")
        raise typer.Exit(1)


@loadtest_app.command("report")
def report_cmd(
    results: Annotated[Path, typer.Argument(help="a sweep's results.json")],
    out: Annotated[Path | None, typer.Option(help="report folder; default: beside results.json")] = None,
) -> None:
    """Render a sweep's results again (Markdown and PNGs)."""
    from resserve.perf.load_report import write_report
    from resserve.perf.sweep import SweepResult

    result = SweepResult.model_validate_json(results.read_text())
    console.print(f"wrote {write_report(result, out or results.parent)}")


@loadtest_app.command("overhead")
def overhead_cmd(
    concurrency: Annotated[int, typer.Option()] = 16,
) -> None:
    """The generator's own CPU cost per request, against a trivial local server."""
    from resserve.perf.images import generate
    from resserve.perf.overhead import measure_overhead

    result = measure_overhead(generate(((500, 375),), per_size=8), concurrency)
    console.print(f"{result.requests_per_s:.0f} req/s against a trivial server at c={concurrency}; "
                  f"{result.cpu_us_per_request:.0f} us generator CPU per request "
                  f"({result.share_of_core(400):.0%} of a core at 400 req/s); p50 {result.p50_ms:.1f} ms, "
                  f"p99 {result.p99_ms:.1f} ms")


@loadtest_app.command("overload")
def overload_cmd(
    url: Annotated[str, typer.Argument(help="server base URL")],
    model: Annotated[str, typer.Option(help="model to load")] = "resnet50",
    factor: Annotated[float, typer.Option(help="offered load as a multiple of measured capacity")] = 3.0,
    duration_s: Annotated[float, typer.Option(help="seconds of overload")] = 10.0,
    server_pid: Annotated[int | None, typer.Option(help="server process id, to follow its RSS (Linux)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result as JSON")] = None,
) -> None:
    """Overload drill: capacity, then Poisson load at FACTOR x capacity, then time to recover."""
    from resserve.perf.images import generate
    from resserve.perf.overload import run_overload

    result = asyncio.run(run_overload(f"{url.rstrip('/')}/v2/models/{model}/classify", generate(),
                                      factor=factor, duration_s=duration_s, server_pid=server_pid))
    acc, rej = result.accepted_latency_ms, result.rejected_latency_ms
    console.print(f"capacity {result.capacity_img_s:.1f} img/s; offered {result.offered_rps:.1f} req/s for "
                  f"{result.duration_s:g} s; statuses {result.statuses}")
    console.print(f"accepted {result.accepted_img_s:.1f} img/s, p50/p99 {acc.get('p50_ms', 0):.0f}/"
                  f"{acc.get('p99_ms', 0):.0f} ms; rejected p50/p99 {rej.get('p50_ms', 0):.1f}/"
                  f"{rej.get('p99_ms', 0):.1f} ms; recovered in "
                  + (f"{result.recovery_s:.2f} s" if result.recovery_s is not None else "NEVER"))
    if result.rss_before_mib is not None:
        console.print(f"server RSS {result.rss_before_mib:.0f} MiB before, {result.rss_peak_mib:.0f} peak, "
                      f"{result.rss_after_mib:.0f} after")
    _write_json(json_out, result.model_dump(mode="json"))


@loadtest_app.command("soak")
def soak_cmd(
    url: Annotated[str, typer.Argument(help="server base URL")],
    model: Annotated[str, typer.Option(help="model to load")] = "resnet50",
    requests: Annotated[int, typer.Option(help="measured requests after the warm-up")] = 20_000,
    concurrency: Annotated[int, typer.Option(help="closed-loop clients")] = 8,
    max_duration_s: Annotated[float, typer.Option(help="stop after this long in any case")] = 600.0,
    server_pid: Annotated[int | None, typer.Option(help="server process id, to follow its RSS (Linux)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result as JSON")] = None,
) -> None:
    """Soak: many requests, every outcome counted, the server's memory followed."""
    from resserve.perf.images import generate
    from resserve.perf.soak import run_soak

    result = asyncio.run(run_soak(f"{url.rstrip('/')}/v2/models/{model}/classify", generate(), requests=requests,
                                  concurrency=concurrency, server_pid=server_pid, max_duration_s=max_duration_s))
    lat = result.latency_ms
    console.print(f"{result.requests} requests in {result.duration_s:.0f} s ({result.throughput_img_s:.1f} img/s): "
                  f"{result.statuses}; p50/p99/p99.9 {lat.get('p50_ms', 0):.0f}/{lat.get('p99_ms', 0):.0f}/"
                  f"{lat.get('p99.9_ms', 0):.0f} ms")
    if result.rss_growth_pct is not None:
        console.print(f"server RSS {result.rss_after_warmup_mib:.0f} MiB after warm-up, {result.rss_end_mib:.0f} at "
                      f"the end (max {result.rss_max_mib:.0f}): growth {result.rss_growth_pct:+.1f}%")
    _write_json(json_out, result.model_dump(mode="json"))


@loadtest_app.command("compare")
def compare_cmd(
    url: Annotated[str, typer.Argument(help="server base URL serving both models")],
    models: Annotated[str, typer.Option(help="two models, comma-separated: A,B")],
    rates: Annotated[str, typer.Option(help="comma-separated offered requests/s")] = "25,50,100",
    arrival: Annotated[Literal["poisson", "constant"], typer.Option()] = "poisson",
    window_s: Annotated[float, typer.Option(help="seconds per window")] = 3.0,
    rounds: Annotated[int, typer.Option(help="windows per side per rate (ABBA order)")] = 3,
    images: Annotated[Path | None, typer.Option(help="folder of images (default: generated)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the points as JSON")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a p50/p99-per-rate plot (PNG) here")] = None,
    target_ms: Annotated[float | None, typer.Option(help="p99 target to draw on the plot")] = None,
) -> None:
    """A/B two models of one server under the same load, interleaved window by window."""
    from resserve.perf.compare import compare
    from resserve.perf.images import generate, load_folder

    pair = tuple(m.strip() for m in models.split(","))
    if len(pair) != 2:
        raise typer.BadParameter(f"--models needs exactly two names, got {models!r}")
    points = asyncio.run(compare(url.rstrip("/"), pair, load_folder(images) if images else generate(),  # type: ignore[arg-type]
                                 _floats(rates, "--rates"), arrival=arrival, window_s=window_s, rounds=rounds))
    table = Table(title=f"{pair[0]} vs {pair[1]}: {rounds} interleaved {window_s:g} s windows each")
    for column in ("req/s", "model", "img/s", "p50 ms", "p99 ms", "statuses"):
        table.add_column(column, justify="right")
    for point in points:
        for side in point.sides:
            lat = side.latency_ms
            table.add_row(f"{point.rate_rps:g}", side.model, f"{side.throughput_img_s:.1f}",
                          f"{lat.get('p50_ms', float('nan')):.1f}", f"{lat.get('p99_ms', float('nan')):.1f}",
                          ", ".join(f"{k}: {v}" for k, v in sorted(side.statuses.items())))
    console.print(table)
    _write_json(json_out, [p.model_dump(mode="json") for p in points])
    if plot is not None:
        from resserve.perf.load_report import plot_compare

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_compare(points, plot, f"{pair[0]} vs {pair[1]}: {rounds} interleaved {window_s:g} s windows each",
                     target_ms)
        console.print(f"wrote {plot}")


@loadtest_app.command("images")
def images_cmd(
    folder: Annotated[Path, typer.Argument(help="where to write the JPEGs")],
    per_size: Annotated[int, typer.Option(help="pictures of each size")] = 8,
) -> None:
    """Write the default image-like JPEG set (500x375, 1280x960, 320x240) to a folder (e.g. for Locust)."""
    from resserve.perf.images import generate, write_folder

    paths = write_folder(folder, generate(per_size=per_size))
    console.print(f"wrote {len(paths)} images to {folder}")
