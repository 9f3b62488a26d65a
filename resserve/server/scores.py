"""Raw model outputs to what clients read: softmax probabilities and the top-k classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from resserve.serving.manager import ServedModel


def model_scores(served: ServedModel, outputs: np.ndarray) -> np.ndarray:
    """Softmax probabilities of a model's raw outputs, unless the model already ends in softmax."""
    if served.config.softmax_in_model or served.metadata.softmax:
        return outputs.astype(np.float32, copy=False)
    return softmax(outputs)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stability, returned as float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def top_k(scores: np.ndarray, k: int, labels: list[str]) -> list[list[dict[str, object]]]:
    """Per row the ``k`` best classes as ``{index, label, score}``, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    results = []
    for row, candidates in zip(scores, part, strict=True):
        best = candidates[np.argsort(-row[candidates], kind="stable")]
        results.append([{"index": int(i), "label": labels[i], "score": float(row[i])} for i in best])
    return results
