"""A mutable working view of one ONNX graph, shared by resserve's own rewrite passes.

Each pass edits ``nodes`` (kept in topological order) and ``inits``, calls :meth:`reindex` after
every rewrite, and :meth:`write_back` once at the end. Names that the outside world or a subgraph
can see are ``protected``: a rewrite may give a node's output name to another node that computes
the same value, but never drop or rename such a name.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


def is_op(node: onnx.NodeProto, *op_types: str) -> bool:
    """True for a standard-domain node of one of ``op_types`` (custom domains are never touched)."""
    return node.op_type in op_types and node.domain in DEFAULT_DOMAINS


def attribute(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def perm_of(node: onnx.NodeProto) -> list[int] | None:
    """A Transpose's explicit ``perm``; None when absent (reverse axes, rank unknown here)."""
    attr = attribute(node, "perm")
    return list(attr.ints) if attr is not None else None


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
        if attr.name == "value_int":
            return np.asarray(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.asarray(list(attr.ints), dtype=np.int64)
    return None  # sparse or string constants never feed a rewritable op


class GraphState:
    """Nodes, constants and use lists of one graph, rebuilt by :meth:`reindex` after each edit."""

    def __init__(self, graph: onnx.GraphProto, opsets: dict[str, int] | None = None) -> None:
        self.graph = graph
        self.opsets = opsets or {"": 17}  # what the graph's nodes mean: the model's opset_import
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        # Initializers listed as graph inputs are overridable defaults, not constants.
        self.inputs = {i.name for i in graph.input}
        self.outputs = {o.name for o in graph.output}
        self.names = self.inputs | self.outputs | set(self.inits) | {v.name for v in graph.value_info}
        for node in self.nodes:
            self.names.update(node.input, node.output)
            if node.name:
                self.names.add(node.name)
        self.reindex()

    def reindex(self) -> None:
        """Recompute consumers, producers, Constant nodes and protected names from ``nodes``."""
        self.consumers: dict[str, list[onnx.NodeProto]] = {}  # one entry per input slot
        self.producers: dict[str, onnx.NodeProto] = {}
        self.const_nodes: dict[str, onnx.NodeProto] = {}
        self.protected = set(self.outputs)
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producers[name] = node
            self.protected |= _subgraph_refs(node)
            if is_op(node, "Constant"):
                self.const_nodes[node.output[0]] = node

    def is_const(self, name: str) -> bool:
        return name not in self.inputs and (name in self.inits or name in self.const_nodes)

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant-node output; None for anything computed."""
        if name in self.inputs:
            return None
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.const_nodes.get(name)
        return None if node is None else _constant_node_value(node)

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name`` (once), if nothing else (graph, subgraph) can see it."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.protected:
            return None
        return users[0]

    def fresh(self, base: str) -> str:
        """A tensor or node name not used anywhere in the graph yet."""
        new, i = base, 0
        while new in self.names:
            i += 1
            new = f"{base}_{i}"
        self.names.add(new)
        return new

    def add_const(self, value: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(value, name)
        return name

    def rename_uses(self, old: str, new: str) -> None:
        """Point every node input reading ``old`` at ``new`` (callers check ``old`` is not protected)."""
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def remove(self, *dead: onnx.NodeProto) -> None:
        ids = {id(n) for n in dead}
        self.nodes = [n for n in self.nodes if id(n) not in ids]

    def replace(self, old: onnx.NodeProto, *new: onnx.NodeProto) -> None:
        """Put ``new`` where ``old`` was, which keeps the order topological when ``new`` reads
        only names available before ``old``."""
        index = next(i for i, n in enumerate(self.nodes) if n is old)
        self.nodes[index : index + 1] = list(new)

    def write_back(self) -> None:
        """Store nodes and the initializers still read; drop orphaned Constant nodes and value_info."""
        used = set(self.protected) | self.inputs
        for node in self.nodes:
            used.update(node.input)
        # Constant nodes have no inputs, so one pass removes every orphan.
        self.nodes = [n for n in self.nodes if not (is_op(n, "Constant") and n.output[0] not in used)]
        inits = [t for name, t in self.inits.items() if name in used]
        alive = used | {t.name for t in inits} | {o for n in self.nodes for o in n.output}
        value_info = [v for v in self.graph.value_info if v.name in alive]
        # Copy out before clearing: the lists hold references into the containers being cleared.
        nodes, inits, value_info = ([copy.deepcopy(m) for m in ms] for ms in (self.nodes, inits, value_info))
        for field, items in (("node", nodes), ("initializer", inits), ("value_info", value_info)):
            self.graph.ClearField(field)
            getattr(self.graph, field).extend(items)
