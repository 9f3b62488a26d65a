"""`resserve bench server` on every model of a repository, one process against N workers, alternating.

    python loadtests/bench_variants.py model_repo --workers 1,2 --passes 2 \
        --images ../shared/data/imagenet-sample-300 --out loadtests/reports/<date>-variants
    python loadtests/bench_variants.py --summarize loadtests/reports/<date>-variants

Each (pass, model) runs every worker count back to back, the order flipped on odd passes, so drift
hits both alike. One JSON per run (``<model>-w<N>-<pass>.json``, the bench's own format); the
summary is one Markdown table per image set: the engine as served, the bound, end to end,
e2e/bound per run and where the server's CPU went.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from resserve.perf.server_bench import as_dict, run_server_bench
from resserve.repository import ModelRepository


def _runs(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*-w*-*.json"))]


def _fmt(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _measured(runs: list[dict[str, Any]], model: str, workers: int, label: str) -> list[tuple[dict, dict]]:
    """(run, image set) for every run of ``model`` with ``workers`` that measured ``label``."""
    return [(run, size) for run in runs if run["model"] == model and run["workers"] == workers
            for size in run["sizes"] if size["label"] == label]


def summary(runs: list[dict[str, Any]]) -> str:
    """Markdown: per image set, one row per (model, workers) with every run's figures."""
    out: list[str] = []
    labels = list(dict.fromkeys(size["label"] for run in runs for size in run["sizes"]))
    for label in labels:
        out += [f"### {label}", "",
                "| model | workers | runs | engine as served img/s | preprocess ms (1 core) | bound img/s | "
                "e2e img/s (median of windows) | e2e/bound per run | p99 ms per run | mean batch |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        keys = list(dict.fromkeys((run["model"], run["workers"]) for run in runs))
        for model, workers in keys:
            mine = [run for run in runs if run["model"] == model and run["workers"] == workers]
            sizes = [size for run in mine for size in run["sizes"] if size["label"] == label]
            if not sizes:
                continue
            windows = [w for size in sizes for w in size["e2e_img_s_windows"]]
            out.append(
                f"| {model} | {workers} | {len(sizes)} | {statistics.median(r['engine_img_s'] for r in mine):.1f} | "
                f"{statistics.median(s['preprocess_ms_one_core'] for s in sizes):.2f} | "
                f"{statistics.median(s['bound_img_s'] for s in sizes):.1f} | {statistics.median(windows):.1f} | "
                f"{_fmt([s['ratio'] for s in sizes])} | {_fmt([s['latency_ms'].get('p99_ms', 0) for s in sizes], 0)} | "
                f"{statistics.median(s['mean_batch_size'] for s in sizes):.1f} |")
        out.append("")
        cpu_rows = [(run["model"], run["workers"], size) for run in runs for size in run["sizes"]
                    if size["label"] == label and size.get("cores_used")]
        if cpu_rows:
            groups = list(dict.fromkeys(g for *_, size in cpu_rows for g in size["cores_used"]))
            out += [f"Where the CPU went ({label}): cores busy over the windows, CPU ms per image served in "
                    "brackets; medians over runs.", "",
                    "| model | workers | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
            for model, workers in keys:
                mine = [size for m, w, size in cpu_rows if m == model and w == workers]
                if not mine:
                    continue
                cells = []
                for group in groups:
                    cores = statistics.median(s["cores_used"].get(group, 0.0) for s in mine)
                    per_image = [s["cpu_ms_per_image"][group] for s in mine if group in s["cpu_ms_per_image"]]
                    cells.append(f"{cores:.2f}" + (f" ({statistics.median(per_image):.2f})" if per_image else ""))
                out.append(f"| {model} | {workers} | " + " | ".join(cells) + " |")
            out.append("")
            out += _gap_table(label, runs, keys)
    return "\n".join(out)


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Markdown: per image set, one row per (model, workers) measured on both sides: e2e/bound, e2e
    img/s and the event loops' CPU per image, before -> after (medians over each side's runs)."""
    out: list[str] = []
    labels = list(dict.fromkeys(size["label"] for run in after for size in run["sizes"]))
    keys = list(dict.fromkeys((run["model"], run["workers"]) for run in after))

    def median(values: list[float], digits: int) -> str:
        return f"{statistics.median(values):.{digits}f}" if values else "-"

    for label in labels:
        out += [f"### {label}: before -> after", "",
                "| model | workers | runs | e2e/bound | e2e img/s | event loops ms/img |", "|---|---|---|---|---|---|"]
        for model, workers in keys:
            pair = [[size for _, size in _measured(side, model, workers, label)] for side in (before, after)]
            if not all(pair):
                continue
            ratio = " -> ".join(median([s["ratio"] for s in side], 2) for side in pair)
            rate = " -> ".join(median([s["e2e_img_s"] for s in side], 1) for side in pair)
            loop = " -> ".join(median([s["cpu_ms_per_image"]["event loops"] for s in side
                                       if "event loops" in s.get("cpu_ms_per_image", {})], 2) for side in pair)
            out.append(f"| {model} | {workers} | {len(pair[0])} / {len(pair[1])} | {ratio} | {rate} | {loop} |")
        out.append("")
    return "\n".join(out)


GAP_COLUMNS = ("bound's CPU ms/img", "spent ms/img", "bound/spent", "engine over bare",
               "preprocessing over 1 core", "event loops", "load generator", "idle", "rest")


def gap(run: dict[str, Any], size: dict[str, Any]) -> dict[str, float] | None:
    """Where one run's machine time per image went beyond the bound's two terms (ms per image served):
    the engine's threads over the bare engine's share, preprocessing threads over one core's cost,
    the event loops, the load generator, idle cores and the rest (other processes, rounding)."""
    cpu, cores_used = size.get("cpu_ms_per_image", {}), size.get("cores_used", {})
    busy = next((g for g in cpu if cpu[g] > 0 and cores_used.get(g, 0) > 0), None)
    if busy is None:
        return None
    rate = 1000.0 * cores_used[busy] / cpu[busy]  # images served per second over the windows
    cores = run["cores"]
    engine_bare = cores * 1000.0 / run["engine_img_s"]
    preprocess = size["preprocess_ms_one_core"]
    parts = {
        "engine over bare": cpu.get("engine threads", 0.0) + cpu.get("other threads", 0.0) - engine_bare,
        "preprocessing over 1 core": cpu.get("preprocessing threads", 0.0) - preprocess,
        "event loops": cpu.get("event loops", 0.0) + cpu.get("supervisor", 0.0),
        "load generator": cpu.get("load generator", 0.0),
        "idle": 1000.0 * cores_used.get("idle", 0.0) / rate,
    }
    spent = cores * 1000.0 / rate
    bound = engine_bare + preprocess
    return {"bound's CPU ms/img": bound, "spent ms/img": spent, "bound/spent": bound / spent, **parts,
            "rest": spent - bound - sum(parts.values())}


def _gap_table(label: str, runs: list[dict[str, Any]], keys: list[tuple[str, int]]) -> list[str]:
    rows = []
    for model, workers in keys:
        gaps = [g for run, size in _measured(runs, model, workers, label) if (g := gap(run, size))]
        if gaps:
            cells = [f"{statistics.median(g[c] for g in gaps):.2f}" for c in GAP_COLUMNS]
            rows.append(f"| {model} | {workers} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [f"Where the machine's time per image went beyond the bound ({label}): the bound's CPU is the "
            "bare engine's share plus one core's preprocessing; spent is cores / images served per "
            "second; the columns after bound/spent add up to spent - bound (ms per image, medians over "
            "runs).", "",
            "| model | workers | " + " | ".join(GAP_COLUMNS) + " |", "|---|---|" + "---|" * len(GAP_COLUMNS),
            *rows, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_repo", type=Path, nargs="?")
    parser.add_argument("--model", action="append", help="model to measure (repeat; default: every model)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--first-pass", type=int, default=0, help="number the passes from here (add runs to a folder)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--images", type=Path, help="a folder of real photos, measured beside 500x375")
    parser.add_argument("--photos-limit", type=int)
    parser.add_argument("--out", type=Path, help="folder for the runs' JSON and summary.md")
    parser.add_argument("--summarize", type=Path, help="only print the summary of a folder of runs")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"),
                        help="only print two folders of runs side by side")
    args = parser.parse_args()
    if args.summarize:
        print(summary(_runs(args.summarize)))
        return
    if args.compare:
        print(compare(*(_runs(folder) for folder in args.compare)))
        return
    if args.model_repo is None or args.out is None:
        parser.error("model_repo and --out are needed to measure")
    models = args.model or ModelRepository(args.model_repo).names()
    workers = [int(w) for w in args.workers.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    for index in range(args.first_pass, args.first_pass + args.passes):
        for model in models:
            for count in workers if index % 2 == 0 else workers[::-1]:
                result = run_server_bench(args.model_repo, model, concurrency=args.concurrency,
                                          rounds=args.rounds, window_s=args.window_s, images=args.images,
                                          photos_limit=args.photos_limit, workers=count)
                path = args.out / f"{model}-w{count}-{index}.json"
                path.write_text(json.dumps(as_dict(result), indent=2) + "\n")
                first = result.sizes[0]
                print(f"pass {index} {model} workers {count}: engine {result.engine_img_s:.1f}, "
                      f"bound {first.bound_img_s:.1f}, e2e {first.e2e_img_s:.1f} img/s, "
                      f"e2e/bound {first.ratio:.2f} ({first.label})", flush=True)
    summary_text = summary(_runs(args.out))
    (args.out / "summary.md").write_text(summary_text + "\n")
    print(summary_text)


if __name__ == "__main__":
    main()
