"""Stacked per-request stage times from ``resserve bench server --json`` files, side by side.

    python loadtests/plot_stages.py OUT.png LABEL=FILE.json [LABEL=FILE.json ...] [--size 500x375]

Each bar is one run at one image size: the server's mean milliseconds per request in each stage
(from its /metrics over the measured windows), with the rest of the request time on top.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STAGES = ("preprocess_wait", "decode", "preprocess", "queue", "inference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+", help="LABEL=FILE.json")
    parser.add_argument("--size", default="500x375")
    args = parser.parse_args()
    wanted = [int(v) for v in args.size.split("x")]
    labels, rows = [], []
    for run in args.runs:
        label, path = run.split("=", 1)
        doc = json.loads(Path(path).read_text())
        size = next(s for s in doc["sizes"] if list(s["image_size"]) == wanted)
        stages = [size["server_stage_ms"].get(stage, 0.0) for stage in STAGES]
        rest = max(size["server_request_ms"] - sum(stages), 0.0)
        labels.append(f"{label}\n{size['e2e_img_s']:.0f} img/s")
        rows.append([*stages, rest])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5), dpi=110)
    bottoms = [0.0] * len(rows)
    for index, name in enumerate((*STAGES, "HTTP and the rest")):
        values = [row[index] for row in rows]
        ax.bar(labels, values, bottom=bottoms, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_ylabel("mean ms per request (server side)")
    ax.set_title(f"Where a request's time goes, {args.size} JPEGs, 16 clients", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
