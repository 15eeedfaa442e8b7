"""Static analysis: per-node MACs, FLOPs, parameters, bytes moved and peak activation memory.

``analyze(model, shapes)`` resolves dynamic dims (``shapes`` gives graph input shapes; a
remaining symbolic batch dim becomes 1), infers every intermediate shape, and applies the
cost formulas of :mod:`slipway.analyze.cost` to each node of the main graph in topological
order. Ops without a formula are reported as not counted (``macs is None``), never as zero.
An If / Loop / Scan node's costs include the nodes of its subgraphs, typed by the walk of
:mod:`slipway.analyze.scopes`; parameters are the weights held by initializers and Constant
nodes, subgraphs included, each counted once.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from slipway.analyze._proto import ModelView, NodeView, all_nodes, model_view
from slipway.analyze.cost import Op, evaluate
from slipway.analyze.memory import MemoryPlan, Step, ordered, plan_memory
from slipway.analyze.scopes import Scope, main_scope
from slipway.analyze.shapes import ValueInfo, infer_static_shapes, resolve_input_shapes
from slipway.analyze.types import Analysis, MachinePeaks, NodeCost, SubgraphCost
from slipway.model import KNOWN_DOMAINS, ModelLike, check, is_weight, load

__all__ = ["analyze", "Analysis", "NodeCost", "MachinePeaks"]

_DEFAULT = ("", "ai.onnx")


def analyze(model: ModelLike, shapes: dict[str, list[int]] | None = None) -> Analysis:
    """Static cost of every node of ``model`` at the input ``shapes`` (name -> dims).

    Raises :class:`slipway.errors.UserError` for a shape naming an unknown input, one of the
    wrong rank, or a dynamic dim left unresolved, and for what :func:`slipway.model.load`
    rejects (an op from an unknown domain). The model is not modified.
    """
    view = model_view(model)
    _validate(view, model)
    input_shapes = resolve_input_shapes(view, shapes)
    indices = ordered(_producers(view), [n.name or n.op_type for n in view.nodes])
    table, scope = _static_shapes(view, input_shapes, indices)
    order = [view.nodes[i] for i in indices]
    nodes = _main_costs(view, scope, indices)
    plan = _memory_plan(view, order, {name: info.nbytes for name, info in table.items()})
    not_counted = [n for n in nodes if not n.counted]
    summary = {
        "opsets": {(k or "ai.onnx"): v for k, v in sorted(view.opsets.items())},
        "outputs": {name: _shape_of(table.get(name)) for name in view.outputs},
        "peak_activation_node": plan.peak_node,
        "unknown_size_values": plan.unknown,
        "not_counted_nodes": [n.name for n in not_counted],
    }
    return Analysis(
        model_path=view.path,
        input_shapes=input_shapes,
        nodes=nodes,
        peak_activation_bytes=plan.peak_bytes,
        summary=summary,
    )


def _validate(view: ModelView, model: ModelLike) -> None:
    """Apply :func:`slipway.model.check` (the loader's validation) where the fast read would skip it.

    Only when the graph uses a domain the loader would reject (``KNOWN_DOMAINS``, model-local
    functions aside): then the error is the loader's own, as ``info`` / ``optimize`` give it.
    """
    functions = {(f.domain, f.name) for f in view.light.functions}
    if all(n.domain in KNOWN_DOMAINS or (n.domain, n.op_type) in functions for n in all_nodes(view.light.graph)):
        return
    if isinstance(model, ir.Model):
        check(model)
    elif isinstance(model, onnx.ModelProto):
        check(ir.serde.deserialize_model(model))
    else:
        load(model)  # raises the same one-line UserError as every other command


def _static_shapes(
    view: ModelView, input_shapes: dict[str, list[int]], order: list[int]
) -> tuple[dict[str, ValueInfo], Scope]:
    """Shapes of the main graph and the scope that types its subgraphs too.

    ONNX inference types the main graph; the walk of :func:`slipway.analyze.scopes.main_scope`
    then types what it could not: If / Loop / Scan bodies and outputs, and values whose shape
    hangs on constants computed from shapes, with everything after them.
    """
    table = infer_static_shapes(view, input_shapes)
    return table, main_scope(view.light.graph, table, view.opsets, view.weights, order)


def _main_costs(view: ModelView, scope: Scope, indices: list[int]) -> list[NodeCost]:
    """Costs of the main graph's nodes in run order (``indices``); a weight shared anywhere counts once."""
    seen: set[tuple[int, str]] = set()
    opset = view.opsets.get("", view.opsets.get("ai.onnx", 0))
    out = []
    for k, i in enumerate(indices):
        node = view.nodes[i]
        out.append(_node_cost(node, node.name or f"{node.op_type}_{k}", scope, scope.children.get(i, {}), seen, opset))
    return out


def _producers(view: ModelView) -> list[set[int]]:
    """For each node, the indices of the main-graph nodes whose outputs it (or its subgraphs) reads."""
    producer = {name: i for i, node in enumerate(view.nodes) for name in node.outputs if name}
    return [
        {producer[name] for name in (*node.inputs, *node.captured) if name in producer} for node in view.nodes
    ]


def _memory_plan(view: ModelView, order: list[NodeView], sizes: dict[str, int | None]) -> MemoryPlan:
    steps = [
        Step(node.name or f"{node.op_type}_{i}", [n for n in (*node.inputs, *node.captured) if n], node.outputs)
        for i, node in enumerate(order)
    ]
    weights = set(view.weights) | view.constants
    weights.update(o for node in view.nodes if node.op_type == "Constant" and node.domain in _DEFAULT
                   for o in node.outputs)
    return plan_memory(steps, [name for name, _ in view.inputs], set(view.outputs), weights, sizes)


def _shape_of(info: ValueInfo | None) -> list[int] | None:
    return list(info.shape) if info is not None and info.shape is not None else None


def _node_cost(
    node: NodeView, name: str, scope: Scope, inner: dict[str, Scope], seen: set[tuple[int, str]], opset: int
) -> NodeCost:
    """Cost, parameters and bytes moved of one node; ``inner`` are the scopes of its subgraphs."""
    default_domain = node.domain in _DEFAULT
    if node.op_type == "Constant" and default_domain:
        return NodeCost(name, node.op_type, [], list(node.outputs), 0, 0, note="constant")
    ins = [scope.type_of(v) if v else None for v in node.inputs]
    outs: list[ValueInfo | None] = [scope.type_of(v) for v in node.outputs]
    bodies = {attr: _subgraph_cost(child, seen, opset) for attr, child in inner.items()}
    c, note = evaluate(Op(node, ins, outs, bodies, scope.value_of, opset))
    # Weights read inside subgraphs count at their consumers there; unwalked subgraphs count here.
    params = _params([*node.inputs, *([] if inner else node.captured)], scope, seen)
    params += sum(b.params for b in bodies.values())
    if c is not None and c.bytes_moved is not None:
        (read, written), unknown = c.bytes_moved, False
    else:
        read, unknown_in = _bytes([v for v in node.inputs if v], scope)
        written, unknown_out = _bytes(node.outputs, scope)
        unknown = unknown_in or unknown_out
    if unknown:
        extra = "size of some inputs/outputs unknown; bytes are a lower bound"
        note = f"{note}; {extra}" if note else extra
    return NodeCost(
        name=name,
        op_type=node.op_type if default_domain else f"{node.domain}::{node.op_type}",
        inputs=list(node.inputs),
        outputs=list(node.outputs),
        macs=None if c is None else c.macs,
        flops=None if c is None else c.flops,
        params=params,
        bytes_read=read,
        bytes_written=written,
        counted=c is not None,
        note=note,
        trip_count=None if c is None else c.trip_count,
        trip_count_unknown=c is not None and c.trip_count_unknown,
        not_counted_inside=[] if c is None else c.not_counted,
    )


def _subgraph_cost(scope: Scope, seen: set[tuple[int, str]], opset: int) -> SubgraphCost:
    """The summed cost of one walked subgraph (nested control flow included), run once."""
    total = SubgraphCost(notes=list(scope.notes))
    for i, proto in enumerate(scope.graph.node):
        node = NodeView.from_proto(proto)
        name = node.name or f"{node.op_type}_{i}"
        total.add(_node_cost(node, name, scope, scope.children.get(i, {}), seen, opset))
    return total


def _params(names: list[str], scope: Scope, seen: set[tuple[int, str]]) -> int:
    """Parameters among the named values not counted yet: a shared weight counts once, at its first consumer.

    A parameter is what ``slipway info`` counts (:func:`slipway.model.is_weight`): a float or
    low-bit integer tensor of rank >= 1 held by an initializer or a Constant node.
    """
    total = 0
    for v in names:
        found = scope.weight_of(v) if v else None
        if found is None:
            continue
        owner, info = found
        key = (id(owner), v)
        if key in seen or not is_weight(info):  # ValueInfo has the dtype and shape is_weight reads
            continue
        seen.add(key)
        total += info.numel or 0
    return total


def _bytes(names: list[str], scope: Scope) -> tuple[int, bool]:
    """Total bytes of the named values, and whether the size of any of them is unknown."""
    total, unknown = 0, False
    for name in names:
        n = scope.type_of(name).nbytes
        if n is None:
            unknown = True
        else:
            total += n
    return total, unknown
