"""Build each variant from the folded fp32 reference, then measure it against that reference.

Every version folder holds the folded fp32 ``model.onnx`` (the reference every variant is built
from and measured against) plus, for other variants, the engine's own artifact (at the path
:class:`resserve.engines.factory.Variant` names) and an ``accuracy.json`` comparing it with the
reference on held-out images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from resserve.agreement import CheckSet, decode_crops, encode_crops
from resserve.builder.accuracy import report_of, run_batched
from resserve.builder.calibration import held_out_pixels, load_batch
from resserve.config import ModelConfig
from resserve.contract import PreprocessContract
from resserve.engines.base import Engine
from resserve.engine_registry import engine_spec, resolve
from resserve.engines.factory import REFERENCE, Variant, open_engine
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.metadata import AccuracyReport
from resserve.preprocess import normalize_pixels

log = logging.getLogger(__name__)


def compile_variant(variant: Variant, config: ModelConfig, folder: Path, contract: PreprocessContract,
                    calibration_dir: Path | None, cache_dir: Path | None = None) -> AccuracyReport | None:
    """Build ``variant`` from ``folder/model.onnx``; returns its accuracy report (None for the reference).
    ``cache_dir``: the model's engine caches that outlive the staging folder (TensorRT)."""
    if variant.is_reference:
        return None
    cal = config.calibration
    calibration_count = cal.count if variant.needs_calibration else 1
    calibration = load_batch(contract, calibration_count, folder=calibration_dir)
    held_out = held_out_pixels(contract, cal.held_out, calibration_dir, calibration_count)
    target = variant.artifact(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    spec = engine_spec(variant.engine)
    if spec.compiler is not None:  # the torch engine's artifact (its weights) is written by the exporter
        measured = resolve(spec.compiler)(variant, config, folder, calibration if variant.needs_calibration else None,
                                          cache_dir)
        if measured is False:
            return None
    return measure_accuracy(variant, config, folder, held_out, contract)


def measure_accuracy(variant: Variant, config: ModelConfig, folder: Path, held_out: np.ndarray,
                     contract: PreprocessContract) -> AccuracyReport:
    """Agreement of the built variant with the fp32 reference on held-out images (uint8 crops); enforce
    the floor. The first ``calibration.check_images`` of them, with both models' logits, are stored
    as the load-time check set."""
    reference = OnnxRuntimeEngine(folder / REFERENCE, "cpu")
    reference.load()
    candidate = open_engine(variant, config, folder)
    try:
        images = f"{config.calibration.images}" if config.calibration.images else "generated image-like placeholders"
        tensors = normalize_pixels(held_out, contract)
        ref, out = run_batched(reference, tensors), run_batched(candidate, tensors)
        report = report_of(ref, out, candidate, variant=f"{config.name} ({variant.name})",
                           reference_name="onnxruntime-fp32", method=f"held-out images: {images}")
        report.write(folder)
        if config.calibration.check_images:
            _store_check_set(held_out[: config.calibration.check_images], reference, candidate, contract, folder)
    finally:
        candidate.close()
        reference.close()
    log.info("%s", report.summary())
    report.check(config.calibration.min_top1_agreement)
    return report


def _store_check_set(crops: np.ndarray, reference: Engine, candidate: Engine, contract: PreprocessContract,
                     folder: Path) -> None:
    """A few held-out crops as stored (JPEG), with both models' logits on the stored pixels."""
    jpegs = encode_crops(crops)
    tensors = normalize_pixels(decode_crops(jpegs), contract)
    check = CheckSet(jpegs, run_batched(reference, tensors), run_batched(candidate, tensors))
    size = check.write(folder).stat().st_size
    log.info("stored %d held-out images for the load-time check on other CPUs (%d kB)", len(jpegs), size // 1024)
