"""Cleanup passes: ``remove-dead``, ``dedup-initializers`` and ``cse``.

``remove-dead`` is onnx_ir's unused-node / unused-function / unused-opset passes plus unused
initializers of subgraphs, counted. ``dedup-initializers`` and ``cse`` are our own: onnx_ir's
versions read every initializer's bytes (ours hashes only tensors that share dtype and shape,
through the memory map for external data) and walk only the main graph (ours walks If/Loop/Scan
bodies too).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from slipway.graph import all_nodes, remove_dead
from slipway.passes.base import Pass, PassResult, register

_NON_DETERMINISTIC = frozenset({"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial",
                                "Bernoulli"})


def _census(model: ir.Model) -> dict[object, int]:
    """Counts to diff: per graph-like (main graph with its bodies, each function) nodes and opset imports."""
    counts: dict[object, int] = {
        "initializer": sum(len(g.initializers) for g in model.graphs()),
        "function": len(model.functions),
        ("node", None): sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph)),
        ("opset", None): len(model.opset_imports),
    }
    for key, f in model.functions.items():
        counts[("node", key)] = sum(1 for _ in ir.traversal.RecursiveGraphIterator(f))
        counts[("opset", key)] = len(f.opset_imports)
    return counts


def _removed(before: dict[object, int], after: dict[object, int]) -> dict[str, int]:
    """Differences, by kind; what a removed function held counts only as that function."""
    out = {"node": 0, "initializer": 0, "function": 0, "opset": 0}
    for key, n in after.items():
        kind = key[0] if isinstance(key, tuple) else key
        out[kind] += before[key] - n
    return out


def _remove_unused_subgraph_initializers(model: ir.Model) -> None:
    # RemoveUnusedNodesPass handles the main graph
    remove_dead([v for graph in model.graphs() if graph is not model.graph for v in graph.initializers.values()])


@register
class RemoveDead(Pass):
    """f(x) with no reader -> nothing (dead nodes, unused initializers, functions and opsets; graph inputs kept)."""

    name = "remove-dead"

    def run(self, model: ir.Model) -> PassResult:
        outputs = {id(n): len(n.outputs) for n in all_nodes(model)}
        before = _census(model)
        RemoveUnusedNodesPass()(model)
        _remove_unused_subgraph_initializers(model)
        RemoveUnusedFunctionsPass()(model)
        RemoveUnusedOpsetsPass()(model)
        changes = _removed(before, _census(model))
        changes["optional-output"] = sum(outputs[id(n)] - len(n.outputs) for n in all_nodes(model) if id(n) in outputs)
        return PassResult(model, False, changes)


def _digest(tensor: ir.TensorProtocol) -> str:
    h = hashlib.sha256()
    if tensor.dtype == ir.DataType.STRING:
        for s in tensor.string_data():
            h.update(len(s).to_bytes(8, "little"))
            h.update(s)
        return h.hexdigest()
    try:
        array = np.ascontiguousarray(tensor.numpy())  # a memory map for external data: no copy
        h.update(array.reshape(-1).view(np.uint8))
    except (TypeError, ValueError):
        h.update(tensor.tobytes())
    return h.hexdigest()


def _dedup_graph(graph: ir.Graph) -> int:
    groups: dict[tuple, list[ir.Value]] = defaultdict(list)
    for v in graph.initializers.values():
        t = v.const_value
        if t is None or v.is_graph_input() or v.is_graph_output():
            continue  # an overridable input or an output keeps its own name
        groups[(t.dtype, tuple(t.shape))].append(v)
    merged = 0
    for group in groups.values():
        if len(group) < 2:
            continue
        keep: dict[str, ir.Value] = {}
        for v in group:
            key = _digest(v.const_value)
            if key not in keep:
                keep[key] = v
                continue
            v.replace_all_uses_with(keep[key])
            graph.initializers.pop(v.name)
            merged += 1
    return merged


@register
class DedupInitializers(Pass):
    """init_a, init_b with equal dtype, shape and bytes -> init_a used for both."""

    name = "dedup-initializers"

    def run(self, model: ir.Model) -> PassResult:
        merged = sum(_dedup_graph(g) for g in model.graphs())
        return PassResult(model, bool(merged), {"initializer": merged})


def _attr_key(attr: ir.Attr, tensor_limit: int) -> object | None:
    """A hashable key for an attribute value, or None when the node should not be merged."""
    if attr.is_ref():
        return ("ref", attr.ref_attr_name)
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return None
    value = attr.value
    if attr.type == ir.AttributeType.TENSOR:
        if value.size > tensor_limit:
            return None
        return (tuple(value.shape), str(value.dtype), _digest(value))
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, (int, float, str, bytes)):
        return value
    return None


def _node_key(node: ir.Node, tensor_limit: int) -> tuple | None:
    if node.op_type in _NON_DETERMINISTIC and node.domain in ("", "ai.onnx"):
        return None
    if not node.outputs:
        return None
    attrs = []
    for name, attr in sorted(node.attributes.items()):
        key = _attr_key(attr, tensor_limit)
        if key is None:
            return None
        attrs.append((name, key))
    return (node.domain, node.op_type, node.overload, len(node.outputs),
            tuple(id(v) if v is not None else None for v in node.inputs), tuple(attrs))


def _replace_outputs(graph: ir.Graph | ir.Function, node: ir.Node, keep: ir.Node) -> None:
    """Point every reader of ``node``'s outputs at ``keep``'s; graph outputs keep their names."""
    for old, new in zip(node.outputs, keep.outputs, strict=True):
        for i, out in enumerate(graph.outputs):
            if out is not old:
                continue
            if new.is_graph_output() or new.is_graph_input():
                identity = ir.Node("", "Identity", [new], outputs=[ir.Value(name=old.name, type=old.type,
                                                                            shape=old.shape)])
                graph.insert_before(node, identity)
                graph.outputs[i] = identity.outputs[0]
            else:
                new.name = old.name
                graph.outputs[i] = new
        old.replace_all_uses_with(new)
    graph.remove(node, safe=True)


def cse_graph(graph: ir.Graph | ir.Function, tensor_limit: int) -> int:
    seen: dict[tuple, ir.Node] = {}
    merged = 0
    for node in list(graph):
        key = _node_key(node, tensor_limit)
        if key is None:
            continue
        if key in seen:
            _replace_outputs(graph, node, seen[key])
            merged += 1
        else:
            seen[key] = node
    return merged


@register
class CommonSubexpressions(Pass):
    """op(x, a) ... op(x, a) -> one op(x, a) read twice (in subgraphs too; random ops and big constants kept)."""

    name = "cse"

    def __init__(self, *, tensor_limit: int = 1024) -> None:
        self.tensor_limit = tensor_limit

    def run(self, model: ir.Model) -> PassResult:
        merged = sum(cse_graph(g, self.tensor_limit) for g in model.graphs())
        merged += sum(cse_graph(f, self.tensor_limit) for f in model.functions.values())
        return PassResult(model, bool(merged), {"node": merged})


__all__ = ["RemoveDead", "DedupInitializers", "CommonSubexpressions", "cse_graph"]
