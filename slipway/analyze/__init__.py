"""Static analysis: per-node MACs, FLOPs, parameters, bytes moved and peak activation memory.

``analyze(model, shapes)`` resolves dynamic dims (``shapes`` gives graph input shapes; a
remaining symbolic batch dim becomes 1), infers every intermediate shape, and applies the
cost formulas of :mod:`slipway.analyze.cost` to each node of the main graph in topological
order. Ops without a formula are reported as not counted (``macs is None``), never as zero.
"""

from __future__ import annotations

from slipway.analyze._proto import ModelView, NodeView, model_view
from slipway.analyze.cost import Op, evaluate
from slipway.analyze.memory import MemoryPlan, Step, ordered, plan_memory
from slipway.analyze.shapes import TensorInfo, infer_static_shapes, resolve_input_shapes
from slipway.analyze.types import Analysis, MachinePeaks, NodeCost
from slipway.model import WEIGHT_DTYPES, ModelLike

__all__ = ["analyze", "Analysis", "NodeCost", "MachinePeaks"]

_UNKNOWN = TensorInfo(None, None)


def analyze(model: ModelLike, shapes: dict[str, list[int]] | None = None) -> Analysis:
    """Static cost of every node of ``model`` at the input ``shapes`` (name -> dims).

    Raises :class:`slipway.errors.UserError` for a shape naming an unknown input, one of the
    wrong rank, or a dynamic dim left unresolved. The model is not modified.
    """
    view = model_view(model)
    input_shapes = resolve_input_shapes(view, shapes)
    table = infer_static_shapes(view, input_shapes)
    order = [view.nodes[i] for i in ordered(_producers(view), [n.name or n.op_type for n in view.nodes])]
    sizes = {name: info.nbytes for name, info in table.items()}
    seen_weights: set[str] = set()
    nodes = [_node_cost(node, i, table, sizes, view.weights, seen_weights) for i, node in enumerate(order)]
    plan = _memory_plan(view, order, sizes)
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
    weights.update(o for node in view.nodes if node.op_type == "Constant" and node.domain in ("", "ai.onnx")
                   for o in node.outputs)
    return plan_memory(steps, [name for name, _ in view.inputs], set(view.outputs), weights, sizes)


def _shape_of(info: TensorInfo | None) -> list[int] | None:
    return list(info.shape) if info is not None and info.shape is not None else None


def _node_cost(
    node: NodeView,
    index: int,
    table: dict[str, TensorInfo],
    sizes: dict[str, int | None],
    weights: dict[str, TensorInfo | None],
    seen_weights: set[str],
) -> NodeCost:
    """Cost, parameters and bytes moved of one node; ``sizes`` maps value names to bytes (None: unknown)."""
    name = node.name or f"{node.op_type}_{index}"
    default_domain = node.domain in ("", "ai.onnx")
    if node.op_type == "Constant" and default_domain:
        return NodeCost(name, node.op_type, [], list(node.outputs), 0, 0, note="constant")
    ins = [table.get(v, _UNKNOWN) if v else None for v in node.inputs]
    outs = [table.get(v, _UNKNOWN) for v in node.outputs]
    macs, flops, note = evaluate(Op(node, ins, outs))
    params = 0
    for v in node.inputs:
        if v in seen_weights or v not in weights:
            continue
        info = weights[v]
        if info is None or info.dtype not in WEIGHT_DTYPES or info.shape is None or len(info.shape) == 0:
            continue
        seen_weights.add(v)  # a shared weight counts once, at its first consumer
        n = 1
        for d in info.shape:
            n *= d
        params += n
    read, unknown_in = _bytes([v for v in node.inputs if v], sizes)
    written, unknown_out = _bytes(node.outputs, sizes)
    if unknown_in or unknown_out:
        extra = "size of some inputs/outputs unknown; bytes are a lower bound"
        note = f"{note}; {extra}" if note else extra
    return NodeCost(
        name=name,
        op_type=node.op_type if default_domain else f"{node.domain}::{node.op_type}",
        inputs=list(node.inputs),
        outputs=list(node.outputs),
        macs=macs,
        flops=flops,
        params=params,
        bytes_read=read,
        bytes_written=written,
        counted=macs is not None,
        note=note,
    )


def _bytes(names: list[str], sizes: dict[str, int | None]) -> tuple[int, bool]:
    """Total bytes of the named values, and whether the size of any of them is unknown."""
    total, unknown = 0, False
    for name in names:
        n = sizes.get(name)
        if n is None:
            unknown = True
        else:
            total += n
    return total, unknown
