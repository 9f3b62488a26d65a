"""Accuracy of a reduced-precision variant against its fp32 reference, on held-out images.

Top-1 and top-5 agreement (does the variant pick the reference's class, is the reference's
class in the variant's top 5) and the mean cosine similarity of the logit vectors. The report
(:class:`resserve.metadata.AccuracyReport`) is written next to the artifact as ``accuracy.json``
and shown by ``resserve describe``; a build below the floor fails with the report in the message.
"""

from __future__ import annotations

import numpy as np

from resserve.engines.base import Engine
from resserve.metadata import AccuracyReport


def agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Top-1 agreement, top-5 agreement (reference top-1 in candidate top-5), per-row cosine."""
    ref_top1 = reference.argmax(axis=1)
    top1 = float(np.mean(candidate.argmax(axis=1) == ref_top1))
    k = min(5, candidate.shape[1])
    cand_top5 = np.argpartition(-candidate, k - 1, axis=1)[:, :k]
    top5 = float(np.mean([r in row for r, row in zip(ref_top1, cand_top5, strict=True)]))
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return top1, top5, cosine


def run_batched(engine: Engine, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Outputs for ``images`` in batches the engine accepts."""
    return np.concatenate([engine.infer(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def compare(reference: Engine, candidate: Engine, images: np.ndarray, *, variant: str, reference_name: str,
            method: str, batch_size: int = 16) -> AccuracyReport:
    """Run both engines on ``images`` and report their agreement."""
    ref = run_batched(reference, images, batch_size)
    out = run_batched(candidate, images, batch_size)
    top1, top5, cosine = agreement(ref, out)
    return AccuracyReport(variant=variant, reference=reference_name, images=len(images), top1_agreement=top1,
                          top5_agreement=top5, cosine_mean=float(cosine.mean()), cosine_min=float(cosine.min()),
                          method=method)
