"""Fold per-channel affine ops into the convolutions before them, directly on an ONNX graph.

resserve's own exports are folded in torch (:mod:`resserve.models.fold`); this module is for ONNX
files resserve did not export (tf2onnx and other converters), where only the graph is available.
``BatchNormalization`` and constant per-output-channel ``Mul``/``Add``/``Sub``/``Div`` after a
``Conv`` are the map ``y -> s * y + t`` per channel, so they fold into the weight
(``W' = W * s``) and bias (``b' = b * s + t``). Transpose pairs that cancel (a converter's
NHWC<->NCHW round trip) are removed. The rewrite is deliberately conservative: anything not
provably equivalent is left alone, and :func:`optimize_onnx` checks the result numerically.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from resserve.build.parity import compare_logits
from resserve.errors import ExportError, ParityError

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_AFFINE_OPS = frozenset({"Mul", "Div", "Add", "Sub"})
_FOLDABLE_OPS = _AFFINE_OPS | {"BatchNormalization"}
_FOLDED_KEY = "resserve.folded"
_Affine = tuple[np.ndarray, np.ndarray]  # per-output-channel (scale, shift) in float64


@dataclass
class FoldStats:
    """How many nodes a fold removed, by kind, so callers can log what changed."""

    batchnorm: int = 0  # BatchNormalization nodes folded
    affine: int = 0  # Mul/Add/Sub/Div nodes folded
    transposes: int = 0  # Transpose nodes removed (a cancelling pair counts 2)
    identities: int = 0  # Identity nodes over constants bypassed

    def total(self) -> int:
        """Nodes removed in all."""
        return self.batchnorm + self.affine + self.transposes + self.identities


def _is_default(node: onnx.NodeProto, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in _DEFAULT_DOMAINS


def _subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Names read inside a node's subgraphs (If/Loop bodies): hidden uses we must not rewrite."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for graph in graphs:
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_refs(inner))
            names.update(out.name for out in graph.output)
    return names


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.asarray(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.asarray(list(attr.floats), dtype=np.float32)
    return None  # sparse or integer constants never feed a foldable op


def _per_channel(shape: tuple[int, ...], c_out: int, rank: int) -> bool:
    """True if a constant of ``shape`` broadcasts against (N, C_out, *spatial) per channel only.

    Right-aligned numpy broadcasting: every dim must be 1 except the one landing on axis 1, which
    may be C_out. A (C_out,) vector lands on the last spatial axis for NCHW, so it is rejected;
    a constant of higher rank than the conv output would change the output shape, so it is too.
    """
    if len(shape) > rank:
        return False
    offset = rank - len(shape)
    return all(dim == 1 or (offset + i == 1 and dim == c_out) for i, dim in enumerate(shape))


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None  # absent perm means "reverse the axes"


def _cancels(first: list[int] | None, second: list[int] | None) -> bool:
    if first is None and second is None:
        return True  # reverse twice
    rank = len(first if first is not None else second or [])
    p1 = first if first is not None else list(range(rank))[::-1]
    p2 = second if second is not None else list(range(rank))[::-1]
    # transpose(transpose(x, p1), p2) == transpose(x, [p1[p2[i]] for i]).
    return len(p1) == len(p2) and all(p1[p2[i]] == i for i in range(len(p2)))


class _Folder:
    """Mutable working state over one graph; rebuilds its indexes after every rewrite."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        # Initializers listed as graph inputs are overridable defaults, not constants.
        self.inputs = {i.name for i in graph.input}
        self.outputs = {o.name for o in graph.output}
        self.names = self.inputs | self.outputs | set(self.inits) | {v.name for v in graph.value_info}
        for node in self.nodes:
            self.names.update(node.input, node.output)
        self.stats = FoldStats()
        self._reindex()

    def _reindex(self) -> None:
        self.consumers: dict[str, list[onnx.NodeProto]] = {}  # one entry per input slot
        self.const_nodes: dict[str, onnx.NodeProto] = {}
        self.protected = set(self.outputs)  # names whose producer/name must survive as is
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            self.protected |= _subgraph_refs(node)
            if _is_default(node, "Constant"):
                self.const_nodes[node.output[0]] = node

    def _is_const(self, name: str) -> bool:
        return name not in self.inputs and (name in self.inits or name in self.const_nodes)

    def _const(self, name: str) -> np.ndarray | None:
        if name in self.inputs:
            return None
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.const_nodes.get(name)
        return None if node is None else _constant_node_value(node)

    def run(self) -> FoldStats:
        while self._bypass_constant_identities() or self._fold_one_conv() or self._remove_one_transpose_pair():
            self._reindex()
        self._write_back()
        return self.stats

    def _bypass_constant_identities(self) -> bool:
        """Read constants through ``Identity`` nodes.

        The TorchScript exporter dedupes equal initializers (BatchNorm weights of all ones) by
        routing them through Identity nodes; without this their BatchNorms would look variable.
        """
        bypass = {
            n.output[0]: n.input[0]
            for n in self.nodes
            if _is_default(n, "Identity") and self._is_const(n.input[0]) and n.output[0] not in self.protected
        }
        if not bypass:
            return False
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name in bypass:
                    node.input[i] = bypass[name]
        self.nodes = [n for n in self.nodes if not (_is_default(n, "Identity") and n.output[0] in bypass)]
        self.stats.identities += len(bypass)
        return True

    def _fold_one_conv(self) -> bool:
        for conv in self.nodes:
            if not _is_default(conv, "Conv") or len(conv.input) < 2 or not self._is_const(conv.input[1]):
                continue
            has_bias = len(conv.input) > 2 and conv.input[2] != ""
            if has_bias and not self._is_const(conv.input[2]):
                continue
            out = conv.output[0]
            users = self.consumers.get(out, [])
            if len(users) != 1 or out in self.protected or users[0].domain not in _DEFAULT_DOMAINS:
                continue
            if users[0].op_type not in _FOLDABLE_OPS:  # cheap test first: no weight decoding
                continue
            w = self._const(conv.input[1])
            if w is None or w.dtype.kind != "f" or w.ndim < 3:
                continue
            b = self._const(conv.input[2]) if has_bias else np.zeros(w.shape[0], dtype=w.dtype)
            if b is None or b.shape != (w.shape[0],):
                continue
            affine = self._affine_of(users[0], out, w.shape[0], w.ndim)
            if affine is None:
                continue
            self._apply(conv, users[0], w, b, affine)
            return True
        return False

    def _affine_of(self, user: onnx.NodeProto, y: str, c_out: int, rank: int) -> _Affine | None:
        """The per-channel (scale, shift) with ``user(y) == y * scale + shift``, or None."""
        if user.op_type == "BatchNormalization":
            if len(user.input) != 5 or user.input[0] != y:
                return None
            # Extra outputs only exist in training mode; folding is only valid if nobody reads them.
            if any(o and (o in self.consumers or o in self.protected) for o in user.output[1:]):
                return None
            attrs = {a.name: helper.get_attribute_value(a) for a in user.attribute}
            if attrs.get("training_mode", 0) != 0 or attrs.get("spatial", 1) != 1:
                return None
            values = [self._const(name) for name in user.input[1:]]
            if any(v is None or v.shape != (c_out,) for v in values):
                return None
            scale, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in values)
            var = var + float(attrs.get("epsilon", 1e-5))
            if not np.all(var > 0):  # also keeps np.sqrt from warning (warnings are errors in CI)
                return None
            s = scale / np.sqrt(var)
            return s, beta - mean * s
        if user.op_type not in _AFFINE_OPS or len(user.input) != 2:
            return None
        conv_first = user.input[0] == y
        other = user.input[1] if conv_first else user.input[0]
        c = None if other == y else self._const(other)
        if c is None or c.dtype.kind != "f" or not _per_channel(c.shape, c_out, rank):
            return None
        c = np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(-1), (c_out,))
        if not np.all(np.isfinite(c)):
            return None
        one, zero = np.ones(c_out), np.zeros(c_out)
        if user.op_type == "Mul":
            return c, zero
        if user.op_type == "Add":
            return one, c
        if user.op_type == "Sub":
            return (one, -c) if conv_first else (-one, c)
        # Div: only conv / c is affine in the conv output (c / conv is not); c == 0 would be inf.
        if not conv_first or np.any(c == 0):
            return None
        return 1.0 / c, zero

    def _apply(
        self, conv: onnx.NodeProto, user: onnx.NodeProto, w: np.ndarray, b: np.ndarray, st: _Affine
    ) -> None:
        s, t = st
        # float64 arithmetic, stored back in the weight's dtype, so folding adds one rounding only.
        new_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = (b.astype(np.float64) * s + t).astype(w.dtype)
        self._set_const_input(conv, 1, new_w, "W")
        self._set_const_input(conv, 2, new_b, "B")
        # The conv takes over the consumer's output name, so downstream nodes and graph outputs
        # are untouched and the node order stays topological.
        conv.output[0] = user.output[0]
        self.nodes = [n for n in self.nodes if n is not user]
        field = "batchnorm" if user.op_type == "BatchNormalization" else "affine"
        setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _set_const_input(self, conv: onnx.NodeProto, slot: int, value: np.ndarray, suffix: str) -> None:
        name = conv.input[slot] if len(conv.input) > slot else ""
        # Overwrite in place only an initializer this conv alone reads; shared ones (a weight tied
        # between two convs) and Constant-node outputs get a fresh initializer instead.
        if name in self.inits and len(self.consumers.get(name, [])) == 1 and name not in self.protected:
            self.inits[name] = numpy_helper.from_array(value, name)
            return
        base = new = f"{conv.name or conv.output[0]}_{suffix}_folded"
        for i in range(1, len(self.names) + 2):
            if new not in self.names:
                break
            new = f"{base}_{i}"
        self.names.add(new)
        self.inits[new] = numpy_helper.from_array(value, new)
        if len(conv.input) > slot:
            conv.input[slot] = new
        else:
            conv.input.append(new)

    def _remove_one_transpose_pair(self) -> bool:
        for first in self.nodes:
            if not _is_default(first, "Transpose"):
                continue
            mid = first.output[0]
            users = self.consumers.get(mid, [])
            if len(users) != 1 or mid in self.protected or not _is_default(users[0], "Transpose"):
                continue
            second = users[0]
            # Rewiring a graph output would need renaming the graph's interface: leave it.
            if second.output[0] in self.protected or not _cancels(_perm(first), _perm(second)):
                continue
            src, dst = first.input[0], second.output[0]
            for node in self.nodes:
                for i, name in enumerate(node.input):
                    if name == dst:
                        node.input[i] = src
            self.nodes = [n for n in self.nodes if n is not first and n is not second]
            self.stats.transposes += 2
            return True
        return False

    def _write_back(self) -> None:
        used = set(self.protected) | self.inputs
        for node in self.nodes:
            used.update(node.input)
        # Constant nodes have no inputs, so one pass removes every orphan.
        self.nodes = [n for n in self.nodes if not (_is_default(n, "Constant") and n.output[0] not in used)]
        inits = [t for name, t in self.inits.items() if name in used]
        alive = used | {t.name for t in inits} | {o for n in self.nodes for o in n.output}
        value_info = [v for v in self.graph.value_info if v.name in alive]
        # Copy out before clearing: the lists hold references into the containers being cleared.
        nodes, inits, value_info = ([copy.deepcopy(m) for m in ms] for ms in (self.nodes, inits, value_info))
        for field, items in (("node", nodes), ("initializer", inits), ("value_info", value_info)):
            self.graph.ClearField(field)
            getattr(self.graph, field).extend(items)


def fold_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FoldStats]:
    """Return a new, folded copy of ``model`` (the input is not mutated) and what was removed."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    stats = _Folder(folded.graph).run()
    return folded, stats


def _input_shape(value: onnx.ValueInfoProto) -> list[int]:
    """A concrete shape for a possibly symbolic input: batch -> 2, image H/W -> 224, channels -> 3."""
    dims = list(value.type.tensor_type.shape.dim)
    fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if len(fixed) == 4:
        # NHWC when the channel count is fixed last and not second (tf2onnx exports), else NCHW.
        nhwc = fixed[1] is None and fixed[3] is not None
        defaults = [2, 224, 224, 3] if nhwc else [2, 3, 224, 224]
    else:
        defaults = [2 if axis == 0 else 1 for axis in range(len(fixed))]
    return [f if f is not None else d for f, d in zip(fixed, defaults, strict=True)]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Run each graph exactly as written: ORT's own fusions would blur what is being compared.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's pybind errors (Fail, InvalidGraph, ...) share no base but Exception
        raise ExportError(f"onnxruntime cannot load the graph {model.graph.name!r}: {exc}") from exc


def compare_onnx_outputs(a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = 1e-4, seed: int = 0) -> float:
    """Run both graphs on one seeded random input; return the worst max|a-b|/max|a| over outputs.

    ``a`` is the reference. Raises ParityError above ``rtol`` or when the top-5 classes differ,
    so a rewrite that changes predictions cannot pass on a small average error.
    """
    initializers = {t.name for t in a.graph.initializer}
    inputs = [i for i in a.graph.input if i.name not in initializers]
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in inputs:
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = _input_shape(value)
        data = rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 10, shape)
        feeds[value.name] = data.astype(dtype)
    session_a, session_b = _session(a), _session(b)
    if sorted(i.name for i in session_b.get_inputs()) != sorted(feeds):
        raise ParityError("the two graphs have different inputs")
    try:
        outs_a, outs_b = session_a.run(None, feeds), session_b.run(None, feeds)
    except Exception as exc:  # see _session
        shapes = {name: array.shape for name, array in feeds.items()}
        raise ExportError(f"onnxruntime failed on random inputs of shapes {shapes}: {exc}") from exc
    if len(outs_a) != len(outs_b):
        raise ParityError(f"output count differs: {len(outs_a)} vs {len(outs_b)}")
    worst = 0.0
    for index, (out_a, out_b) in enumerate(zip(outs_a, outs_b, strict=True)):
        out_a, out_b = np.asarray(out_a, dtype=np.float64), np.asarray(out_b, dtype=np.float64)
        if out_a.shape != out_b.shape:
            raise ParityError(f"output {index} shape differs: {out_a.shape} vs {out_b.shape}")
        if out_a.size == 0:
            continue
        if not (np.all(np.isfinite(out_a)) and np.all(np.isfinite(out_b))):
            raise ParityError(f"output {index} is not finite: parity cannot be measured")
        err = compare_logits(f"output {index}", out_a, out_b, rtol).relative_max_diff
        worst = max(worst, err)
    return worst


def _check(model: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise ExportError(f"{what} fails the ONNX checker: {exc}") from exc


def optimize_onnx(
    src: Path, dst: Path, *, check_parity: bool = True, rtol: float = 1e-4, seed: int = 0
) -> FoldStats:
    """Fold ``src`` into ``dst``, checked by the ONNX checker and (by default) numerically.

    The parity check runs before saving, so a graph that fails it never reaches ``dst``. The
    output carries the metadata prop ``resserve.folded=true`` so serving can tell it was folded.
    """
    src, dst = Path(src), Path(dst)
    try:
        original = onnx.load(str(src))
    except Exception as exc:  # OSError, or protobuf's DecodeError for a file that is not ONNX
        raise ExportError(f"cannot read {src} as an ONNX model: {exc}") from exc
    _check(original, f"source model {src}")
    folded, stats = fold_graph(original)
    props = {p.key: p.value for p in folded.metadata_props}  # keep the producer's own props
    helper.set_model_props(folded, props | {_FOLDED_KEY: "true"})
    _check(folded, f"folded model of {src}")
    if check_parity:
        compare_onnx_outputs(original, folded, rtol=rtol, seed=seed)
    try:
        onnx.save(folded, str(dst))
    except OSError as exc:
        raise ExportError(f"cannot write {dst}: {exc}") from exc
    return stats
