"""Before a model turns ready: does this CPU still give the answers its accuracy report promised?

A reduced-precision model's report is measured where it was built. Another instruction-set class
can answer differently (ONNX Runtime's u8 x s8 kernels saturate on AVX2 and not on VNNI; bf16 is
native on some CPUs only), so a model whose report names another class runs the held-out images
stored with it (:class:`resserve.agreement.CheckSet`) and fails to load, with the arithmetic as
the reason, when the estimate falls under its floor. Same class: nothing to check.
"""

from __future__ import annotations

import logging

import numpy as np

from resserve.agreement import CheckSet, LoadCheck, check_here
from resserve.engines.base import Engine
from resserve.errors import AccuracyError
from resserve.preprocess import normalize_pixels
from resserve.repository import ModelVersion

log = logging.getLogger(__name__)


def load_check(model_version: ModelVersion, engine: Engine) -> LoadCheck | None:
    """Run the check where the config and the report call for it; AccuracyError when it fails.

    None when there is nothing to check: the fp32 reference, ``load_check: off``, or a report
    measured on this instruction-set class (``auto``)."""
    config = model_version.config
    mode = config.calibration.load_check
    report = model_version.accuracy
    if report is None or mode == "off":
        return None
    here = str(engine.runtime()["isa"])  # a CPU's class, or a GPU's for TensorRT
    built_on = report.measured_on.isa if report.measured_on else None
    if mode == "auto" and built_on == here:
        return None
    try:
        check = CheckSet.read(model_version.folder)
    except ValueError as exc:
        raise AccuracyError(f"model {config.name}: {exc}") from exc
    if check is None:
        if built_on is None and mode == "auto":  # an older build: nothing recorded to compare with
            log.warning("model %s: its accuracy report does not say which CPU measured it and no check images "
                        "are stored; rebuild it to have it checked here (%s)", config.name, here)
            return None
        raise AccuracyError(f"model {config.name}: its accuracy report was measured on {built_on or 'another CPU'} "
                            f"and this CPU is {here}, but no check images are stored with it; rebuild it here "
                            "(resserve build --force) or set calibration.check_images")
    try:
        logits = _run(engine, check, model_version)
        result = check_here(check, logits, report_top1=report.top1_agreement,
                            floor=config.calibration.min_top1_agreement, built_on=built_on, isa_here=here)
    except (OSError, ValueError) as exc:  # a corrupt stored image, logits of another shape
        raise AccuracyError(f"model {config.name}: its check images are unusable ({exc}); rebuild the model "
                            "(resserve build --force)") from exc
    if not result.passed:
        log.error("model %s fails its load-time check: %s", config.name, result.summary())
        # Verdict first: the repository index and readiness keep the first 240 characters.
        raise AccuracyError(f"model {config.name} would serve under its accuracy floor on this CPU: top-1 "
                            f"agreement at worst {result.worst_top1:.2%} < floor {result.floor:.2%} (report measured "
                            f"on {built_on or 'an unrecorded CPU'}, running on {here}; {result.images - round(result.agree_with_build * result.images)} "
                            f"of {result.images} stored answers changed); rebuild it on this CPU or serve it elsewhere")
    log.info("model %s: load-time check passed: %s", config.name, result.summary())
    return result


def _run(engine: Engine, check: CheckSet, model_version: ModelVersion) -> np.ndarray:
    """The engine's logits on the stored crops, fed as it takes them (uint8 pixels or tensors)."""
    pixel_input = engine.input_spec.dtype == np.uint8
    step = max(1, min(16, model_version.config.max_batch_size))
    pixels = check.pixels  # decoded once
    out = []
    for start in range(0, len(pixels), step):
        crops = pixels[start : start + step]
        out.append(engine.infer(crops if pixel_input else normalize_pixels(crops, model_version.contract)))
    return np.concatenate(out).astype(np.float32)
