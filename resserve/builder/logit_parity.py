"""Numerical parity between two implementations of one model: the check every rewrite must pass.

The measure is ``max |ref - out| / max |ref|`` over a batch, plus identical top-5 per row. A swap
inside the top 5 is accepted only where the reference itself cannot tell the two classes apart
(their logits are closer than the tolerance), since then either order is correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resserve.errors import ParityError

DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class ParityResult:
    """One comparison's figures, kept for reports and metadata."""

    name: str
    relative_max_diff: float
    top5_equal: bool

    def as_dict(self) -> dict[str, float]:
        return {f"{self.name}.rel_max_diff": self.relative_max_diff}


def relative_max_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |a - b| / max |a| in float64."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.abs(ref - np.asarray(candidate, dtype=np.float64)).max()
    return float(diff / max(np.abs(ref).max(), 1e-12))


def top5_agree(reference: np.ndarray, candidate: np.ndarray, atol: float) -> bool:
    """Same top-5 classes in the same order per row, ties within ``atol`` excepted.

    Only (batch, classes) outputs have classes to rank; other shapes agree trivially.
    """
    if reference.ndim != 2 or reference.shape[1] < 2:
        return True
    k = min(5, reference.shape[1])
    for ref_row, cand_row in zip(reference, candidate, strict=True):
        ref_top = np.argsort(-ref_row, kind="stable")[:k]
        cand_top = np.argsort(-cand_row, kind="stable")[:k]
        for r, c in zip(ref_top, cand_top, strict=True):
            if r != c and abs(float(ref_row[r]) - float(ref_row[c])) > atol:
                return False
    return True


def compare_logits(
    name: str, reference: np.ndarray, candidate: np.ndarray, rtol: float = DEFAULT_RTOL
) -> ParityResult:
    """Raise :class:`ParityError` unless ``candidate`` matches ``reference`` within ``rtol``."""
    if reference.shape != candidate.shape:
        raise ParityError(f"{name}: output shapes differ, {reference.shape} vs {candidate.shape}")
    rel = relative_max_diff(reference, candidate)
    atol = rtol * float(np.abs(reference).max())
    top5 = top5_agree(reference, candidate, atol)
    if not np.isfinite(rel) or rel > rtol:
        raise ParityError(f"{name}: max |diff| / max |logit| = {rel:.3g} exceeds {rtol:g}")
    if not top5:
        raise ParityError(f"{name}: top-5 classes differ although logits are within {rtol:g}")
    return ParityResult(name, rel, top5)
