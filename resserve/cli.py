"""The ``resserve`` command: export, optimize, describe, bench.

torch is imported only inside the commands that need it (export), so the serving install,
which has no torch, can still run every other command.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from resserve.console import configure_logging, make_console
from resserve.errors import ResserveError
from resserve.perf.bench_commands import bench_app
from resserve.perf.loadtest_commands import loadtest_app
from resserve.perf.tune_commands import tune

app = typer.Typer(help="Serve ResNet-family image classifiers fast.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(loadtest_app, name="loadtest")
app.command()(tune)
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
    new_version: Annotated[bool, typer.Option(
        help="build the current source and config into the next version number, leaving every older "
             "version untouched (a release candidate to serve beside them)")] = False,
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
        if new_version and events:
            raise typer.BadParameter("--new-version builds on an operator's word, not in --events mode")
        if events:
            from resserve.builder.event_stream import build_with_events

            raise typer.Exit(code=build_with_events(builder, names, force))
        for name in names:
            with console.status(f"[bold]{name}[/]: checking", spinner="dots") as status:
                builder.build(name, force=force, new_version=new_version,
                              progress=lambda msg: status.update(msg) or console.print(msg))
    except ResserveError as exc:
        raise _fail(exc) from exc


canary_app = typer.Typer(help="A model's release: its shadow candidate's comparison and decisions.",
                         no_args_is_help=True)
app.add_typer(canary_app, name="canary")


@canary_app.command("status")
def canary_status(
    model: Annotated[str, typer.Argument(help="the model's name")],
    url: Annotated[str, typer.Option(help="the server's HTTP address")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="RESSERVE_API_KEY", help="an API key, if the server asks for one [RESSERVE_API_KEY]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the server's answer as it is")] = False,
) -> None:
    """How the candidate compares with what serves (GET /v2/models/MODEL/canary)."""
    import httpx
    from rich.table import Table

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/v2/models/{model}/canary", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise _fail(ResserveError(f"cannot reach {url}: {exc}")) from exc
    if response.status_code != 200:
        raise _fail(ResserveError(f"{response.status_code}: {response.text}"))
    status = response.json()
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    console.print(f"model {status['model']}: serving {', '.join(status['serving']) or 'nothing'}; "
                  f"promoted: {status['promoted'] or 'none'}; traffic {json.dumps(status['traffic'])}")
    table = Table(title="shadow comparisons (top-1 agreement with its 95% interval)")
    for column in ("primary", "candidate", "compared", "top-1", "95% interval", "top-5 overlap", "prob L1",
                   "p50 / p99 primary ms", "p50 / p99 candidate ms", "dropped"):
        table.add_column(column, no_wrap=True)

    def ms(latency: dict[str, float | None]) -> str:
        p50, p99 = latency["p50"], latency["p99"]
        return "-" if p50 is None or p99 is None else f"{p50 * 1000:.1f} / {p99 * 1000:.1f}"

    for c in status["comparisons"]:
        low, high = c["top1_agreement_95"]
        table.add_row(c["primary"], c["candidate"], str(c["compared"]),
                      "-" if c["top1_agreement"] is None else f"{c['top1_agreement']:.4f}", f"{low:.4f} - {high:.4f}",
                      "-" if c["top5_overlap_mean"] is None else f"{c['top5_overlap_mean']:.2f}",
                      "-" if c["prob_l1_mean"] is None else f"{c['prob_l1_mean']:.4f}",
                      ms(c["latency_s"]["primary"]), ms(c["latency_s"]["candidate"]),
                      ", ".join(f"{k} {v}" for k, v in c["dropped"].items()) or "0")
    console.print(table)
    for d in status["decisions"]:
        console.print(f"{d['at']}: candidate {d['candidate']} {d['outcome'].upper()} (primary {d['primary']}): {d['why']}")
    if not status["decisions"]:
        console.print("no decision yet")


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
    from resserve.repository import wait_for_builds

    try:
        names = wait_for_builds(model_repo, model, timeout_s=timeout_s, interval_s=interval_s,
                                on_wait=lambda missing: log.info("waiting for %s", ", ".join(missing)))
    except ResserveError as exc:
        raise _fail(exc) from exc
    console.print(f"built: {', '.join(names)}")


@app.command()
def serve(
    model_repo: Annotated[str | None, typer.Option(
        help="the model repository: a folder, or a URL (s3://, gs://, https://) mirrored locally [RESSERVE_MODEL_REPO]")] = None,
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
        help="where --model-file's repository is written, a folder of this user's (default: $TMPDIR/resserve-repo-<uid>)")] = None,
    workers: Annotated[str | None, typer.Option(
        help="server processes on the same port(s), each with its own engines and batcher; a number, or "
             "auto (one per core) [RESSERVE_WORKERS]")] = None,
) -> None:
    """Serve the repository's models over HTTP (OIP v2 + /classify + /metrics), and gRPC (OIP v2) if asked.

    Every server setting can also come from the environment (RESSERVE_<SETTING>); options win.
    """
    from pydantic import ValidationError

    from resserve.config import ServerSettings
    from resserve.server.serve import serve as serve_settings

    if model_file is not None:
        if model_repo is not None:
            raise _fail(ResserveError("give --model-repo or --model-file, not both"))
        from resserve.model_file import default_work_dir, find_onnx, one_model_repository

        try:
            name = model_name or find_onnx(model_file).stem
            model_repo = str(one_model_repository(model_file, name, work_dir or default_work_dir()))
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
    level = logging.getLevelName(logging.getLogger().level).lower()
    try:
        code = serve_settings(settings, log_level=level, shutdown_delay_s=shutdown_delay_s)
    except ResserveError as exc:
        raise _fail(exc) from exc
    if code != 0:
        raise typer.Exit(code)


if __name__ == "__main__":
    app()
