"""Where the wall is as the machine grows: a bottleneck model of resserve's throughput, from
per-request costs measured on this machine, for core counts and engines it does not have.

    python loadtests/scaling_model.py --costs loadtests/reports/<date>-scaling/costs.json
    python loadtests/scaling_model.py --loop-ms 1.1 --decode-ms-per-mp 18 --image-mp 0.19 \
        --engine-img-s-per-core 7.5

Each single-image request costs three kinds of work:

- **loop** (``loop_ms``): what holds one process's GIL: HTTP parsing, the pipeline's Python,
  hand-offs to the preprocessing pool and the batcher, the answer. One event loop per process,
  so one process does at most ``1000 / loop_ms`` requests/s, and ``W`` workers ``W`` times that
  (never more loops than cores).
- **decode** (``decode_ms_per_mp x image_mp``): Pillow decode, resize, crop, normalize; it
  releases the GIL and runs on any core, or on the GPU (nvJPEG) at ``gpu_decode_img_s``.
- **engine**: on the CPU, ``1000 / engine_img_s_per_core`` ms of one core per image (batched, so
  per image); or a GPU ``gpu_speedup`` times faster than the whole of this CPU.

Throughput is the smallest of: the loops' cap, the cores' cap (all CPU work shared by the cores),
the GPU engine's cap and the GPU decoder's cap. The model ignores memory bandwidth, batching
delays and the load generator; it says which wall comes first, not the exact figure, and is
re-run when a cost is re-measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import BaseModel, Field


class Costs(BaseModel):
    """Per-request costs, measured on one machine (say which in ``measured_on``)."""

    loop_ms: float = Field(gt=0, description="GIL-held CPU per request (event loop and Python)")
    decode_ms_per_mp: float = Field(gt=0, description="decode + preprocess CPU ms per megapixel, one core")
    image_mp: float = Field(gt=0, description="megapixels per image")
    engine_img_s_per_core: float = Field(gt=0, description="CPU engine images/s per core, as batched")
    gpu_decode_img_s: float = Field(4000.0, gt=0, description="nvJPEG images/s of one GPU (assumed until measured)")
    measured_on: str = ""


class Scenario(BaseModel):
    cores: int = Field(ge=1)
    workers: int = Field(ge=1)
    engine: str  # "cpu" or "gpu"
    gpu_speedup: float = 50.0
    decode: str = "cpu"  # "cpu" or "gpu"


class Outcome(BaseModel):
    scenario: Scenario
    img_s: float
    wall: str
    caps: dict[str, float]


def throughput(costs: Costs, scenario: Scenario, reference_cores: int = 2) -> Outcome:
    """The bottleneck for one scenario; ``reference_cores``: the cores the costs were measured on
    (the GPU is ``gpu_speedup`` times that whole CPU's engine rate)."""
    loops = min(scenario.workers, scenario.cores)
    cpu_ms = costs.loop_ms
    if scenario.decode == "cpu":
        cpu_ms += costs.decode_ms_per_mp * costs.image_mp
    if scenario.engine == "cpu":
        cpu_ms += 1000.0 / costs.engine_img_s_per_core
    caps = {"event loops": loops * 1000.0 / costs.loop_ms, "cores": scenario.cores * 1000.0 / cpu_ms}
    if scenario.engine == "gpu":
        caps["gpu engine"] = scenario.gpu_speedup * costs.engine_img_s_per_core * reference_cores
    if scenario.decode == "gpu":
        caps["gpu decode"] = costs.gpu_decode_img_s
    wall = min(caps, key=lambda k: caps[k])
    return Outcome(scenario=scenario, img_s=caps[wall], wall=wall, caps=caps)


def scenarios(core_counts: tuple[int, ...] = (2, 8, 16, 64)) -> list[Scenario]:
    """Every core count: CPU engine with 1 process and one worker per core; GPU engine with 1
    process, one worker per core, and one worker per core with GPU decode."""
    out = []
    for cores in core_counts:
        out += [Scenario(cores=cores, workers=1, engine="cpu"), Scenario(cores=cores, workers=cores, engine="cpu"),
                Scenario(cores=cores, workers=1, engine="gpu"), Scenario(cores=cores, workers=cores, engine="gpu"),
                Scenario(cores=cores, workers=cores, engine="gpu", decode="gpu")]
    return out


def table(outcomes: list[Outcome]) -> str:
    """Plain text, never truncated (readable when piped)."""
    rows = [("cores", "workers", "engine", "decode", "img/s", "wall", "caps (img/s)")]
    for o in outcomes:
        s = o.scenario
        caps = ", ".join(f"{k} {v:.0f}" for k, v in o.caps.items())
        rows.append((str(s.cores), str(s.workers), s.engine if s.engine == "cpu" else f"gpu x{s.gpu_speedup:g}",
                     s.decode, f"{o.img_s:.0f}", o.wall, caps))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--costs", type=Path, help="a JSON file with the Costs fields")
    parser.add_argument("--loop-ms", type=float)
    parser.add_argument("--decode-ms-per-mp", type=float)
    parser.add_argument("--image-mp", type=float)
    parser.add_argument("--engine-img-s-per-core", type=float)
    parser.add_argument("--reference-cores", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the outcomes as JSON")
    args = parser.parse_args()
    given = json.loads(args.costs.read_text()) if args.costs else {}
    for name in ("loop_ms", "decode_ms_per_mp", "image_mp", "engine_img_s_per_core"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    costs = Costs(**given)
    outcomes = [throughput(costs, s, args.reference_cores) for s in scenarios()]
    print(f"costs: {costs.model_dump_json()}")
    print(table(outcomes))
    if args.json:
        args.json.write_text(json.dumps({"costs": costs.model_dump(), "outcomes": [o.model_dump() for o in outcomes]},
                                        indent=2))


if __name__ == "__main__":
    main()
