"""Does ``resserve optimize`` make a converter's graph faster in ONNX Runtime? Source vs optimized.

    python loadtests/optimize_speed.py --arch resnet50 --json out.json [--graph other.onnx ...]

``--arch`` builds a full-size ResNet in the pattern of a third-party re-export through PyTorch
(:func:`channels_last`: every Conv between NHWC<->NCHW permutes, BatchNorm as explicit
``(x - mean) * scale + beta`` arithmetic in NHWC, float->float casts), exports it with the
TorchScript exporter, and optimizes it; ``--graph`` adds ONNX files from other converters. Each
graph and its optimized copy run in ONNX Runtime with default session options (so ORT's own
fusions apply to both), CPUExecutionProvider, ``--threads`` intra-op threads, interleaved
(A B B A ...), and the median per batch size is reported, with the op counts of each graph and
of what ORT's BASIC level would save with ``optimized_model_filepath``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from resserve.builder.onnx_fold import optimize_onnx
from resserve.builder.onnx_fold.fold_parity import _input_shape
from resserve.models.resnet import build_resnet
from resserve.models.random_init import randomize


class _ConvNHWC(nn.Module):
    """NHWC in and out: permute, the Conv without its bias, permute back, the bias as an Add."""

    def __init__(self, conv: nn.Conv2d, bias: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).float() + self.bias


class _AffineNHWC(nn.Module):
    """An eval-mode BatchNorm2d as constant (C,) arithmetic on the last axis, casts around it."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        for name, value in (("mean", bn.running_mean), ("scale", scale), ("beta", bn.bias.detach())):
            self.register_buffer(name, value.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) * self.scale + self.beta).float().float()


class _PoolNHWC(nn.Module):
    """An NCHW-only pooling op between permutes."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class _MeanNHWC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2), keepdim=True)


class _FromNCHW(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 2, 3, 1))


def channels_last(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of a torchvision-style ResNet computing in NHWC the way converters write it.

    Conv2d, BatchNorm2d, MaxPool2d and AdaptiveAvgPool2d children are swapped for NHWC modules
    (each Conv gets a small seeded bias, as a converted framework's conv has); the forward code,
    ReLUs and residual adds are the model's own. Input stays NCHW, as in the issue's graph.
    """
    gen = torch.Generator().manual_seed(seed)
    body = copy.deepcopy(model).eval()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                bias = torch.randn(child.out_channels, generator=gen) * 0.05
                if child.bias is not None:
                    bias += child.bias.detach()
                child.bias = None
                setattr(parent, name, _ConvNHWC(child, bias))
            elif isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, _AffineNHWC(child))
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, _PoolNHWC(child))
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, _MeanNHWC())
            else:
                swap(child)

    swap(body)
    return _FromNCHW(body).eval()


def export_channels_last(arch: str, path: Path, *, image_size: int = 224, seed: int = 0,
                         num_classes: int = 1000) -> nn.Module:
    """Export :func:`channels_last` of a seeded random ``arch`` (TorchScript exporter, opset 17)."""
    model = build_resnet(arch, num_classes)
    randomize(model, seed, image_size=min(image_size, 64))
    wrapped = channels_last(model, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (torch.randn(1, 3, image_size, image_size),), str(path),
                          input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return wrapped


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def ort_basic_ops(path: Path) -> dict[str, object]:
    """What ORT's BASIC level saves: its op counts and the opset domains it declares."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "basic.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        saved = onnx.load(options.optimized_model_filepath)
    return {"ops": _ops(saved), "opset_domains": sorted(o.domain or "ai.onnx" for o in saved.opset_import)}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()  # default graph optimization level (all), as a server runs it
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_pair(source: Path, optimized: Path, batch: int, threads: int, rounds: int) -> dict[str, float]:
    """Median ms per run of each graph, runs interleaved so drift hits both alike."""
    sessions = {"source": _session(source, threads), "optimized": _session(optimized, threads)}
    value = sessions["source"].get_inputs()[0]
    proto = onnx.helper.make_tensor_value_info(value.name, onnx.TensorProto.FLOAT,
                                               [d if isinstance(d, int) else None for d in value.shape])
    shape = _input_shape(proto)
    shape[0] = batch
    feed = {value.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name in sessions:  # warm-up: first runs allocate
        for _ in range(3):
            sessions[name].run(None, feed)
    for i in range(rounds):
        for name in (("source", "optimized") if i % 2 == 0 else ("optimized", "source")):
            start = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append((time.perf_counter() - start) * 1000)
    source_ms, optimized_ms = (statistics.median(times[n]) for n in ("source", "optimized"))
    spread = {f"{n}_p10_p90_ms": [round(q, 2) for q in np.percentile(times[n], [10, 90])] for n in times}
    return {"batch": batch, "source_ms": round(source_ms, 2), "optimized_ms": round(optimized_ms, 2),
            "speedup": round(source_ms / optimized_ms, 3), "runs_each": rounds} | spread


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measure(graphs: dict[str, Path], out_dir: Path, batches: list[int], threads: int, rounds: int) -> dict:
    """Optimize each graph into ``out_dir`` and time it against its source."""
    results = {}
    for name, source in graphs.items():
        optimized = out_dir / f"{name}.optimized.onnx"
        report = optimize_onnx(source, optimized, require_folded=True)
        results[name] = {
            "source": str(source), "ops_before": report.ops_before, "ops_after": report.ops_after,
            "convs_folded": report.convs_folded, "convs": report.convs,
            "parity_rel_max_diff": report.parity_rel_max_diff, "ort_basic": ort_basic_ops(source),
            "timings": [time_pair(source, optimized, b, threads, rounds) for b in batches],
        }
        print(name, json.dumps(results[name]["timings"]), flush=True)
    return {"cpu": _cpu_name(), "threads": threads, "onnxruntime": ort.__version__, "graphs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", default=[], help="build this ResNet channels-last (repeatable)")
    parser.add_argument("--graph", type=Path, action="append", default=[], help="an ONNX file (repeatable)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40, help="timed runs of each graph per batch size")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        graphs: dict[str, Path] = {}
        for arch in args.arch:
            graphs[f"{arch}_channels_last"] = Path(tmp) / f"{arch}_channels_last.onnx"
            export_channels_last(arch, graphs[f"{arch}_channels_last"])
        graphs |= {path.stem: path for path in args.graph}
        result = measure(graphs, Path(tmp), args.batch or [1, 8], args.threads, args.rounds)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
