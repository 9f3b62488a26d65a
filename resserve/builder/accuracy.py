"""Accuracy of a reduced-precision variant against its fp32 reference, on held-out images.

Top-1 and top-5 agreement (does the variant pick the reference's class, is the reference's
class in the variant's top 5) and the mean cosine similarity of the logit vectors. The report
(:class:`resserve.metadata.AccuracyReport`) is written next to the artifact as ``accuracy.json``
and shown by ``resserve describe``; a build below the floor fails with the report in the message.
"""

from __future__ import annotations

import numpy as np

from resserve.agreement import agreement
from resserve.engines.base import Engine
from resserve.metadata import AccuracyReport, RuntimeRecord


def run_batched(engine: Engine, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Outputs for ``images`` in batches the engine accepts."""
    return np.concatenate([engine.infer(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def compare(reference: Engine, candidate: Engine, images: np.ndarray, *, variant: str, reference_name: str,
            method: str, batch_size: int = 16) -> AccuracyReport:
    """Run both engines on ``images`` and report their agreement."""
    return report_of(run_batched(reference, images, batch_size), run_batched(candidate, images, batch_size),
                     candidate, variant=variant, reference_name=reference_name, method=method)


def report_of(ref: np.ndarray, out: np.ndarray, candidate: Engine, *, variant: str, reference_name: str,
              method: str) -> AccuracyReport:
    """The agreement of logits ``out`` with ``ref``, and what ``candidate`` ran them on."""
    top1, top5, cosine = agreement(ref, out)
    return AccuracyReport(variant=variant, reference=reference_name, images=len(ref), top1_agreement=top1,
                          top5_agreement=top5, cosine_mean=float(cosine.mean()), cosine_min=float(cosine.min()),
                          method=method, measured_on=RuntimeRecord.model_validate(candidate.runtime()))
