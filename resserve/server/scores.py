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


def top_k_classes(served: ServedModel, outputs: np.ndarray, k: int) -> list[list[dict[str, object]]]:
    """:func:`top_k` of :func:`model_scores`, choosing the ``k`` best on the raw outputs (softmax
    keeps their order) and dividing only those: the same scores, bit for bit, with one reduction
    and one ``k``-element division per row instead of the whole row's (on the event loop, where a
    numpy reduction hands the GIL away)."""
    if served.config.softmax_in_model or served.metadata.softmax:
        return top_k(outputs.astype(np.float32, copy=False), k, served.labels)
    k = min(k, outputs.shape[1])
    z = outputs.astype(np.float64)
    part = np.argpartition(-z, k - 1, axis=1)[:, :k]
    best = np.take_along_axis(part, np.argsort(-np.take_along_axis(z, part, 1), axis=1, kind="stable"), 1)
    exps = np.exp(z - np.take_along_axis(z, best[:, :1], 1))  # each row's top class is its maximum
    scores = (np.take_along_axis(exps, best, 1) / exps.sum(axis=1, keepdims=True)).astype(np.float32)
    labels = served.labels
    return [[{"index": i, "label": labels[i], "score": p} for i, p in zip(row, row_scores, strict=True)]
            for row, row_scores in zip(best.tolist(), scores.tolist(), strict=True)]


def top_k(scores: np.ndarray, k: int, labels: list[str]) -> list[list[dict[str, object]]]:
    """Per row the ``k`` best classes as ``{index, label, score}``, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    results = []
    for row, candidates in zip(scores, part, strict=True):
        best = candidates[np.argsort(-row[candidates], kind="stable")]
        results.append([{"index": int(i), "label": labels[i], "score": float(row[i])} for i in best])
    return results
