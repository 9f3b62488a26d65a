"""Render a sweep's JSON as a Markdown report with PNG plots.

Three pictures answer the questions a user has when choosing a variant: how much throughput each
buys at what tail latency (throughput vs p99), where the time of a request goes (stacked server
stages), and whether dynamic batching formed the batches the engine is fast at (batch sizes).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt

from resserve.perf.compare import ComparePoint
from resserve.perf.measure import LoadPoint
from resserve.perf.sweep import SweepResult, VariantResult

THROUGHPUT_PLOT = "throughput_vs_p99.png"
STAGES_PLOT = "stage_breakdown.png"
BATCH_PLOT = "batch_sizes.png"
STAGE_ORDER = ("preprocess_wait", "decode", "preprocess", "queue", "inference")


def _ms(point: LoadPoint, key: str) -> str:
    value = point.latency_ms.get(key)
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _errors(point: LoadPoint) -> str:
    bad = {k: v for k, v in point.statuses.items() if k != "200"}
    return ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "0"


def _operating_point(variant: VariantResult) -> LoadPoint | None:
    """The point the stage and batch plots show: the highest closed-loop concurrency."""
    return variant.closed[-1] if variant.closed else None


def plot_throughput_vs_p99(result: SweepResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for variant in result.variants:
        if not variant.closed:
            continue
        xs = [p.throughput_img_s for p in variant.closed]
        ys = [p.latency_ms.get("p99_ms", math.nan) for p in variant.closed]
        (line,) = ax.plot(xs, ys, marker="o", label=variant.label)
        for point, x, y in zip(variant.closed, xs, ys, strict=True):
            ax.annotate(f"c{point.concurrency}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        open_points = [*variant.open, *(p.point for p in (variant.max_rate.probes if variant.max_rate else []))]
        open_points = [p for p in open_points if "p99_ms" in p.latency_ms]
        if open_points:
            ax.plot([p.throughput_img_s for p in open_points], [p.latency_ms["p99_ms"] for p in open_points],
                    marker="o", markerfacecolor="none", color=line.get_color(), linestyle="none")
        if variant.max_rate and variant.max_rate.p99_ms is not None:
            ax.plot([variant.max_rate.throughput_img_s], [variant.max_rate.p99_ms], marker="*", markersize=12,
                    color=line.get_color(), linestyle="none")
    bound = result.sweep.max_rate.p99_ms if result.sweep.max_rate else None
    if bound:
        ax.axhline(bound, color="grey", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[0], bound, f" p99 bound {bound:g} ms", va="bottom", fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("throughput (images/s, HTTP 200 only)")
    ax.set_ylabel("p99 latency (ms, log scale)")
    ax.set_title("Throughput vs p99: closed loop (dots, c = clients), open loop (rings), "
                 "max Poisson rate within the bound (star)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_compare(points: list[ComparePoint], path: Path, title: str = "", target_ms: float | None = None) -> Path:
    """A/B comparison: p50 and p99 per offered rate for both sides (left), refusals (right);
    ``target_ms`` draws a p99 target."""
    fig, (lat_ax, err_ax) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, gridspec_kw={"width_ratios": [2, 1]})
    rates = [p.rate_rps for p in points]
    names = [side.model for side in points[0].sides] if points else []
    width = 0.38
    for index, name in enumerate(names):
        sides = [next(s for s in p.sides if s.model == name) for p in points]
        (line,) = lat_ax.plot(rates, [s.latency_ms.get("p99_ms", math.nan) for s in sides], marker="o",
                              label=f"{name} p99")
        lat_ax.plot(rates, [s.latency_ms.get("p50_ms", math.nan) for s in sides], marker="s", linestyle="--",
                    color=line.get_color(), label=f"{name} p50")
        refused = [sum(n for status, n in s.statuses.items() if status != "200") for s in sides]
        err_ax.bar([i + (index - 0.5) * width for i in range(len(rates))], refused, width, color=line.get_color(),
                   label=name)
    if target_ms:
        lat_ax.axhline(target_ms, color="grey", linestyle=":", linewidth=1)
        lat_ax.text(rates[0] if rates else 0, target_ms, f" p99 target {target_ms:g} ms", va="bottom", fontsize=8,
                    color="grey")
    lat_ax.set_yscale("log")
    lat_ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    lat_ax.set_xlabel("offered load (requests/s, Poisson)")
    lat_ax.set_ylabel("latency (ms, log scale)")
    lat_ax.grid(True, which="both", alpha=0.3)
    lat_ax.legend(fontsize=8)
    err_ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
    err_ax.set_xlabel("offered load (requests/s)")
    err_ax.set_ylabel("requests not answered 200")
    err_ax.legend(fontsize=8)
    fig.suptitle(title or "A/B, interleaved windows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_stages(result: SweepResult, path: Path) -> Path:
    variants = [v for v in result.variants if (p := _operating_point(v)) is not None and p.server is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(variants), 1) + 2.0), dpi=110)
    labels = []
    for row, variant in enumerate(variants):
        point = _operating_point(variant)
        assert point is not None and point.server is not None
        labels.append(f"{variant.label} (c={point.concurrency})")
        left = 0.0
        for index, stage in enumerate((*STAGE_ORDER, "other")):
            value = point.server.unaccounted_ms if stage == "other" else point.server.stage_ms.get(stage, 0.0)
            ax.barh(row, value, left=left, color=plt.cm.tab10(index), label=stage if row == 0 else None)
            left += value
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean server time per request (ms); inference = the request's batch")
    ax.set_title("Where a request's time goes (server-side, from /metrics deltas)", fontsize=9)
    fig.legend(fontsize=7, ncols=6, loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_batch_sizes(result: SweepResult, path: Path) -> Path:
    variants = [v for v in result.variants if (p := _operating_point(v)) is not None and p.server is not None]
    sizes: list[str] = []
    for variant in variants:
        for size in variant.closed[-1].server.batch_size_counts:  # type: ignore[union-attr]
            if size not in sizes:
                sizes.append(size)
    sizes.sort(key=lambda s: int(s.lstrip(">").split("-")[0]))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        server = variant.closed[-1].server
        assert server is not None
        total = sum(server.batch_size_counts.values()) or 1
        ax.bar([j + i * width for j in range(len(sizes))],
               [server.batch_size_counts.get(s, 0) / total for s in sizes], width,
               label=f"{variant.label} (mean {server.mean_batch_size:.1f})")
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(sizes))], sizes)
    ax.set_xlabel("engine batch size")
    ax.set_ylabel("fraction of batches")
    ax.set_title("Batch sizes formed by dynamic batching at the highest concurrency", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _summary_table(result: SweepResult) -> list[str]:
    bound = result.sweep.max_rate.p99_ms if result.sweep.max_rate else None
    head = "| variant | engine | precision | top-1 agreement | peak img/s | p99 at peak (ms) |"
    rule = "|---|---|---|---|---|---|"
    if bound:
        head += f" max Poisson rate, p99 <= {bound:g} ms (img/s) |"
        rule += "---|"
    lines = [head, rule]
    for v in result.variants:
        if v.error:
            lines.append(f"| {v.label} | {v.engine or '-'} | {v.precision or '-'} | - | failed: {v.error} | - |"
                         + (" - |" if bound else ""))
            continue
        peak = v.peak()
        agreement = f"{v.accuracy['top1_agreement']:.1%}" if v.accuracy else "reference"
        row = (f"| {v.label} | {v.engine} | {v.precision} | {agreement} | "
               + (f"{peak.throughput_img_s:.1f} (c={peak.concurrency}) | {_ms(peak, 'p99_ms')} |" if peak else "- | - |"))
        if bound:
            row += f" {v.max_rate.throughput_img_s:.1f} |" if v.max_rate else " - |"
        lines.append(row)
    return lines


def _points_table(points: list[LoadPoint]) -> list[str]:
    lines = ["| load | img/s | p50 | p90 | p95 | p99 | p99.9 | errors | stable | mean batch | "
             "server ms: wait / decode / preprocess / queue / inference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        s = p.server
        stages = (" / ".join(f"{s.stage_ms.get(k, 0):.1f}" for k in STAGE_ORDER)
                  if s else "-")
        lines.append(f"| {p.label} | {p.throughput_img_s:.1f} | {_ms(p, 'p50_ms')} | {_ms(p, 'p90_ms')} | "
                     f"{_ms(p, 'p95_ms')} | {_ms(p, 'p99_ms')} | {_ms(p, 'p99.9_ms')} | {_errors(p)} | "
                     f"{'yes' if p.stable else 'no'} | {f'{s.mean_batch_size:.1f}' if s else '-'} | {stages} |")
    return lines


def render_markdown(result: SweepResult, plots: dict[str, str]) -> str:
    sweep, env = result.sweep, result.environment
    m = sweep.measurement
    lines = [
        f"# Load test: {result.name}",
        "",
        f"Started {result.started}, {result.duration_s / 60:.1f} min, on {env.get('cpu', '?')} "
        f"(resserve {env.get('resserve', '?')}, ONNX Runtime {env.get('onnxruntime', '?')}).",
        f"Each point: {m.warmup_s:g} s warm-up, then {m.window_s:g} s windows until {m.stable_windows} agree within "
        f"{m.stability_pct:g}% (throughput and mean latency) or {m.max_windows} have passed; the numbers merge "
        "the last windows. Throughput counts HTTP 200s only; every other outcome is listed under errors. "
        "Open-loop latency runs from the scheduled send time. The generator runs on the same machine.",
        "",
    ]
    if result.generator_overhead:
        g = result.generator_overhead
        lines += [f"Generator cost: {g.cpu_us_per_request:.0f} us of CPU per request "
                  f"({g.requests_per_s:.0f} req/s against a trivial server, {g.body_bytes // 1024} KiB bodies); "
                  "at 400 req/s that is "
                  f"{g.share_of_core(400):.0%} of one core.", ""]
    lines += ["## Summary", "", *_summary_table(result), ""]
    for name, title in ((THROUGHPUT_PLOT, "Throughput vs p99"), (STAGES_PLOT, "Stage breakdown"),
                        (BATCH_PLOT, "Batch sizes")):
        if name in plots:
            lines += [f"![{title}]({plots[name]})", ""]
    for v in result.variants:
        lines += [f"## {v.label}", ""]
        if v.error:
            lines += [f"Failed: `{v.error}`", ""]
            continue
        lines += [f"{v.engine} {v.precision}; serving config `{v.config}`; {v.duration_s:.0f} s.", ""]
        if v.accuracy:
            a = v.accuracy
            lines += [f"Accuracy vs fp32 on {a.get('images', '?')} held-out images: top-1 "
                      f"{a['top1_agreement']:.1%}, top-5 {a.get('top5_agreement', float('nan')):.1%}, "
                      f"cosine {a.get('cosine_mean', float('nan')):.4f}.", ""]
        if v.closed:
            lines += ["Closed loop:", "", *_points_table(v.closed), ""]
        if v.open:
            lines += ["Open loop:", "", *_points_table(v.open), ""]
        if v.max_rate:
            r = v.max_rate
            lines += [f"Max Poisson rate with p99 <= {r.p99_bound_ms:g} ms: **{r.max_rate_rps:.1f} req/s** "
                      f"({r.throughput_img_s:.1f} img/s delivered). Probes:", "",
                      "| rate (req/s) | passed | why |", "|---|---|---|"]
            lines += [f"| {p.rate_rps:.1f} | {'yes' if p.passed else 'no'} | {p.why} |" for p in r.probes]
            lines.append("")
    return "\n".join(lines)


def write_report(result: SweepResult, out_dir: Path) -> Path:
    """``results.json``, the three PNGs and ``README.md`` in ``out_dir``; returns the Markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(result.model_dump_json(indent=1))
    plots: dict[str, str] = {}
    if any(v.closed for v in result.variants):
        plot_throughput_vs_p99(result, out_dir / THROUGHPUT_PLOT)
        plot_stages(result, out_dir / STAGES_PLOT)
        plot_batch_sizes(result, out_dir / BATCH_PLOT)
        plots = {name: name for name in (THROUGHPUT_PLOT, STAGES_PLOT, BATCH_PLOT)}
    report = out_dir / "README.md"
    report.write_text(render_markdown(result, plots))
    return report
