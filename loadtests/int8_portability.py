"""Does a built int8 (or bf16) model give the same answers on every CPU? Logits on real photos, run
natively or under an emulated CPU, compared with the fp32 reference; and the speed of each setting.

    # the fp32 reference's logits, natively
    python loadtests/int8_portability.py logits model_repo resnet50 --images DIR --out ref.npz
    # a variant natively, then on an emulated AVX2-only CPU (qemu-user), with each kernel setting
    python loadtests/int8_portability.py logits model_repo resnet50-int8-onnxruntime --images DIR --out native.npz
    qemu-x86_64 -cpu EPYC-Milan .venv/bin/python loadtests/int8_portability.py logits model_repo \\
        resnet50-int8-onnxruntime --images DIR --exact-kernels off --out avx2-off.npz
    python loadtests/int8_portability.py compare ref.npz native.npz avx2-off.npz   # a Markdown table
    python loadtests/int8_portability.py speed model_repo resnet50-int8-onnxruntime --exact-kernels on
    # other quantization settings as remedies: built from the model's fp32 reference, calibrated as
    # the repository builds it, then measured with --onnx like the variant itself
    python loadtests/int8_portability.py quantize model_repo resnet50-int8-onnxruntime --remedy u8u8 --out u8u8.onnx
    python loadtests/int8_portability.py logits model_repo resnet50-int8-onnxruntime --onnx u8u8.onnx ...

Each logits file records the instruction-set class the engine saw (CPUID, so an emulated CPU
reports itself) and what ran (``Engine.runtime()``). Emulated timings mean nothing: ``speed``
is for the native CPU only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from resserve.agreement import agreement
from resserve.builder.calibration import image_files
from resserve.config import OnnxRuntimeConfig
from resserve.engines.base import Engine
from resserve.engines.hardware import isa_class
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.preprocess import DecodeOptions, normalize_pixels, preprocess
from resserve.repository import ModelRepository, ModelVersion
from resserve.serving.manager import serving_engine


REMEDIES = {
    "reduce_range": {"reduce_range": True},
    "u8u8": {"activation_type": "u8", "weight_type": "u8"},
    "s8s8_symmetric": {"activation_type": "s8", "weight_type": "s8", "symmetric": True},
}


def _engine(version: ModelVersion, onnx: Path | None, exact_kernels: str | None) -> Engine:
    """What the server runs for ``version``, or ONNX Runtime on another file with the same contract."""
    if onnx is None:
        return serving_engine(version)
    engine = OnnxRuntimeEngine(onnx, "cpu", int8_exact_kernels=exact_kernels or "auto")  # type: ignore[arg-type]
    engine.load()
    return engine


def quantize(args: argparse.Namespace) -> None:
    from resserve.builder.calibration import load_batch
    from resserve.builder.ort_quant import quantize_int8

    version = ModelRepository(args.repo).version(args.model)
    calibration = load_batch(version.contract, version.config.calibration.count)
    quantize_int8(version.reference, args.out, calibration, **REMEDIES[args.remedy])  # type: ignore[arg-type]
    print(json.dumps({"model": args.model, "remedy": args.remedy, "out": str(args.out)}))


def _version(repo: Path, name: str, exact_kernels: str | None) -> ModelVersion:
    version = ModelRepository(repo).version(name)
    if exact_kernels is not None:
        config = version.config.model_copy(update={"onnxruntime": OnnxRuntimeConfig(int8_exact_kernels=exact_kernels)})
        version = ModelVersion(config, version.folder, version.version, version.metadata, version.variant)
    return version


def logits(args: argparse.Namespace) -> None:
    version = _version(args.repo, args.model, args.exact_kernels)
    files = image_files(args.images)[: args.limit]
    pixels = np.stack([preprocess(p.read_bytes(), version.contract, DecodeOptions(uint8_pixels=True)) for p in files])
    engine = _engine(version, args.onnx, args.exact_kernels)
    feed_pixels = engine.input_spec.dtype == np.uint8
    started = time.perf_counter()
    out = []
    for i in range(0, len(pixels), args.batch):
        crops = pixels[i : i + args.batch]
        out.append(engine.infer(crops if feed_pixels else normalize_pixels(crops, version.contract)))
    seconds = time.perf_counter() - started
    meta = {"model": args.model, "onnx": str(args.onnx) if args.onnx else None, "isa": isa_class(), "runtime": engine.runtime(), "images": len(files),
            "exact_kernels": args.exact_kernels, "seconds": round(seconds, 1)}
    np.savez_compressed(args.out, logits=np.concatenate(out).astype(np.float32), meta=np.array(json.dumps(meta)))
    print(json.dumps(meta))


def compare(args: argparse.Namespace) -> None:
    with np.load(args.reference, allow_pickle=False) as data:
        reference = data["logits"]
    rows = []
    print("| run | ISA class | engine | int8 kernels | images | top-1 agreement | top-5 | mean cosine | min cosine |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.runs:
        with np.load(path, allow_pickle=False) as data:
            out, meta = data["logits"], json.loads(str(data["meta"]))
        top1, top5, cosine = agreement(reference[: len(out)], out)
        runtime = meta["runtime"]
        rows.append({"run": Path(path).stem, **meta, "top1": top1, "top5": top5, "cosine_mean": float(cosine.mean()),
                     "cosine_min": float(cosine.min())})
        print(f"| {Path(path).stem} | {meta['isa']} | {runtime['engine']} {runtime.get('engine_version') or ''} | "
              f"{runtime.get('int8_kernels') or runtime.get('inference_precision') or '-'} | {len(out)} | "
              f"{top1:.2%} | {top5:.2%} | {cosine.mean():.5f} | {cosine.min():.5f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def speed(args: argparse.Namespace) -> None:
    version = _version(args.repo, args.model, args.exact_kernels)
    engine = _engine(version, args.onnx, args.exact_kernels)
    batch = engine.input_spec.example(args.batch)
    engine.infer(batch)
    rounds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        engine.infer(batch)
        rounds.append((time.perf_counter() - started) * 1000 / args.batch)
    print(json.dumps({"model": args.model, "onnx": str(args.onnx) if args.onnx else None, "isa": isa_class(),
                      "runtime": engine.runtime(), "batch": args.batch,
                      "ms_per_image_median": round(float(np.median(rounds)), 2),
                      "ms_per_image_each": [round(r, 2) for r in rounds]}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("logits", "speed"):
        p = sub.add_parser(name)
        p.add_argument("repo", type=Path)
        p.add_argument("model")
        p.add_argument("--exact-kernels", choices=["auto", "on", "off"], default=None,
                       help="override onnxruntime.int8_exact_kernels (default: the model's config)")
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--onnx", type=Path, default=None, help="run this ONNX file instead (the model's contract)")
    logits_parser = sub.choices["logits"]
    logits_parser.add_argument("--images", type=Path, required=True)
    logits_parser.add_argument("--limit", type=int, default=None)
    logits_parser.add_argument("--out", type=Path, required=True)
    sub.choices["speed"].add_argument("--rounds", type=int, default=20)
    q = sub.add_parser("quantize")
    q.add_argument("repo", type=Path)
    q.add_argument("model")
    q.add_argument("--remedy", choices=sorted(REMEDIES), required=True)
    q.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("reference", type=Path)
    c.add_argument("runs", nargs="+", type=Path)
    c.add_argument("--json", type=Path, default=None, help="also write the rows, with each run's metadata")
    args = parser.parse_args(argv)
    {"logits": logits, "compare": compare, "speed": speed, "quantize": quantize}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
