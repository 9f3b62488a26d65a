"""The ``resserve`` command: export, optimize, describe, bench.

torch is imported only inside the commands that need it (export), so the serving install,
which has no torch, can still run every other command.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from resserve.build_events import BuildEvent
from resserve.build_events import failed as build_failed
from resserve.console import configure_logging, make_console
from resserve.errors import ResserveError
from resserve.perf.loadtest_commands import loadtest_app

app = typer.Typer(help="Serve ResNet-family image classifiers fast.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: the bare engine and the server.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(loadtest_app, name="loadtest")
console = make_console()
log = logging.getLogger("resserve")


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_format: Annotated[str, typer.Option(
        envvar="RESSERVE_LOG_FORMAT",
        help="json (one object per line), text, or auto: json off a terminal [RESSERVE_LOG_FORMAT]")] = "auto",
) -> None:
    """Set up logging for every command."""
    if log_format not in ("auto", "json", "text"):
        raise typer.BadParameter(f"--log-format must be auto, json or text, not {log_format!r}")
    configure_logging(log_level, log_format)  # type: ignore[arg-type]
    os.environ["RESSERVE_LOG_FORMAT"] = log_format  # child processes (builds behind serve) log alike
    # The exporter's optimizer passes log every step at INFO.
    for noisy in ("onnxscript", "onnx_ir", "torch", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: ResserveError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=1)


def _parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter("batch sizes must be positive integers")
    return sizes


def _parse_image_size(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. 500x375) as (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WxH, got {text!r}") from None
    return width, height


@app.command()
def export(
    arch: Annotated[str, typer.Argument(help="resnet18 ... wide_resnet101_2 (torchvision), resnet50d, seresnet50, resnetrs50 ... (timm)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write")],
    weights: Annotated[
        str | None, typer.Option(help=".pth/.safetensors file, torchvision:<Enum>.<MEMBER> or timm:<model>.<tag>")
    ] = None,
    random_weights: Annotated[bool, typer.Option(help="seeded random init (tests, throughput)")] = False,
    seed: Annotated[int, typer.Option(help="seed for random weights and parity inputs")] = 0,
    fallback_random: Annotated[
        bool, typer.Option(help="if --weights cannot be obtained, use seeded random weights and say so")
    ] = False,
    num_classes: Annotated[int | None, typer.Option(help="head size; default: from the weights")] = None,
    labels: Annotated[Path | None, typer.Option(help="label file, one per line")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17)")] = 18,
) -> None:
    """Export a ResNet to ONNX with every BatchNorm folded, checked against torch."""
    from resserve.builder.export import export_onnx
    from resserve.labels import load_labels
    from resserve.models.weights import load_model_or_fallback

    try:
        loaded, _ = load_model_or_fallback(arch, weights, random_weights=random_weights, seed=seed,
                                           num_classes=num_classes, fallback_random=fallback_random)
        label_list = list(load_labels(labels)) if labels else None
        report = export_onnx(loaded, output, opset=opset, seed=seed, labels=label_list)
    except ResserveError as exc:
        raise _fail(exc) from exc
    worst = max(r.relative_max_diff for r in report.parity)
    console.print(
        f"wrote {output}: {arch}, {report.folds} BatchNorms folded, weights: {loaded.source.description}; "
        f"parity (max|diff|/max|logit|) worst {worst:.2e}"
    )


@app.command()
def optimize(
    src: Annotated[Path, typer.Argument(help="ONNX file resserve did not export")],
    output: Annotated[Path, typer.Option("--output", "-o", help="optimized ONNX file to write")],
    check_parity: Annotated[bool, typer.Option(help="compare outputs with the source graph")] = True,
    require_folded: Annotated[bool, typer.Option(
        help="fail, naming the nodes, if any Conv is still followed by per-channel arithmetic")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
) -> None:
    """Fold BatchNorm and per-channel arithmetic into the convolutions of a third-party ONNX graph,
    through nop Casts and the NHWC<->NCHW Transposes converters wrap around them, and report it."""
    from resserve.builder.onnx_fold import optimize_onnx

    try:
        report = optimize_onnx(src, output, check_parity=check_parity, require_folded=require_folded)
    except ResserveError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps({"output": str(output)} | report.as_dict()))
        return
    console.print(f"wrote {output}", highlight=False)
    for line in report.lines():
        console.print(line, markup=False, highlight=False)


@app.command()
def describe(
    model: Annotated[Path, typer.Argument(help="an ONNX file, or a model folder of a repository")],
) -> None:
    """What a model is: arch, weights, preprocessing, labels; for a repository model also its
    engine, precision and accuracy report."""
    from resserve.metadata import read_metadata

    if model.is_dir():
        from resserve.repository import ModelRepository

        try:
            version = ModelRepository(model.parent).version(model.name)
        except ResserveError as exc:
            raise _fail(exc) from exc
        meta = version.metadata
        doc = {"model": version.config.name, "version": version.version, "engine": version.variant.engine,
               "precision": version.variant.precision, "artifact": str(version.artifact),
               "accuracy": version.accuracy.model_dump() if version.accuracy else None}
    elif model.is_file():
        meta = read_metadata(model)
        doc = {}
    else:
        raise _fail(ResserveError(f"{model} does not exist"))
    doc.update(meta.model_dump(mode="json", exclude={"labels"}))
    doc["labels"] = f"{len(meta.labels)} labels" if meta.labels else None
    console.print_json(json.dumps(doc))


@app.command()
def build(
    model_repo: Annotated[Path, typer.Argument(help="the model repository folder")] = Path("model_repo"),
    model: Annotated[list[str] | None, typer.Option(help="build only these models")] = None,
    force: Annotated[bool, typer.Option(help="rebuild even when up to date")] = False,
    events: Annotated[bool, typer.Option(
        help="one JSON event per line on stdout ({model, event: step|done|failed, ...}), the display on "
             "stderr, and go on past a model that fails (how resserve serve builds)")] = False,
) -> None:
    """Build every model's artifact that is missing or stale (config or source changed)."""
    from resserve.builder.build_pipeline import BuildPipeline
    from resserve.repository import ModelRepository

    try:
        repository = ModelRepository(model_repo)
        builder = BuildPipeline(repository)
        names = model or repository.names()
        if events:
            raise typer.Exit(code=_build_with_events(builder, names, force))
        for name in names:
            with console.status(f"[bold]{name}[/]: checking", spinner="dots") as status:
                builder.build(name, force=force, progress=lambda msg: status.update(msg) or console.print(msg))
    except ResserveError as exc:
        raise _fail(exc) from exc


def _exit_with_parent() -> None:
    """A server killed outright (SIGKILL) cannot stop its build process: the build stops itself
    when its parent is gone (builds stage in a temporary folder, so nothing half-written stays)."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _build_with_events(builder: Any, names: list[str], force: bool) -> int:
    """``build --events``: every model in turn, each one's failure its own; 1 if any failed.

    The events go to the real stdout, whatever redirects ``sys.stdout`` (Rich's live displays do);
    the server logs one line per step, so its terminal shows no spinner drawn over its log lines.
    """
    import sys

    _exit_with_parent()
    events_out = sys.__stdout__
    assert events_out is not None

    def emit(event: BuildEvent) -> None:
        events_out.write(event.line())
        events_out.flush()

    failures = 0
    for name in names:
        def step(message: str, name: str = name) -> None:
            emit(BuildEvent(model=name, event="step", message=message))  # the server logs one line per step

        try:
            builder.build(name, force=force, progress=step)
        except Exception as exc:  # one model's failure is its own; the server says why
            log.error("model %s: build failed: %s", name, exc, exc_info=exc)
            emit(build_failed(name, exc))
            failures += 1
            continue
        emit(BuildEvent(model=name, event="done"))
    return 1 if failures else 0


@app.command("wait-models")
def wait_models(
    model_repo: Annotated[Path, typer.Argument(help="the model repository folder")],
    model: Annotated[list[str] | None, typer.Option(help="wait only for these models")] = None,
    timeout_s: Annotated[float, typer.Option(help="give up (exit 1) after this long")] = 1800.0,
    interval_s: Annotated[float, typer.Option(help="seconds between checks")] = 5.0,
) -> None:
    """Wait until every model has a built version (an init container before the server starts).

    In Kubernetes a Job builds the repository into a shared volume; the serving pods must not
    start (and fail to load) before it has finished.
    """
    import time

    from resserve.repository import ModelRepository

    deadline = time.monotonic() + timeout_s
    while True:
        missing: list[str] = []
        try:
            repository = ModelRepository(model_repo)
            names = model or repository.names()
            missing = [name for name in names if not repository.versions(name)] if names else ["(no models yet)"]
        except ResserveError as exc:
            missing = [str(exc)]
        if not missing:
            console.print(f"built: {', '.join(names)}")
            return
        if time.monotonic() > deadline:
            raise _fail(ResserveError(f"still not built after {timeout_s:g} s: {', '.join(missing)}"))
        log.info("waiting for %s", ", ".join(missing))
        time.sleep(interval_s)


@app.command()
def serve(
    model_repo: Annotated[Path | None, typer.Option(help="the model repository [RESSERVE_MODEL_REPO]")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on; 0.0.0.0 in containers [RESSERVE_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port [RESSERVE_PORT]")] = None,
    grpc_port: Annotated[int | None, typer.Option(
        help="also serve OIP v2 over gRPC on this port, e.g. 8001 (default: off) [RESSERVE_GRPC_PORT]")] = None,
    model: Annotated[list[str] | None, typer.Option(help="serve only these models")] = None,
    shutdown_delay_s: Annotated[float, typer.Option(help="stay up, not ready, this long after SIGTERM")] = 0.0,
    build_missing: Annotated[bool | None, typer.Option(help="build missing or stale models at start")] = None,
    model_file: Annotated[Path | None, typer.Option(
        help="serve this ONNX file (or the one *.onnx in this folder) as one model, built into --work-dir; "
             "KServe's onnx format")] = None,
    model_name: Annotated[str | None, typer.Option(help="the --model-file's model name (default: its stem)")] = None,
    work_dir: Annotated[Path | None, typer.Option(
        help="where --model-file's repository is written (default: $TMPDIR/resserve-repo)")] = None,
    workers: Annotated[str | None, typer.Option(
        help="server processes on the same port(s), each with its own engines and batcher; a number, or "
             "auto (one per core) [RESSERVE_WORKERS]")] = None,
) -> None:
    """Serve the repository's models over HTTP (OIP v2 + /classify + /metrics), and gRPC (OIP v2) if asked.

    Every server setting can also come from the environment (RESSERVE_<SETTING>); options win.
    """
    from pydantic import ValidationError

    from resserve.config import ServerSettings
    from resserve.server.serve import run_server

    if model_file is not None:
        if model_repo is not None:
            raise _fail(ResserveError("give --model-repo or --model-file, not both"))
        from resserve.model_file import find_onnx, one_model_repository

        try:
            name = model_name or find_onnx(model_file).stem
            model_repo = one_model_repository(model_file, name, work_dir or Path(tempfile.gettempdir()) / "resserve-repo")
        except ResserveError as exc:
            raise _fail(exc) from exc
        build_missing, model = True, [name]
    given = {"model_repo": model_repo, "host": host, "port": port, "grpc_port": grpc_port, "models": model or None,
             "build_missing": build_missing, "workers": workers}
    try:
        settings = ServerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        from resserve.config import validation_problems

        raise _fail(ResserveError(f"bad server settings: {validation_problems(exc.errors())}")) from exc
    try:
        from resserve.server.startup import BuildProcess
        from resserve.server.supervisor import run_workers, worker_count

        # Builds run in a child process (`resserve build --events`) behind the open port: the server
        # answers at once and imports neither the build code nor torch.
        level = logging.getLevelName(logging.getLogger().level).lower()
        count = worker_count(settings.workers)
        if count > 1:  # N processes on one socket; each builds nothing but worker 0 (server/supervisor.py)
            if (code := run_workers(settings, count, log_level=level, shutdown_delay_s=shutdown_delay_s)) != 0:
                raise typer.Exit(code)
            return
        builds = BuildProcess(settings.model_repo) if settings.build_missing else None
        run_server(settings, log_level=level, shutdown_delay_s=shutdown_delay_s, builds=builds)
    except ResserveError as exc:
        raise _fail(exc) from exc


@bench_app.command("engine")
def bench_engine_cmd(
    target: Annotated[Path, typer.Argument(help="an ONNX file, or a model repository for a variant matrix")],
    model: Annotated[list[str] | None, typer.Option(help="repository mode: variants to measure (default: all)")] = None,
    batch_sizes: Annotated[str, typer.Option(help="comma-separated")] = "1,8,32",
    rounds: Annotated[int, typer.Option(help="interleaved timed rounds; the median is reported")] = 5,
    round_seconds: Annotated[float, typer.Option(help="seconds per batch size per round")] = 1.0,
    provider: Annotated[str, typer.Option(help="ONNX file mode: auto, cpu, cuda or tensorrt")] = "auto",
    threads: Annotated[int | None, typer.Option(help="ONNX file mode: intra-op threads; default all cores")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results as JSON")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="repository mode: Markdown table")] = None,
) -> None:
    """Bare-engine images/s and latency per batch size: the server's reference."""
    sizes = _parse_batch_sizes(batch_sizes)
    if target.is_dir():
        from resserve.perf.bench_matrix import bench_variants, markdown, write
        from resserve.repository import ModelRepository

        try:
            repository = ModelRepository(target)
            results = bench_variants(repository, model or repository.names(), sizes, rounds=rounds,
                                     round_s=round_seconds)
        except ResserveError as exc:
            raise _fail(exc) from exc
        console.print(markdown(results))
        write(results, json_out, markdown_out)
        return
    from resserve.perf.bench_engine import bench_engine, write_json
    from resserve.engines.onnxruntime import OnnxRuntimeEngine

    try:
        engine = OnnxRuntimeEngine(target, provider, intra_op_threads=threads)
        engine.load()
        results_one = bench_engine(engine, sizes, rounds=rounds, round_s=round_seconds)
    except ResserveError as exc:
        raise _fail(exc) from exc
    info = engine.describe()
    table = Table(title=f"{target.name} on onnxruntime/{info['provider']}, {info['intra_op_threads']} threads")
    for column in ("batch", "img/s (median)", "min..max", "p50 ms", "p90 ms", "p99 ms", "calls"):
        table.add_column(column, justify="right")
    for r in results_one:
        lat = r.latency_ms
        table.add_row(
            str(r.batch_size), f"{r.images_per_s:.1f}", f"{r.images_per_s_min:.0f}..{r.images_per_s_max:.0f}",
            f"{lat['p50_ms']:.1f}", f"{lat['p90_ms']:.1f}", f"{lat['p99_ms']:.1f}", str(r.calls),
        )
    console.print(table)
    if json_out:
        write_json(json_out, engine, results_one, {"rounds": rounds, "round_s": round_seconds, "batch_sizes": sizes})
        console.print(f"wrote {json_out}")


@bench_app.command("preprocess")
def bench_preprocess_cmd(
    sizes: Annotated[str, typer.Option(help="comma-separated WxH")] = "320x240,500x375,1280x960,4000x3000",
    rounds: Annotated[int, typer.Option(help="interleaved rounds; the median is reported")] = 3,
    round_seconds: Annotated[float, typer.Option(help="seconds per mode per round")] = 1.0,
) -> None:
    """Preprocessing on one core: exact path vs each fast path, time and deviation."""
    from resserve.perf.bench_preprocess import bench_preprocess

    parsed = [_parse_image_size(part) for part in sizes.split(",") if part.strip()]
    results = bench_preprocess(parsed, rounds=rounds, round_s=round_seconds)
    table = Table(title="preprocessing, one core (JPEG quality 90, ImageNet contract)")
    for column in ("size", "mode", "ms/image", "mean abs dev", "max abs dev"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(f"{r.size[0]}x{r.size[1]}", r.mode, f"{r.ms_per_image:.2f}", f"{r.mean_abs_deviation:.4f}",
                      f"{r.max_abs_deviation:.3f}")
    console.print(table)


@bench_app.command("server")
def bench_server_cmd(
    model_repo: Annotated[Path, typer.Argument(help="the model repository folder")] = Path("model_repo"),
    model: Annotated[str, typer.Option(help="model to measure")] = "resnet50",
    concurrency: Annotated[int, typer.Option(help="closed-loop clients")] = 16,
    image_size: Annotated[list[str] | None, typer.Option(help="JPEG size WxH; repeat for several")] = None,
    images: Annotated[Path | None, typer.Option(help="a folder of real photos, measured as one more set")] = None,
    photos_limit: Annotated[int | None, typer.Option(help="at most this many photos from --images")] = None,
    rounds: Annotated[int, typer.Option(help="interleaved windows per size")] = 3,
    window_s: Annotated[float, typer.Option(help="measured seconds per window")] = 8.0,
    warmup_s: Annotated[float, typer.Option(help="unmeasured seconds before each window")] = 2.0,
    workers: Annotated[int, typer.Option(help="the server's worker processes (serve --workers)")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results as JSON")] = None,
) -> None:
    """Engine as served, preprocessing per core and end-to-end JPEG classification, in one run.

    Bound = cores / (cores / engine img/s + preprocess s per image on one core); each round
    measures engine, preprocessing and server back to back."""
    from resserve.perf.server_bench import as_dict, run_server_bench

    sizes = [_parse_image_size(text) for text in image_size or ["500x375"]]
    try:
        result = run_server_bench(model_repo, model, concurrency=concurrency, image_sizes=tuple(sizes),
                                  images=images, photos_limit=photos_limit, rounds=rounds, window_s=window_s,
                                  warmup_s=warmup_s, workers=workers)
    except ResserveError as exc:
        raise _fail(exc) from exc
    except FileNotFoundError as exc:
        raise _fail(ResserveError(str(exc))) from exc
    rounds_text = ", ".join(f"{r:.0f}" for r in result.engine_img_s_rounds)
    console.print(f"{model}: engine as served ({result.engine_instances} instance(s), batch "
                  f"{result.engine_batch_size}, {result.cores} cores): {result.engine_img_s:.1f} img/s "
                  f"(rounds: {rounds_text})")
    table = Table(title=f"{model}: {concurrency} clients, {workers} worker{'s' if workers > 1 else ''}, "
                        f"{rounds} rounds of {window_s:.0f} s windows")
    for column in ("size", "preprocess ms", "bound img/s", "e2e img/s", "e2e/bound", "p50/p99 ms", "batch"):
        table.add_column(column, justify="right")
    for s in result.sizes:
        lat = s.latency_ms
        table.add_row(s.label, f"{s.preprocess_ms_one_core:.2f}",
                      f"{s.bound_img_s:.1f}", f"{s.e2e_img_s:.1f}", f"{s.ratio:.2f}",
                      f"{lat.get('p50_ms', 0):.0f}/{lat.get('p99_ms', 0):.0f}", f"{s.mean_batch_size:.1f}")
    console.print(table)
    stages = Table(title="server stages, mean ms per request (from /metrics over the measured windows)")
    for column in ("size", *result.sizes[0].server_stage_ms, "request"):
        stages.add_column(column, justify="right")
    for s in result.sizes:
        stages.add_row(s.label, *(f"{v:.1f}" for v in s.server_stage_ms.values()), f"{s.server_request_ms:.1f}")
    console.print(stages)
    if result.sizes[0].cores_used:
        cpu = Table(title="where the CPU went: cores busy (CPU ms per image served), from /proc over the windows")
        groups = list(result.sizes[0].cores_used)
        for column in ("size", *groups):
            cpu.add_column(column, justify="right")
        for s in result.sizes:
            cpu.add_row(s.label, *(f"{s.cores_used[g]:.2f}" + (f" ({s.cpu_ms_per_image[g]:.2f})"
                                                               if g in s.cpu_ms_per_image else "") for g in groups))
        console.print(cpu)
    if len(result.sizes) > 1:
        base = result.sizes[0]
        for s in result.sizes[1:]:
            console.print(f"{s.label} costs {base.e2e_img_s / s.e2e_img_s:.2f}x {base.label} end-to-end")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(as_dict(result), indent=2))
        console.print(f"wrote {json_out}")


if __name__ == "__main__":
    app()
