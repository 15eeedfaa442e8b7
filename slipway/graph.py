"""The graph toolkit: what every stage that edits an ``onnx_ir`` model uses.

One rule for each question a rewrite asks, so that passes and quantization agree:

- **constants** - :func:`const_tensor` / :func:`const` / :func:`float_const`: an initializer that
  is *not* also a graph input (a caller may feed another value), or a ``Constant`` node's output;
  ``None`` for anything that may change at run time. Read with ``.numpy()``, so external and lazy
  tensors work; ``limit`` (elements) keeps weights from being read where only small ones matter.
- **names** - :func:`label` names a node in messages; :class:`Names` makes fresh value / node
  names, unique across the model and its subgraphs.
- **editing** - :func:`add_initializer`, :func:`node_like`, :func:`replace`, :func:`remove_dead`
  (one dead-code rule: a value is dead when no node reads it, it is not a graph input or output,
  and a node is dead when all its outputs are; nodes holding subgraphs are kept).
- **traversal** - ``ir.Model.graphs()`` for every graph; :func:`all_nodes` adds functions.
- **attributes** - :func:`attr_int`, :func:`attr_ints`, :func:`attr_float`, :func:`attr_str`.
- **shapes** - :func:`infer_node` (onnx inference for one node, never loses what was known).
- **copies** - :func:`copy_model` (``Model.clone``: new nodes and values, tensors shared; through the
  protobuf only when cloning cannot), the one way to copy a model.
- **weights** - :func:`out_channels` and :func:`quantize_weight` (symmetric int8), shared by the
  fusion passes and quantization.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

__all__ = [
    "FLOAT_DTYPES", "WEIGHT_QMAX", "const_tensor", "const", "float_const", "is_op", "label", "Names",
    "add_initializer", "node_like", "only_used_by", "sole_user", "other_user", "replace", "is_dead", "remove_dead", "all_nodes",
    "default_opset", "attr_int", "attr_ints", "attr_float", "attr_str", "is_known_dim", "infer_node", "copy_model",
    "out_channels", "quantize_weight",
]

FLOAT_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16"})
WEIGHT_QMAX = 127  # symmetric int8 weights in [-127, 127] (the TensorRT convention)
_SUBGRAPH_ATTRS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


# --- constants ----------------------------------------------------------------------------------

def const_tensor(value: ir.Value | None, limit: int | None = None) -> ir.TensorProtocol | None:
    """The value's constant tensor: an initializer that is not also a graph input, or a Constant
    node's output; None when it may change at run time, or has more than ``limit`` elements."""
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:  # a Constant whose attribute cannot be read as a tensor
        return None
    if tensor is None or (limit is not None and tensor.size > limit):
        return None
    return tensor


def const(value: ir.Value | None, limit: int | None = None) -> np.ndarray | None:
    """:func:`const_tensor` as a numpy array."""
    tensor = const_tensor(value, limit)
    return None if tensor is None else np.asarray(tensor.numpy())


def float_const(value: ir.Value | None, limit: int | None = None) -> np.ndarray | None:
    """:func:`const`, but only for floating-point tensors."""
    array = const(value, limit)
    return array if array is not None and array.dtype.name in FLOAT_DTYPES else None


# --- names --------------------------------------------------------------------------------------

def is_op(node: ir.Node | None, *op_types: str) -> bool:
    """A default-domain node of one of ``op_types``."""
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in op_types


def label(node: ir.Node) -> str:
    """How messages name a node: its op type and name, or the value it produces when unnamed."""
    if node.name:
        return f"{node.op_type} {node.name!r}"
    out = node.outputs[0].name if node.outputs else None
    return f"{node.op_type} (producing {out!r})" if out else f"{node.op_type} (unnamed)"


class Names:
    """Fresh names, unique across the model and its subgraphs (values, initializers and nodes):
    ``names("w")`` is ``"w"`` when free, else ``"w_1"``, ``"w_2"``..."""

    def __init__(self, model: ir.Model) -> None:
        self.used: set[str] = set()
        for graph in model.graphs():
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

    def release(self, name: str | None) -> None:
        """``name`` is free again (what held it was removed)."""
        if name:
            self.used.discard(name)


# --- editing ------------------------------------------------------------------------------------

def add_initializer(graph: ir.Graph, name: str, data: np.ndarray | ir.TensorProtocol) -> ir.Value:
    """Register ``data`` (an array, copied as is - a 0-d array stays a scalar -, or a tensor, shared)
    as a new initializer ``name`` of ``graph`` (take the name from :class:`Names`)."""
    if not isinstance(data, ir.TensorProtocol):
        data = ir.tensor(np.array(data, copy=True, order="C"), name=name)
    value = ir.Value(name=name, shape=ir.Shape(data.shape), type=ir.TensorType(data.dtype), const_value=data)
    graph.register_initializer(value)
    return value


def node_like(old: ir.Node, op_type: str, inputs: Sequence[ir.Value | None], attrs: Iterable[ir.Attr],
              name: str | None = None) -> ir.Node:
    """A new one-output node in ``old``'s domain and opset, named after it."""
    return ir.Node(old.domain, op_type, list(inputs), [ir.Attr(a.name, a.type, a.value) for a in attrs],
                   version=old.version, name=name if name is not None else old.name,
                   metadata_props=dict(old.metadata_props))


def only_used_by(value: ir.Value, node: ir.Node) -> bool:
    """The value feeds ``node`` and nothing else (no other node, not a graph output), and is made
    in ``node``'s graph (so that its producer and ``node`` can be replaced together)."""
    producer = value.producer()
    return (not value.is_graph_output() and all(use.node is node for use in value.uses())
            and (producer is None or producer.graph is node.graph))


def sole_user(value: ir.Value) -> ir.Node | None:
    """The one node that reads ``value`` (in the same graph), or None (no reader, several, or a graph output)."""
    if value.is_graph_output():
        return None
    users = {id(use.node): use.node for use in value.uses()}
    if len(users) != 1:
        return None
    (node,) = users.values()
    return node if node.graph is not None and node.graph is value.graph else None


def other_user(value: ir.Value, node: ir.Node) -> str:
    """Who else reads ``value`` besides ``node`` (for messages)."""
    if value.is_graph_output():
        return "a graph output"
    others = [use.node for use in value.uses() if use.node is not node]
    return label(others[0]) if others else "nothing"


def replace(graph: ir.Graph, old_nodes: Sequence[ir.Node], new_nodes: Sequence[ir.Node], old_out: ir.Value,
            new_out: ir.Value, renames: Sequence[tuple[ir.Value, ir.Value | None]] = ()) -> None:
    """Put ``new_nodes`` (computing ``new_out``) in place of ``old_nodes`` (computing ``old_out``),
    remove what fed only the old nodes (:func:`remove_dead`), and give each new initializer of
    ``renames`` the name of the old value it replaced when that name became free."""
    inputs = [v for n in old_nodes for v in n.inputs if v is not None]
    producer = old_out.producer()
    assert producer is not None  # an output of the matched pattern
    ir.convenience.replace_nodes_and_values(graph, producer, list(old_nodes), list(new_nodes), [old_out], [new_out])
    dropped = remove_dead(inputs)
    for new, old in renames:
        if old is not None and old.name in dropped:
            new.name = old.name


def is_dead(node: ir.Node) -> bool:
    """No node reads any of its outputs and none is a graph output."""
    return all(not v.uses() and not v.is_graph_output() for v in node.outputs)


def remove_dead(seeds: Iterable[ir.Node | ir.Value]) -> set[str]:
    """Remove those of ``seeds`` that nothing reads any more, then what only they read, transitively.

    A value is dead when no node (subgraph nodes included: a captured value is read) reads it and
    it is neither a graph input nor a graph output; a dead initializer is unregistered, a dead
    node output leads to its producer. A node is dead when all its outputs are; one that holds
    subgraphs (If/Loop/Scan) is kept. Returns the names of the initializers removed.
    """
    dropped: set[str] = set()
    stack = list(seeds)
    while stack:
        item = stack.pop()
        if isinstance(item, ir.Value):
            if item.uses() or item.is_graph_output() or item.is_graph_input():
                continue
            graph = item.graph
            if item.is_initializer():
                if graph is not None and graph.initializers.get(item.name) is item:
                    graph.initializers.pop(item.name)
                    dropped.add(item.name)
            elif item.producer() is not None:
                stack.append(item.producer())
            continue
        node = item
        if node.graph is None or not is_dead(node) or any(a.type in _SUBGRAPH_ATTRS for a in node.attributes.values()):
            continue
        inputs = [v for v in node.inputs if v is not None]
        node.graph.remove(node, safe=True)
        stack.extend(reversed(inputs))
    return dropped


# --- traversal and attributes -------------------------------------------------------------------

def all_nodes(model: ir.Model) -> list[ir.Node]:
    """Every node: main graph and its subgraphs (each body right after the node holding it), then functions."""
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    for f in model.functions.values():
        nodes.extend(ir.traversal.RecursiveGraphIterator(f))
    return nodes


def default_opset(model: ir.Model) -> int | None:
    """The model's default-domain (``""`` or ``"ai.onnx"``) opset; None when it imports none."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def attr_ints(node: ir.Node, name: str, default: Sequence[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else list(default)


def attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return attr.as_float() if attr is not None else default


def attr_str(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    return attr.as_string() if attr is not None else default


# --- shapes -------------------------------------------------------------------------------------

def is_known_dim(d: object) -> bool:
    """A number or a named symbol (not an anonymous dim)."""
    return isinstance(d, int) or getattr(d, "value", None) is not None


def _more_known(new: ir.Shape | None, old: ir.Shape | None) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    return len(new) == len(old) and sum(map(is_known_dim, new)) > sum(map(is_known_dim, old))


def _type_proto(value: ir.Value) -> onnx.TypeProto | None:
    t = value.const_value
    dtype, shape = (value.dtype, value.shape) if t is None else (t.dtype, t.shape)
    if dtype is None:
        return None
    proto = ir.serde.serialize_type(ir.TensorType(dtype))
    if shape is not None:
        ir.serde.serialize_shape_into(proto, shape)
    return proto


def infer_node(node: ir.Node, opset: int) -> bool:
    """onnx shape inference for one default-domain node (small constant inputs passed as data).

    Output shapes are replaced only by more informative ones; returns whether any was.
    """
    inputs = [v for v in node.inputs if v is not None]
    types = {v.name: _type_proto(v) for v in inputs}
    if node.domain not in ("", "ai.onnx") or any(t is None for t in types.values()) or any(
            a.type in _SUBGRAPH_ATTRS for a in node.attributes.values()):
        return False
    data = {}
    for v in inputs:
        t = const_tensor(v, limit=64)
        if t is not None:
            data[v.name] = ir.serde.serialize_tensor(t)
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
        inferred = onnx.shape_inference.infer_node_outputs(schema, ir.serde.serialize_node(node), types, data)
    except Exception:  # no schema, or onnx cannot infer: nothing learned
        return False
    improved = False
    for out in node.outputs:
        if out.name not in inferred:
            continue
        if out.dtype is None:
            out.type = ir.serde.deserialize_type_proto_for_type(inferred[out.name])
        shape = ir.serde.deserialize_type_proto_for_shape(inferred[out.name])
        if _more_known(shape, out.shape):
            out.shape = shape
            improved = True
    return improved


# --- copies -------------------------------------------------------------------------------------

def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy of ``model``: new graphs, nodes and values (editing one never changes
    the other), tensors shared (never modified in place by slipway; external weights stay where
    they are), ``meta`` copied. ``Model.clone`` is O(nodes); a graph it cannot clone (nodes out of
    topological order) goes through the protobuf, which copies in-memory tensor bytes."""
    try:
        new = model.clone()
    except (RuntimeError, ValueError):
        new = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        base = next((v.const_value.base_dir for v in model.graph.initializers.values()
                     if isinstance(v.const_value, ir.ExternalTensor)), None)
        if base is not None:  # external data paths are relative to the model's folder
            ir.external_data.set_base_dir(new.graph, base)
    new.meta.update(model.meta)
    return new


# --- weights ------------------------------------------------------------------------------------

def out_channels(op_type: str, w: np.ndarray, group: int = 1, trans_b: int = 0) -> int:
    """Output channels of a Conv ([O, I/g, k..]), ConvTranspose ([I, O/g, k..]) or Gemm weight."""
    if op_type == "Conv":
        return w.shape[0]
    if op_type == "ConvTranspose":
        return w.shape[1] * group
    return w.shape[0] if trans_b else w.shape[1]


def quantize_weight(w: np.ndarray, axis: int | None, qmax: int = WEIGHT_QMAX) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 ``(q, scale)`` of ``w`` with ``|q| <= qmax``: per slice along ``axis`` (scale of
    shape ``[w.shape[axis]]``) or per tensor (``axis=None``, scalar scale). An all-zero slice gets scale 1."""
    w64 = np.asarray(w, dtype=np.float64)
    if axis is None:
        amax = np.asarray(np.abs(w64).max() if w64.size else 0.0)
    else:
        amax = np.abs(np.moveaxis(w64, axis, 0)).reshape(w64.shape[axis], -1).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w64.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.round(w64 / scale.astype(np.float64).reshape(shape)), -qmax, qmax)
    return q.astype(np.int8), scale
