"""Run the passes to a fixed point, then check, compare and save: ``resserve optimize``'s engine."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnx
from onnx import helper

from resserve.builder.onnx_fold.constants import fold_constants
from resserve.builder.onnx_fold.conv_affine import fold_into_convs
from resserve.builder.onnx_fold.graph import GraphState
from resserve.builder.onnx_fold.library import CLEANUP_PASSES, LIBRARY, SWEEP_PASSES, run_pass
from resserve.builder.onnx_fold.fold_parity import compare_onnx_outputs
from resserve.builder.onnx_fold.fold_report import OptimizeReport, PassRecord, convs_folded, op_counts
from resserve.builder.onnx_fold.transpose import push_transposes
from resserve.builder.onnx_fold.unfolded import find_unfolded
from resserve.errors import ExportError

_FOLDED_KEY = "resserve.folded"
# A round is every pass once; one round usually reaches the fixed point, a second confirms it.
_MAX_ROUNDS = 8
_OWN_PASSES: tuple[tuple[str, Callable[[GraphState], int]], ...] = (
    ("fold_constants", fold_constants),
    ("push_transposes", push_transposes),
    ("fold_into_convs", fold_into_convs),
)


def _own_pass(model: onnx.ModelProto, run: Callable[[GraphState], int]) -> tuple[onnx.ModelProto, int]:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    state = GraphState(result.graph, {o.domain: o.version for o in result.opset_import})
    rewrites = run(state)
    state.write_back()
    return result, rewrites


class _Tally:
    """Per-pass removed/added node counts, summed over rounds."""

    def __init__(self) -> None:
        self.removed: dict[tuple[str, str], Counter[str]] = {}
        self.added: dict[tuple[str, str], Counter[str]] = {}

    def record(self, key: tuple[str, str], before: Counter[str], after: Counter[str]) -> None:
        self.removed.setdefault(key, Counter()).update(before - after)
        self.added.setdefault(key, Counter()).update(after - before)

    def records(self) -> tuple[PassRecord, ...]:
        return tuple(PassRecord(name, lib, dict(self.removed[(lib, name)]), dict(self.added[(lib, name)]))
                     for lib, name in self.removed)


def fold_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Return a new, optimized copy of ``model`` (the input is not mutated) and its report.

    onnxoptimizer's cleanup passes and resserve's own (push Transposes, fold into Convs) run in
    turn until a round changes nothing, since each can expose work for the other.
    """
    current = onnx.ModelProto()
    current.CopyFrom(model)
    tally = _Tally()

    def library_pass(name: str) -> bool:
        nonlocal current
        before = op_counts(current)
        current = run_pass(current, name)
        after = op_counts(current)
        tally.record((LIBRARY, name), before, after)
        return before != after

    for name in SWEEP_PASSES:
        library_pass(name)
    for _ in range(_MAX_ROUNDS):
        changed = False
        for name, removes in CLEANUP_PASSES.items():
            if removes & set(op_counts(current)):
                changed |= library_pass(name)
        for name, run in _OWN_PASSES:
            before = op_counts(current)
            current, rewrites = _own_pass(current, run)
            tally.record(("resserve", name), before, op_counts(current))
            changed |= rewrites > 0
        if not changed:
            break
    for name in SWEEP_PASSES:
        library_pass(name)
    before, after = op_counts(model), op_counts(current)
    report = OptimizeReport(
        ops_before=dict(sorted(before.items())), ops_after=dict(sorted(after.items())),
        convs=after.get("Conv", 0), convs_folded=convs_folded(model, current),
        passes=tally.records(), unfolded=tuple(find_unfolded(current)),
    )
    return current, report


def _check(model: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise ExportError(f"{what} fails the ONNX checker: {exc}") from exc


def optimize_onnx(
    src: Path, dst: Path, *, check_parity: bool = True, rtol: float = 1e-4, seed: int = 0,
    require_folded: bool = False,
) -> OptimizeReport:
    """Optimize ``src`` into ``dst``, checked by the ONNX checker and (by default) numerically.

    The checks run before saving, so a graph that fails one never reaches ``dst``. With
    ``require_folded`` a Conv still followed by per-channel arithmetic is an error naming the
    nodes. The output carries the metadata prop ``resserve.folded=true``.
    """
    src, dst = Path(src), Path(dst)
    try:
        original = onnx.load(str(src))
    except Exception as exc:  # OSError, or protobuf's DecodeError for a file that is not ONNX
        raise ExportError(f"cannot read {src} as an ONNX model: {exc}") from exc
    _check(original, f"source model {src}")
    folded, report = fold_graph(original)
    props = {p.key: p.value for p in folded.metadata_props}  # keep the producer's own props
    helper.set_model_props(folded, props | {_FOLDED_KEY: "true"})
    _check(folded, f"optimized model of {src}")
    if require_folded and report.unfolded:
        listed = "; ".join(str(u) for u in report.unfolded)
        raise ExportError(f"{len(report.unfolded)} per-channel op(s) after a Conv could not be folded: {listed}")
    if check_parity:
        report = replace(report, parity_rel_max_diff=compare_onnx_outputs(original, folded, rtol=rtol, seed=seed))
    try:
        onnx.save(folded, str(dst))
    except OSError as exc:
        raise ExportError(f"cannot write {dst}: {exc}") from exc
    return report
