"""Measure the per-request costs that ``scaling_model.py`` takes, on this machine, and run the model.

    python loadtests/scaling_costs.py model_repo --model resnet50-int8 \
        --images ../shared/data/imagenet-sample-300 --out loadtests/reports/<date>-scaling

- **loop_ms**: the server's CPU per request when nothing else costs anything: a tiny classifier
  (one 3x3 conv on a 32x32 crop) served by ``resserve serve``, tiny JPEGs, 16 closed-loop clients.
  Decode and inference then cost microseconds, so the server's CPU per request is what holds
  its GIL: HTTP, routing, the pipeline's Python, hand-offs to the pools and the batcher, the
  answer. Read from /proc per thread group (event loop, preprocessing, engine) over the window.
- **decode_ms_per_mp**: the served model's decode + preprocess on one core, per megapixel of the
  photos (or of synthetic 500x375 JPEGs without ``--images``); ``image_mp`` is their mean size.
- **engine_img_s_per_core**: every engine instance of the served model at once, as served, divided
  by the cores.

Writes ``costs.json`` and ``scaling.json`` (the model's outcomes) to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from resserve.perf.bench_engine import environment
from resserve.perf.server_process import server_process
from resserve.engines.hardware import available_cores
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import Payload, load_folder
from resserve.perf.server_bench import ServedEngines, closed_window, preprocess_seconds
from resserve.repository import ModelRepository
from resserve.synthetic import synthetic_jpegs

HERE = Path(__file__).parent
TINY_SIDE = 32


def tiny_model_repo(folder: Path) -> Path:
    """A one-model repository whose inference costs microseconds: conv 3x3 -> pool -> 1000 logits."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w", (8, 3, 3, 3)), ("fc", (1000, 8)))]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], strides=[4, 4]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["N", 3, TINY_SIDE, TINY_SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    (folder / "tiny").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "tiny.onnx"))
    config = {"source": {"onnx": str(folder / "tiny.onnx")}, "max_batch_size": 16, "instance_count": 1,
              "intra_op_threads": 1, "dynamic_batching": {"max_queue_delay_ms": 1, "max_queue_size": 256},
              "preprocess": {"resize_size": TINY_SIDE, "crop_size": TINY_SIDE}, "fast_jpeg_decode": True,
              "fast_preprocess": True}
    (folder / "tiny" / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


async def _loop_window(url: str, pid: int, concurrency: int, warmup_s: float, window_s: float) -> dict[str, Any]:
    bodies = synthetic_jpegs(8, ((48, 36),))
    payloads = [Payload(f"{i}.jpg", body, "image/jpeg", 48, 36) for i, body in enumerate(bodies)]
    async with LoadGenerator(f"{url}/v2/models/tiny/classify", payloads, max_outstanding=concurrency + 1) as generator:
        window = await closed_window(generator, f"{url}/metrics", "tiny", concurrency, warmup_s, window_s, pid)
    used = window.cpu_s
    server_groups = {g: v for g, v in used.items() if g not in ("load generator", "idle")}
    return {"requests_s": window.img_s, "served": window.served,
            "server_cpu_ms_per_request": 1000 * sum(server_groups.values()) / window.served,
            "cpu_ms_per_request": {g: 1000 * v / window.served for g, v in used.items() if g != "idle"},
            "cores": {g: v / window.seconds for g, v in used.items()}}


def loop_cost(workers: int, concurrency: int, rounds: int, window_s: float) -> dict[str, Any]:
    """Server CPU per request on the tiny model: ``rounds`` windows, the median taken."""
    with tempfile.TemporaryDirectory(prefix="resserve-tiny-") as folder:
        repo = tiny_model_repo(Path(folder))
        with server_process(repo, "--model", "tiny", "--workers", str(workers), log_level="warning",
                            env={"RESSERVE_ACCESS_LOG": "true"}) as server:
            windows = [asyncio.run(_loop_window(server.url, server.process.pid, concurrency, 2.0, window_s))
                       for _ in range(rounds)]
    return {"workers": workers, "windows": windows,
            "server_cpu_ms_per_request": statistics.median(w["server_cpu_ms_per_request"] for w in windows),
            "event_loop_ms_per_request": statistics.median(w["cpu_ms_per_request"].get("event loops", 0.0)
                                                           for w in windows),
            "requests_s": statistics.median(w["requests_s"] for w in windows)}


def decode_cost(model_repo: Path, model: str, images: Path | None) -> dict[str, Any]:
    version = ModelRepository(model_repo).version(model)
    pixels = version.config.uint8_input
    if images:
        payloads = load_folder(images)
        label = f"photos: {images.name} ({len(payloads)})"
    else:
        payloads = [Payload(f"{i}.jpg", b, "image/jpeg", 500, 375) for i, b in enumerate(synthetic_jpegs(16, ((500, 375),)))]
        label = "synthetic 500x375"
    mp = statistics.fmean(p.width * p.height for p in payloads) / 1e6
    seconds = [preprocess_seconds([p.body for p in payloads], version, 3.0, pixels) for _ in range(3)]
    ms = 1000 * statistics.median(seconds)
    return {"images": label, "image_mp": mp, "ms_per_image": ms, "ms_per_mp": ms / mp, "rounds_ms": [1000 * s for s in seconds]}


def engine_cost(model_repo: Path, model: str) -> dict[str, Any]:
    version = ModelRepository(model_repo).version(model)
    config = version.config
    batch = min(max(config.dynamic_batching.preferred_batch_sizes or [config.max_batch_size]), config.max_batch_size)
    engines = ServedEngines(version, batch)
    try:
        rates = [engines.rate(3.0) for _ in range(3)]
    finally:
        engines.close()
    cores = available_cores()
    return {"batch": batch, "instances": config.instance_count, "img_s_rounds": rates, "cores": cores,
            "img_s_per_core": statistics.median(rates) / cores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_repo", type=Path)
    parser.add_argument("--model", default="resnet50-int8")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=6.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    loops = [loop_cost(w, args.concurrency, args.rounds, args.window_s) for w in (1, 2)]
    for loop in loops:
        print(f"tiny model, {loop['workers']} worker(s): {loop['requests_s']:.0f} requests/s, server CPU "
              f"{loop['server_cpu_ms_per_request']:.2f} ms/request (event loops {loop['event_loop_ms_per_request']:.2f})",
              flush=True)
    decode = decode_cost(args.model_repo, args.model, args.images)
    print(f"decode + preprocess ({decode['images']}, {decode['image_mp']:.3f} MP): {decode['ms_per_image']:.2f} ms "
          f"= {decode['ms_per_mp']:.2f} ms/MP", flush=True)
    engine = engine_cost(args.model_repo, args.model)
    print(f"{args.model} engine: {engine['img_s_per_core']:.1f} img/s per core", flush=True)
    costs = {"loop_ms": loops[0]["server_cpu_ms_per_request"], "decode_ms_per_mp": decode["ms_per_mp"],
             "image_mp": decode["image_mp"], "engine_img_s_per_core": engine["img_s_per_core"],
             "measured_on": f"{environment().get('cpu', '')}; {args.model}; {decode['images']}"}
    (args.out / "costs.json").write_text(json.dumps(costs, indent=2) + "\n")
    (args.out / "measurements.json").write_text(json.dumps(
        {"environment": environment(), "model": args.model, "loop": loops, "decode": decode, "engine": engine},
        indent=2) + "\n")
    subprocess.run([sys.executable, str(HERE / "scaling_model.py"), "--costs", str(args.out / "costs.json"),
                    "--json", str(args.out / "scaling.json")], check=True)


if __name__ == "__main__":
    main()
