"""The accuracy report: agreement measures, the floor, and its file round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resserve.builder.accuracy import agreement
from resserve.errors import AccuracyError
from resserve.metadata import AccuracyReport


def test_agreement_measures() -> None:
    reference = np.array([[5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    candidate = np.array([[5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 4.0, 0.0, 0.0, 0.0, 0.0]])
    top1, top5, cosine = agreement(reference, candidate)
    assert top1 == 0.5  # the second row's winner changed...
    assert top5 == 1.0  # ...but the reference's class is still in the top 5
    assert cosine[0] == pytest.approx(1.0) and cosine[1] == pytest.approx(8 / 17)


def report(top1: float) -> AccuracyReport:
    return AccuracyReport(variant="m (openvino-int8)", reference="onnxruntime-fp32", images=200,
                          top1_agreement=top1, top5_agreement=1.0, cosine_mean=0.999, cosine_min=0.99,
                          method="held-out images: generated image-like placeholders")


def test_floor_fails_with_the_report_in_the_message() -> None:
    report(0.995).check(0.99)
    with pytest.raises(AccuracyError, match=r"floor 99.00% not met: m \(openvino-int8\).*top-1 98.50%"):
        report(0.985).check(0.99)


def test_round_trip(tmp_path: Path) -> None:
    assert AccuracyReport.read(tmp_path) is None
    report(0.99).write(tmp_path)
    assert AccuracyReport.read(tmp_path) == report(0.99)
