"""resserve tune's builds and measurements on the tiny classifier: each (engine, precision) built
outside the user's repository, a precision under the accuracy floor never measured, and a
candidate's goodput measured through a real server under its p99 budget."""

from __future__ import annotations

from pathlib import Path

from resserve.perf.images import generate
from resserve.perf.measure import MeasurementSettings
from resserve.perf.tune import build_pairs, score_candidate
from resserve.perf.tune_gate import gate
from resserve.perf.tune_space import Candidate
from tests.server_harness import write_model


def test_pairs_build_outside_the_repository_and_the_gate_keeps_reduced_answers_out(tiny_onnx: Path,
                                                                                   tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", tiny_onnx, calibration={"count": 8, "held_out": 8, "check_images": 0})
    # No int8 build agrees on more than every image: a floor above 100% refuses it, whatever it measured.
    built = build_pairs(repo, "m", [("onnxruntime", "fp32"), ("onnxruntime", "int8")], tmp_path / "work",
                        min_top1_agreement=1.01)
    fp32, int8 = built
    assert fp32.passed and fp32.top1_agreement is None
    assert not int8.passed and int8.why.startswith("accuracy: top-1 agreement") and int8.top1_agreement is not None
    assert not any(p.name.isdigit() for p in (repo / "m").iterdir())  # the user's repository is untouched
    settings = MeasurementSettings(warmup_s=0.3, window_s=0.5, stable_windows=1, max_windows=2)
    payloads = generate(((64, 48),), per_size=4)
    refused = score_candidate(Candidate(engine="onnxruntime", precision="int8", max_batch_size=4), int8, "m",
                              p99_ms=500, payloads=payloads, high_rps=100, settings=settings, iterations=2)
    assert refused.goodput_rps == 0 and refused.why == int8.why  # never measured
    candidate = Candidate(engine="onnxruntime", precision="fp32", max_batch_size=4, instances=2, intra_op_threads=1)
    score = score_candidate(candidate, fp32, "m", p99_ms=500, payloads=payloads, high_rps=100, settings=settings,
                            iterations=3)
    assert score.goodput_rps > 0 and score.p99_ms is not None and score.p99_ms <= 500, score
    assert score.cpu_ms_per_image is not None and score.cpu_ms_per_image > 0
    # Without real images: the build's report gates the precision, fast preprocessing is refused and
    # uint8 input (the same normalization, inside the model) takes its precision's verdict.
    verdicts = {g.key: g for g in gate(built, "m", 1.01, (False, True), images=None)}
    assert verdicts["onnxruntime-fp32"].passed and verdicts["onnxruntime-fp32 u8"].passed
    assert not verdicts["onnxruntime-fp32 fast"].passed and "real images" in verdicts["onnxruntime-fp32 fast"].why
    assert not verdicts["onnxruntime-int8"].passed and not verdicts["onnxruntime-int8 u8"].passed
