"""What an optimize run did, by op type and by pass, in a form both people and scripts can read."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from resserve.builder.onnx_fold.graph import DEFAULT_DOMAINS, is_op


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    """Nodes per op type (custom domains prefixed, ``com.microsoft.FusedConv``)."""
    return Counter(n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}" for n in model.graph.node)


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if is_op(node, "Constant"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                tensors[node.output[0]] = value
    return tensors


def convs_folded(source: onnx.ModelProto, result: onnx.ModelProto) -> int:
    """Convs of ``result`` whose weight or bias is not a tensor of ``source`` unchanged."""
    before, after = _constants(source), _constants(result)

    def same(name: str) -> bool:
        if name not in before or name not in after:
            return name not in after  # an absent bias stayed absent
        return bool(np.array_equal(numpy_helper.to_array(before[name]), numpy_helper.to_array(after[name])))

    return sum(
        1 for n in result.graph.node if is_op(n, "Conv") and not all(same(name) for name in n.input[1:3] if name)
    )


@dataclass(frozen=True)
class PassRecord:
    """Nodes one pass removed and added, by op type, summed over every round it ran."""

    name: str
    library: str  # "onnxoptimizer" or "resserve"
    removed: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"-{n} {op}" for op, n in sorted(self.removed.items())]
        parts += [f"+{n} {op}" for op, n in sorted(self.added.items())]
        return f"{self.library} {self.name}: {', '.join(parts) or 'nothing'}"


@dataclass(frozen=True)
class UnfoldedArithmetic:
    """Per-channel arithmetic still reading a Conv's output after optimizing, and why."""

    conv: str
    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} {self.node!r} after Conv {self.conv!r}: {self.reason}"


@dataclass(frozen=True)
class OptimizeReport:
    """Before -> after node counts, convs folded, each pass's share, and what was left unfolded.

    Example::

        report = optimize_onnx(Path("in.onnx"), Path("out.onnx"))
        print("\\n".join(report.lines()))
    """

    ops_before: dict[str, int]
    ops_after: dict[str, int]
    convs: int
    convs_folded: int
    passes: tuple[PassRecord, ...] = ()
    unfolded: tuple[UnfoldedArithmetic, ...] = ()
    parity_rel_max_diff: float | None = None

    @property
    def removed(self) -> dict[str, int]:
        """Net nodes removed per op type (op types that grew are in :attr:`added`)."""
        return {op: n - self.ops_after.get(op, 0) for op, n in sorted(self.ops_before.items())
                if n > self.ops_after.get(op, 0)}

    @property
    def added(self) -> dict[str, int]:
        return {op: n - self.ops_before.get(op, 0) for op, n in sorted(self.ops_after.items())
                if n > self.ops_before.get(op, 0)}

    def lines(self) -> list[str]:
        """Plain text, one fact a line, no line depending on the terminal's width."""
        before, after = sum(self.ops_before.values()), sum(self.ops_after.values())
        removed = ", ".join(f"{n} {op}" for op, n in self.removed.items()) or "nothing"
        lines = [f"convs folded: {self.convs_folded} of {self.convs}",
                 f"nodes: {before} -> {after}; removed {removed}"]
        if self.added:
            lines.append("added: " + ", ".join(f"{n} {op}" for op, n in self.added.items()))
        ops = sorted(set(self.ops_before) | set(self.ops_after))
        lines.append("ops (before -> after): " + ", ".join(
            f"{op} {self.ops_before.get(op, 0)} -> {self.ops_after.get(op, 0)}" for op in ops))
        lines += [f"pass {p.describe()}" for p in self.passes if p.removed or p.added]
        lines += [f"not folded: {u}" for u in self.unfolded]
        if self.parity_rel_max_diff is not None:
            lines.append(f"parity: max|diff|/max|output| = {self.parity_rel_max_diff:.2e}")
        return lines

    def as_dict(self) -> dict[str, object]:
        doc = asdict(self)
        doc["removed"], doc["added"] = self.removed, self.added
        return doc
