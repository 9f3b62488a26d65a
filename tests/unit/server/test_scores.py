"""classify's top-k: chosen on the raw outputs, scored for those k only, the same as softmax first."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from resserve.server.scores import model_scores, top_k, top_k_classes


@pytest.mark.parametrize("ends_in_softmax", [False, True])
@pytest.mark.parametrize(("rows", "k"), [(1, 5), (7, 5), (3, 1), (2, 1000)])
def test_top_k_of_raw_outputs_equals_top_k_of_softmax(rows: int, k: int, ends_in_softmax: bool) -> None:
    rng = np.random.default_rng(rows * k)
    outputs = (rng.standard_normal((rows, 1000)) * 4).astype(np.float32)
    if ends_in_softmax:
        outputs = np.exp(outputs) / np.exp(outputs).sum(axis=1, keepdims=True)
    served = SimpleNamespace(config=SimpleNamespace(softmax_in_model=ends_in_softmax),
                             metadata=SimpleNamespace(softmax=False), labels=[f"c{i}" for i in range(1000)])
    expected = top_k(model_scores(served, outputs), k, served.labels)  # type: ignore[arg-type]
    assert top_k_classes(served, outputs, k) == expected  # type: ignore[arg-type]
