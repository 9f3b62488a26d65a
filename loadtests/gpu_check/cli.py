"""The flags, and the two kinds of run: the parent (wheels, the environment, each stage in a child of
its own within the budget, the tables, the JSON) and a child (``--stage NAME``: one stage)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from . import DESCRIPTION, ROOT
from .stages import CHILDREN, ENV_LIMIT_S, STAGES, skip_reason, stage_run
from .supervisor import child_env, run_child
from .table import RIGHT_ALIGNED, TABLE_COLUMNS, env_rows, table_rows, text_table
from .wheels import install_wheels


def parent(args: argparse.Namespace) -> int:
    started, wall = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = args.json or Path(os.environ.get("OUT") or ".") / "gpu-check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    forwarded = ["--concurrency", str(args.concurrency), "--window-s", str(args.window_s), "--workers",
                 str(args.workers), "--rounds", str(args.rounds), "--round-s", str(args.round_s)]
    with out.with_suffix(".log").open("w") as log:
        print(f"gpu check: {', '.join(stages)} within {args.budget_s:.0f} s", flush=True)
        wheels = install_wheels(args.wheels, log)
        env_vars = child_env(wheels.get("site"))
        env = run_child("env", ENV_LIMIT_S, forwarded, env_vars, log)
        print("\nenvironment\n" + text_table(("item", "value"), env_rows(env, wheels)), flush=True)
        done: list[dict[str, Any]] = []
        for stage in stages:
            limit, _, _ = STAGES[stage]
            remaining = args.budget_s - (time.monotonic() - started)
            reason = skip_reason(stage, env, remaining, wheels)
            if reason:
                done.append({"name": stage, "status": "skipped", "reason": reason})
                print(f"{stage}: skipped: {reason}", flush=True)
                continue
            print(f"{stage}: running (limit {min(limit, remaining):.0f} s)", flush=True)
            result = run_child(stage, min(limit, remaining), forwarded, env_vars, log)
            done.append({"name": stage, **result})
            print(f"{stage}: {result['status']} in {result['seconds']} s", flush=True)
    report = {"started": wall, "seconds": round(time.monotonic() - started, 1), "budget_s": args.budget_s,
              "wheels": wheels, "environment": env, "stages": done,
              "table": [r for s in done for r in s.get("rows", [])]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ngpu check results ({report['seconds']} s)\n"
          + text_table(TABLE_COLUMNS, table_rows(done), right=RIGHT_ALIGNED), flush=True)
    print(f"\nwrote {out} and {out.with_suffix('.log')}", flush=True)
    return 1 if any(s["status"] in ("failed", "timeout") for s in done) else 0


def child(args: argparse.Namespace) -> int:
    """Run one stage, saving its result as it goes, so a stage stopped at its limit keeps its rows."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result: dict[str, Any] = {}

    def save() -> None:
        args.result.write_text(json.dumps(result, indent=2, default=str))

    try:
        stage_run(args.stage)(result, save, args)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        first = str(exc).strip().splitlines()[:1]
        result.update(status="failed", reason=f"{type(exc).__name__}: {first[0] if first else ''}")
    save()
    return 1 if result.get("status") == "failed" else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu_check", description=DESCRIPTION)
    parser.add_argument("--wheels", type=Path, default=ROOT / "gpu-wheels", help="wheels to install where missing")
    parser.add_argument("--json", type=Path, help="results file (default: $OUT/gpu-check.json, else ./)")
    parser.add_argument("--budget-s", type=float, default=460.0,
                        help="the whole check, wheels and stages included (each stage also has its own limit)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {','.join(STAGES)}")
    parser.add_argument("--concurrency", type=int, default=64, help="server stage: closed-loop clients")
    parser.add_argument("--window-s", type=float, default=5.0, help="server stage: seconds per measured window")
    parser.add_argument("--workers", default="auto,4",
                        help="server stage: one run per comma-separated --workers value")
    parser.add_argument("--rounds", type=int, default=3, help="engine stage: interleaved rounds")
    parser.add_argument("--round-s", type=float, default=0.25, help="engine stage: seconds per batch size per round")
    parser.add_argument("--stage", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage-budget-s", type=float, default=60.0, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return child(args) if args.stage else parent(args)

