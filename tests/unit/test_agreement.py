"""The load-time check's verdict and the check set's file: arithmetic on known logits, a real file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from resserve.agreement import CHECK_FILE, CheckSet, agreement, check_here, decode_crops, encode_crops

RNG = np.random.default_rng(0)
CROPS = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def _logits(top: list[int], classes: int = 10) -> np.ndarray:
    out = RNG.standard_normal((len(top), classes)).astype(np.float32)
    out[np.arange(len(top)), top] = 10.0
    return out


def test_agreement_counts_top1_top5_and_cosine() -> None:
    reference = _logits([0, 1, 2, 3])
    candidate = reference.copy()
    candidate[3] = _logits([4])[0]
    top1, top5, cosine = agreement(reference, candidate)
    assert top1 == 0.75 and cosine[:3] == pytest.approx(1.0) and cosine[3] < 0.9
    assert top5 in (0.75, 1.0)


def test_the_check_set_round_trips_through_its_file(tmp_path: Path) -> None:
    jpegs = encode_crops(CROPS)
    reference, candidate = _logits([0, 1, 2, 3]), _logits([0, 1, 2, 5])
    CheckSet(jpegs, reference, candidate).write(tmp_path)
    back = CheckSet.read(tmp_path)
    assert back is not None and back.jpegs == jpegs
    np.testing.assert_array_equal(back.reference, reference)
    np.testing.assert_array_equal(back.candidate, candidate)
    np.testing.assert_array_equal(back.pixels, decode_crops(jpegs))
    # Quality 90 without chroma subsampling: close to the crops, at a tenth of their bytes (on photos).
    assert np.abs(back.pixels.astype(int) - CROPS).mean() < 40
    assert CheckSet.read(tmp_path / "elsewhere") is None


def test_a_check_file_with_objects_is_refused_not_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / CHECK_FILE, jpegs=np.array([object()], dtype=object), offsets=np.array([0, 1]),
             reference=np.zeros((1, 2)), candidate=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="unreadable.*rebuild"):
        CheckSet.read(tmp_path)


@pytest.mark.parametrize("offsets", [[0, 5, 3], [1, 10], [0, 10**9]])
def test_offsets_that_do_not_fit_are_refused(tmp_path: Path, offsets: list[int]) -> None:
    np.savez_compressed(tmp_path / CHECK_FILE, jpegs=np.zeros(10, np.uint8), offsets=np.array(offsets),
                        reference=np.zeros((len(offsets) - 1, 2)), candidate=np.zeros((len(offsets) - 1, 2)))
    with pytest.raises(ValueError, match="unreadable"):
        CheckSet.read(tmp_path)


def test_a_truncated_check_file_is_refused(tmp_path: Path) -> None:
    CheckSet(encode_crops(CROPS), _logits([0, 1, 2, 3]), _logits([0, 1, 2, 3])).write(tmp_path)
    data = (tmp_path / CHECK_FILE).read_bytes()
    (tmp_path / CHECK_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unreadable"):
        CheckSet.read(tmp_path)
    assert zipfile.is_zipfile(io.BytesIO(data))


def test_a_machine_that_reproduces_the_build_passes() -> None:
    reference, candidate = _logits([0, 1, 2, 3]), _logits([0, 1, 2, 5])
    check = CheckSet(encode_crops(CROPS), reference, candidate)
    result = check_here(check, candidate.copy(), report_top1=0.94, floor=0.93, built_on="avx512_vnni",
                        isa_here="avx2")
    assert result.reproduced and result.passed
    assert result.top1_build == result.top1_here == 0.75
    assert result.worst_top1 == pytest.approx(0.94) and result.estimate_top1 == pytest.approx(0.94)
    assert "reproduces the build's answers" in result.summary()


def test_every_changed_answer_counts_as_lost_agreement() -> None:
    reference = _logits([0, 1, 2, 3])
    check = CheckSet(encode_crops(CROPS), reference, reference.copy())  # the build agreed on all four
    here = reference.copy()
    here[0] = _logits([7])[0]  # one answer of four changed on this machine
    result = check_here(check, here, report_top1=0.97, floor=0.93, built_on="avx512_vnni", isa_here="avx2")
    assert not result.reproduced and not result.passed
    assert result.agree_with_build == 0.75 and result.worst_top1 == pytest.approx(0.72)
    assert result.estimate_top1 == pytest.approx(0.72)
    assert "top-1 agreement here at worst 72.00%" in result.summary() and "floor 93.00%" in result.summary()
    lenient = check_here(check, here, report_top1=0.97, floor=0.70, built_on=None, isa_here="avx2")
    assert lenient.passed and "an unrecorded CPU" in lenient.summary()


def test_small_differences_that_change_no_answer_pass_without_reproducing() -> None:
    reference = _logits([0, 1, 2, 3])
    here = reference + RNG.standard_normal(reference.shape).astype(np.float32) * 0.05
    result = check_here(CheckSet(encode_crops(CROPS), reference, reference.copy()), here, report_top1=0.95,
                        floor=0.95, built_on="amx", isa_here="avx512_vnni")
    assert not result.reproduced and result.agree_with_build == 1.0 and result.passed


def test_logits_of_another_shape_are_an_error() -> None:
    reference = _logits([0, 1, 2, 3])
    with pytest.raises(ValueError, match="stored"):
        check_here(CheckSet(encode_crops(CROPS), reference, reference), reference[:2], report_top1=1, floor=0,
                   built_on=None, isa_here="avx2")
    with pytest.raises(ValueError, match="do not fit"):
        CheckSet(encode_crops(CROPS), reference[:3], reference[:3])
