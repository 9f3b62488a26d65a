"""``resserve bench``: the bare engine, preprocessing on one core, and the server against its bound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resserve.console import make_console
from resserve.errors import ResserveError

bench_app = typer.Typer(help="Benchmarks: the bare engine and the server.", no_args_is_help=True)
console = make_console()


def _fail(exc: ResserveError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=1)


def parse_batch_sizes(text: str) -> list[int]:
    """``1,8,32`` as [1, 8, 32]: positive integers."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter("batch sizes must be positive integers")
    return sizes


def parse_image_size(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. 500x375) as (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WxH, got {text!r}") from None
    return width, height


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
    sizes = parse_batch_sizes(batch_sizes)
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

    parsed = [parse_image_size(part) for part in sizes.split(",") if part.strip()]
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

    sizes = [parse_image_size(text) for text in image_size or ["500x375"]]
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
