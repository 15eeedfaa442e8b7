"""Helpers shared by the fusion passes (batchnorm, conv_affine, pad_conv, repvgg, gemm).

A fusion pass looks at one node at a time: its ``match`` returns a plan (applied by ``run``), a
:class:`Skip` (a near miss: why it did not fuse, printed by ``explain`` and, when the user would
expect the fusion, warned about by ``run``) or ``None`` (not a candidate). Constants are read with
``.numpy()`` (external and lazy tensors work), arithmetic is done in float64 and cast back to the
weight's own dtype, new weights become new initializers and old ones are dropped once unused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slipway.passes.base import Pass, PassResult

FLOAT_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16"})


@dataclass
class Skip:
    """Why a candidate was not rewritten. ``warn``: the user would expect it to fuse."""

    reason: str
    warn: bool = False


def graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """The main graph and every subgraph (If/Loop/Scan bodies), outer graphs first."""
    stack = [model.graph]
    while stack:
        graph = stack.pop(0)
        yield graph
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    stack.append(attr.value)
                elif attr.type == ir.AttributeType.GRAPHS:
                    stack.extend(attr.value)


def label(node: ir.Node) -> str:
    return f"{node.op_type} {node.name or '(unnamed)'!r}"


def const(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant array (an initializer that is not also a graph input, or a Constant
    node's output); None when it may change at run time."""
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:
        return None
    return None if tensor is None else np.asarray(tensor.numpy())


def float_const(value: ir.Value | None) -> np.ndarray | None:
    """:func:`const`, but only for floating-point tensors."""
    array = const(value)
    return array if array is not None and array.dtype.name in FLOAT_DTYPES else None


def f64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def attr_ints(node: ir.Node, name: str, default: Sequence[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else list(default)


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return attr.as_float() if attr is not None else default


def attr_str(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    return attr.as_string() if attr is not None else default


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    return node is not None and node.domain == "" and node.op_type in op_types


def only_used_by(value: ir.Value, node: ir.Node) -> bool:
    """The value feeds ``node`` and nothing else (no other node, not a graph output), and is made
    in ``node``'s graph (so that its producer and ``node`` can be replaced together)."""
    producer = value.producer()
    return (not value.is_graph_output() and all(use.node is node for use in value.uses())
            and (producer is None or producer.graph is node.graph))


def other_user(value: ir.Value, node: ir.Node) -> str:
    """Who else reads ``value`` besides ``node`` (for messages)."""
    if value.is_graph_output():
        return "a graph output"
    others = [use.node for use in value.uses() if use.node is not node]
    return label(others[0]) if others else "nothing"


def per_channel(array: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``array`` as a [channels] vector when broadcasting it against an [N, channels, ...] tensor
    of ``rank`` dims only varies along axis 1 (scalar, [C,1,1], [1,C,1,1], ...) and does not grow
    the tensor; None otherwise."""
    if array.ndim > rank:
        return None
    shape = (1,) * (rank - array.ndim) + array.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(f64(array).reshape(-1), (channels,)).copy()


def scale_outputs(op_type: str, w: np.ndarray, s: np.ndarray, group: int = 1, trans_b: int = 0) -> np.ndarray:
    """``w`` (float64) with output channel ``o`` multiplied by ``s[o]`` for Conv ([O, I/g, k..]),
    ConvTranspose ([I, O/g, k..]: the output channel is group x dim 1) and Gemm ([K, N] or [N, K])."""
    w = f64(w)
    if op_type == "Conv":
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    if op_type == "ConvTranspose":
        cin, opg = w.shape[0], w.shape[1]
        grouped = w.reshape((group, cin // group, opg) + w.shape[2:])
        return (grouped * s.reshape((group, 1, opg) + (1,) * (w.ndim - 2))).reshape(w.shape)
    return w * (s[:, None] if trans_b else s[None, :])


def out_channels(op_type: str, w: np.ndarray, group: int = 1, trans_b: int = 0) -> int:
    if op_type == "Conv":
        return w.shape[0]
    if op_type == "ConvTranspose":
        return w.shape[1] * group
    return w.shape[0] if trans_b else w.shape[1]


class Namer:
    """Fresh value names, unique across the model and its subgraphs."""

    def __init__(self, model: ir.Model) -> None:
        self.used: set[str] = set()
        for graph in graphs(model):
            self.used.update(v.name for v in graph.inputs if v.name)
            self.used.update(graph.initializers)
            for node in graph:
                self.used.update(v.name for v in node.outputs if v.name)
                if node.name:
                    self.used.add(node.name)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def initializer(graph: ir.Graph, namer: Namer, base: str, array: np.ndarray, dtype: np.dtype) -> ir.Value:
    """Register ``array`` cast to ``dtype`` as a new initializer of ``graph``."""
    tensor = ir.tensor(np.ascontiguousarray(np.asarray(array).astype(dtype)), name=namer(base))
    value = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
    graph.register_initializer(value)
    return value


def node_like(old: ir.Node, op_type: str, inputs: Sequence[ir.Value | None], attrs: Iterable[ir.Attr],
              name: str | None = None) -> ir.Node:
    """A new one-output node in ``old``'s domain and opset, named after it."""
    return ir.Node(old.domain, op_type, list(inputs), [ir.Attr(a.name, a.type, a.value) for a in attrs],
                   version=old.version, name=name if name is not None else old.name,
                   metadata_props=dict(old.metadata_props))


def replace(graph: ir.Graph, old_nodes: Sequence[ir.Node], new_nodes: Sequence[ir.Node], old_out: ir.Value,
            new_out: ir.Value, renames: Sequence[tuple[ir.Value, ir.Value | None]] = ()) -> None:
    """Put ``new_nodes`` (computing ``new_out``) in place of ``old_nodes`` (computing ``old_out``),
    drop initializers and Constant nodes that no longer have a user, and give each new initializer
    of ``renames`` the name of the old value it replaced when that name became free."""
    inputs = [v for n in old_nodes for v in n.inputs if v is not None]
    producer = old_out.producer()
    assert producer is not None  # an output of the matched pattern
    ir.convenience.replace_nodes_and_values(graph, producer, list(old_nodes), list(new_nodes), [old_out], [new_out])
    dropped = drop_unused(inputs)
    for new, old in renames:
        if old is not None and old.name in dropped:
            new.name = old.name


def drop_unused(values: Iterable[ir.Value]) -> set[str]:
    """Remove initializers and Constant nodes among ``values`` that nothing uses; their names."""
    dropped: set[str] = set()
    for value in dict.fromkeys(values):
        if value.uses() or value.is_graph_output() or value.is_graph_input() or not value.name:
            continue
        producer = value.producer()
        if value.is_initializer() and value.graph is not None:
            value.graph.initializers.pop(value.name)
            dropped.add(value.name)
        elif is_op(producer, "Constant") and producer.graph is not None:
            producer.graph.remove(producer, safe=True)
    return dropped


@dataclass
class Fuse:
    """A matched rewrite: ``apply(graph, namer)`` performs it; ``rule`` is what it counts as."""

    rule: str
    apply: Callable[[ir.Graph, Namer], None]


Match = Fuse | Skip | None


class FusionPass(Pass):
    """A pass that sweeps every graph (subgraphs included) calling :meth:`match` on each node and
    applying what matched, until a sweep changes nothing. Warnings come from that last sweep, so a
    near miss that a later rewrite resolved is not reported."""

    def match(self, node: ir.Node) -> Match:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, model: ir.Model) -> PassResult:
        changes: dict[str, int] = {}
        warnings: list[str] = []
        namer = Namer(model)
        for graph in graphs(model):
            while True:
                sweep_warnings: list[str] = []
                applied = 0
                for node in list(graph):
                    if node.graph is not graph:  # removed by an earlier rewrite in this sweep
                        continue
                    found = self.match(node)
                    if isinstance(found, Fuse):
                        found.apply(graph, namer)
                        changes[found.rule] = changes.get(found.rule, 0) + 1
                        applied += 1
                    elif isinstance(found, Skip) and found.warn:
                        sweep_warnings.append(f"{self.name}: {found.reason}")
                if not applied:
                    warnings.extend(sweep_warnings)
                    break
        return PassResult(model, bool(changes), changes, list(dict.fromkeys(warnings)))

    def explain(self, model: ir.Model) -> list[str]:
        lines = []
        for graph in graphs(model):
            for node in graph:
                found = self.match(node)
                if isinstance(found, Skip):
                    lines.append(f"{self.name}: {found.reason}")
        return list(dict.fromkeys(lines))
