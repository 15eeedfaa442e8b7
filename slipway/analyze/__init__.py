"""Static analysis: per-node MACs, FLOPs, parameters, bytes moved and peak activation memory.

``analyze(model, shapes)`` resolves dynamic dims (``shapes`` gives graph input shapes; a
remaining symbolic batch dim becomes 1), infers every intermediate shape, and applies the
cost formulas of :mod:`slipway.analyze.cost` to each node of the main graph in topological
order. Ops without a formula are reported as not counted (``macs is None``), never as zero.
"""

from __future__ import annotations

import onnx_ir as ir

from slipway.analyze.cost import Op, evaluate
from slipway.analyze.memory import peak_activation_memory, topological_order
from slipway.analyze.shapes import TensorInfo, infer_static_shapes, resolve_input_shapes
from slipway.analyze.types import Analysis, MachinePeaks, NodeCost
from slipway.model import SOURCE_KEY, ModelLike, as_model, is_weight, numel

__all__ = ["analyze", "Analysis", "NodeCost", "MachinePeaks"]


def analyze(model: ModelLike, shapes: dict[str, list[int]] | None = None) -> Analysis:
    """Static cost of every node of ``model`` at the input ``shapes`` (name -> dims).

    Raises :class:`slipway.errors.UserError` for a shape naming an unknown input, one of the
    wrong rank, or a dynamic dim left unresolved. The model is not modified.
    """
    m = as_model(model, infer_shapes=False)  # infer_static_shapes below does it at the resolved shapes
    input_shapes = resolve_input_shapes(m, shapes)
    table = infer_static_shapes(m, input_shapes)
    order = topological_order(m.graph)
    seen_weights: set[str] = set()
    nodes = [_node_cost(node, i, table, seen_weights) for i, node in enumerate(order)]
    sizes = {name: info.nbytes for name, info in table.items()}
    plan = peak_activation_memory(m.graph, order, sizes)
    not_counted = [n for n in nodes if not n.counted]
    summary = {
        "opsets": {(k or "ai.onnx"): v for k, v in sorted(m.opset_imports.items())},
        "outputs": {v.name: _shape_of(table.get(v.name)) for v in m.graph.outputs},
        "peak_activation_node": plan.peak_node,
        "unknown_size_values": plan.unknown,
        "not_counted_nodes": [n.name for n in not_counted],
    }
    return Analysis(
        model_path=m.meta.get(SOURCE_KEY),
        input_shapes=input_shapes,
        nodes=nodes,
        peak_activation_bytes=plan.peak_bytes,
        summary=summary,
    )


def _shape_of(info: TensorInfo | None) -> list[int] | None:
    return list(info.shape) if info is not None and info.shape is not None else None


def _node_cost(node: ir.Node, index: int, table: dict[str, TensorInfo], seen_weights: set[str]) -> NodeCost:
    """Cost, parameters and bytes moved of one node."""
    unknown = TensorInfo(None, None)
    ins = [table.get(v.name, unknown) if v is not None else None for v in node.inputs]
    outs = [table.get(v.name, unknown) for v in node.outputs]
    name = node.name or f"{node.op_type}_{index}"
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        return NodeCost(name, node.op_type, [], [v.name for v in node.outputs], 0, 0, note="constant")
    macs, flops, note = evaluate(Op(node, ins, outs))
    params = 0
    for v in node.inputs:
        if v is None or not v.is_initializer() or v.name in seen_weights or not is_weight(v.const_value):
            continue
        seen_weights.add(v.name)  # a shared weight counts once, at its first consumer
        params += numel(v.const_value)
    read, unknown_in = _bytes(ins)
    written, unknown_out = _bytes(outs)
    if unknown_in or unknown_out:
        extra = "size of some inputs/outputs unknown; bytes are a lower bound"
        note = f"{note}; {extra}" if note else extra
    return NodeCost(
        name=name,
        op_type=node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}",
        inputs=[v.name if v is not None else "" for v in node.inputs],
        outputs=[v.name for v in node.outputs],
        macs=macs,
        flops=flops,
        params=params,
        bytes_read=read,
        bytes_written=written,
        counted=macs is not None,
        note=note,
    )


def _bytes(infos: list[TensorInfo | None]) -> tuple[int, bool]:
    total, unknown = 0, False
    for info in infos:
        if info is None:
            continue
        n = info.nbytes
        if n is None:
            unknown = True
        else:
            total += n
    return total, unknown
