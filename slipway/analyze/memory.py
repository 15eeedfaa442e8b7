"""Peak activation memory of one inference with buffer reuse, in topological order.

The model: nodes run one at a time in topological order. Graph inputs are allocated before
the first node. A node allocates each of its outputs when it runs; while it runs its inputs
and outputs are all live. After the node, every buffer whose last consumer it was is freed
(graph inputs included; a value an If/Loop body reads from the outer scope is consumed by
that If/Loop node), and so is an output nobody consumes. Graph outputs are never freed. Weights (initializers
and Constant outputs) are not activations and never count. The peak is the largest sum of
live buffers seen while a node runs (or before the first node). In-place execution and
fragmentation are not modelled.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from slipway.errors import UserError


@dataclass
class MemoryPlan:
    """Result of :func:`peak_activation_memory`."""

    peak_bytes: int
    peak_node: str | None  # the node running at the peak; None if the peak is the inputs alone
    live_bytes: list[int] = field(default_factory=list)  # live bytes while each node runs
    unknown: list[str] = field(default_factory=list)  # activations of unknown size, counted as 0


def topological_order(graph: ir.Graph) -> list[ir.Node]:
    """The graph's nodes in a topological order, keeping the stored order where it is valid.

    Raises :class:`UserError` when the graph has a cycle or uses a value no node produces.
    """
    nodes = list(graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    producers = [
        {index[id(p)] for v in node_inputs(node) if (p := v.producer()) is not None and id(p) in index}
        for node in nodes
    ]
    return [nodes[i] for i in ordered(producers, [n.name or n.op_type for n in nodes])]


def ordered(producers: list[set[int]], labels: list[str]) -> list[int]:
    """Indices of nodes in a topological order, the smallest ready index first.

    ``producers[i]`` holds the indices of the nodes whose outputs node ``i`` reads. Raises
    :class:`UserError` naming a node on a cycle (by ``labels``) when there is one.
    """
    waiting = [0] * len(producers)
    users: list[list[int]] = [[] for _ in producers]
    for i, deps in enumerate(producers):
        deps = deps - {i}
        waiting[i] = len(deps)
        for p in deps:
            users[p].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(producers):
        stuck = next(i for i, w in enumerate(waiting) if w > 0)
        raise UserError(f"the graph has a cycle through node {labels[stuck]!r}")
    return order


def node_inputs(node: ir.Node) -> list[ir.Value]:
    """A node's inputs, plus the outer values its subgraphs (If/Loop/Scan bodies) capture."""
    return [v for v in node.inputs if v is not None] + captured_values(node)


def captured_values(node: ir.Node) -> list[ir.Value]:
    """The outer values a node's subgraphs (If/Loop/Scan bodies) read."""
    values: list[ir.Value] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            values += _captured(attr.as_graph())
        elif attr.type == ir.AttributeType.GRAPHS:
            for g in attr.as_graphs():
                values += _captured(g)
    return values


def _captured(graph: ir.Graph) -> list[ir.Value]:
    return [
        v for inner in ir.traversal.RecursiveGraphIterator(graph) for v in inner.inputs
        if v is not None and v.graph is not graph and (v.producer() is None or v.producer().graph is not graph)
    ]


def is_weight_value(value: ir.Value) -> bool:
    """True for initializers and the outputs of Constant nodes."""
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")


def peak_activation_memory(
    graph: ir.Graph, order: list[ir.Node], sizes: Mapping[str, int | None]
) -> MemoryPlan:
    """Walk ``order`` allocating and freeing activation buffers; ``sizes`` maps value names to bytes."""
    steps = [
        Step(node.name or f"{node.op_type}_{i}", [v.name for v in node_inputs(node)], [v.name for v in node.outputs])
        for i, node in enumerate(order)
    ]
    values = [*graph.inputs, *(v for node in order for v in node.outputs)]
    weights = {v.name for v in values if v.name and is_weight_value(v)}
    return plan_memory(steps, [v.name for v in graph.inputs], {v.name for v in graph.outputs}, weights, sizes)


@dataclass
class Step:
    """One node as the memory walk sees it: its label and the names of the values it reads and writes.

    ``reads`` include the outer values its subgraphs capture.
    """

    label: str
    reads: list[str]
    writes: list[str]


def plan_memory(
    steps: list[Step],
    inputs: list[str],
    keep: Container[str],
    weights: Container[str],
    sizes: Mapping[str, int | None],
) -> MemoryPlan:
    """Walk ``steps`` (in run order) allocating and freeing activation buffers, by value name.

    ``inputs`` are allocated first; ``keep`` (the graph outputs) are never freed; ``weights``
    never count; ``sizes`` maps value names to bytes (None: unknown, counted as 0).
    """
    last_use: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in step.reads:
            last_use[name] = i
    live: dict[str, int] = {}
    unknown: list[str] = []

    def allocate(name: str) -> int:
        if not name or name in weights or name in live:
            return 0
        size = sizes.get(name)
        if size is None:
            unknown.append(name)
        live[name] = size or 0
        return size or 0

    total = sum(allocate(name) for name in inputs)
    peak, peak_node, per_node = total, None, []
    for i, step in enumerate(steps):
        total += sum(allocate(name) for name in step.writes)
        per_node.append(total)
        if total > peak:
            peak, peak_node = total, step.label
        done = [name for name in step.reads if last_use.get(name) == i]
        done += [name for name in step.writes if name not in last_use]
        for name in done:
            if name not in keep:
                total -= live.pop(name, 0)
    return MemoryPlan(peak, peak_node, per_node, unknown)
