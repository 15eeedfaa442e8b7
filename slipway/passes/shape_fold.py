"""``fold-shape-subgraphs``: the shape arithmetic exporters emit, computed at optimization time.

``x.view(x.size(0), -1)`` under a dynamic batch exports (legacy exporter) as
``Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))``. Each element of such a shape
vector is tracked as a number or as "dim i of tensor t"; the Reshape then gets a constant shape:

- a static dim becomes its number;
- dim i of the Reshape's own input (or of a tensor whose dim i has the same symbolic name) at
  output position i becomes 0, which ONNX Reshape reads as "copy input dim i" — only with
  ``allowzero=0`` and only at the same position;
- one dim that is neither becomes -1 (Reshape infers it), if the shape has no -1 yet.

Shape-vector values whose elements are all static (Shape of a fully static tensor, a Gather of
its static dims...) become constants. The Shape/Gather/... nodes left without readers go.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from slipway.graph import Names, add_initializer, all_nodes, const, default_opset, infer_node, label, remove_dead
from slipway.passes.base import Pass, PassResult, register
from slipway.passes.eliminate import SMALL, axes_of

Dim = int | tuple[ir.Value, int]  # a number, or dim i of a tensor
_ARITHMETIC = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
               "Div": lambda a, b: abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)}  # C-style, as ONNX
_SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Identity", *_ARITHMETIC})
_MAX_DEPTH = 32


class ShapeVector:
    """What a small int64 tensor holds, element by element (``scalar``: rank 0)."""

    def __init__(self, dims: list[Dim], scalar: bool = False) -> None:
        self.dims, self.scalar = dims, scalar

    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.dims)


def _dim(x: ir.Value, i: int) -> Dim:
    d = x.shape[i]
    return d if isinstance(d, int) else (x, i)


def _from_shape(node: ir.Node) -> ShapeVector | None:
    x = node.inputs[0]
    if x is None or x.shape is None:
        return None
    r = len(x.shape)
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", r)
    return ShapeVector([_dim(x, i) for i in range(r)[slice(start, end)]])


def _gather(node: ir.Node, depth: int) -> ShapeVector | None:
    data, index = evaluate(node.inputs[0], depth), const(node.inputs[1], SMALL)
    if data is None or data.scalar or index is None or index.ndim > 1 or node.attributes.get_int("axis", 0) != 0:
        return None
    n = len(data.dims)
    picks = [int(i) + n if int(i) < 0 else int(i) for i in index.reshape(-1)]
    if any(not 0 <= i < n for i in picks):
        return None
    return ShapeVector([data.dims[i] for i in picks], scalar=index.ndim == 0)


def _slice(node: ir.Node, depth: int) -> ShapeVector | None:
    data = evaluate(node.inputs[0], depth)
    args = [const(v, SMALL) if v is not None else None for v in node.inputs[1:5]]
    if data is None or data.scalar or len(args) < 2 or args[0] is None or args[1] is None:
        return None
    axes = args[2] if len(args) > 2 else None
    steps = args[3] if len(args) > 3 else None
    if args[0].size != 1 or (axes is not None and int(axes.reshape(-1)[0]) not in (0, -1)):
        return None
    step = 1 if steps is None else int(steps.reshape(-1)[0])
    if step != 1:
        return None
    return ShapeVector(data.dims[int(args[0].reshape(-1)[0]):int(args[1].reshape(-1)[0])])


def _arithmetic(node: ir.Node, depth: int) -> ShapeVector | None:
    """Add/Sub/Mul/Div of static shape values (a head count from a hidden size, ...)."""
    a, b = (evaluate(v, depth) for v in node.inputs[:2])
    if a is None or b is None or not a.static() or not b.static():
        return None
    if len(a.dims) != len(b.dims) and 1 not in (len(a.dims), len(b.dims)):
        return None
    n = max(len(a.dims), len(b.dims))
    xs, ys = (v.dims * n if len(v.dims) == 1 else v.dims for v in (a, b))
    if node.op_type == "Div" and 0 in ys:
        return None
    return ShapeVector([_ARITHMETIC[node.op_type](x, y) for x, y in zip(xs, ys, strict=True)], a.scalar and b.scalar)


def _producer_value(node: ir.Node, depth: int) -> ShapeVector | None:
    op = node.op_type
    first = node.inputs[0] if node.inputs else None
    if op in _ARITHMETIC:
        return _arithmetic(node, depth) if len(node.inputs) == 2 else None
    if op == "Shape":
        return _from_shape(node)
    if op == "Gather":
        return _gather(node, depth)
    if op == "Slice":
        return _slice(node, depth)
    if op == "Concat":
        parts = [evaluate(v, depth) for v in node.inputs]
        if any(p is None or p.scalar for p in parts) or node.attributes.get_int("axis", 0) not in (0, -1):
            return None
        return ShapeVector([d for p in parts for d in p.dims])
    inner = evaluate(first, depth)
    if inner is None:
        return None
    if op == "Identity" or (op == "Cast" and node.attributes.get_int("to", 0) == ir.DataType.INT64):
        return inner
    if op == "Unsqueeze" and inner.scalar and axes_of(node) in ([0], [-1]):
        return ShapeVector(inner.dims)
    if op == "Squeeze" and not inner.scalar and len(inner.dims) == 1 and axes_of(node) in (None, [0], [-1]):
        return ShapeVector(inner.dims, scalar=True)
    return None


def evaluate(value: ir.Value | None, depth: int = 0) -> ShapeVector | None:
    """The elements of an int64 shape-like value, or None when they cannot be tracked."""
    if value is None or depth > _MAX_DEPTH:
        return None
    array = const(value, SMALL)
    if array is not None:
        if array.ndim > 1 or array.dtype != np.int64 or array.size > 64:
            return None
        return ShapeVector([int(v) for v in array.reshape(-1)], scalar=array.ndim == 0)
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in _SHAPE_OPS:
        return None
    if value.dtype not in (None, ir.DataType.INT64):
        return None
    return _producer_value(node, depth + 1)


def _same_dim(a: ir.Value, i: int, b: ir.Value, j: int) -> bool:
    if a is b:
        return i == j
    if a.shape is None or b.shape is None or i >= len(a.shape) or j >= len(b.shape):
        return False
    da, db = a.shape[i], b.shape[j]
    return not isinstance(da, int) and da.value is not None and da.value == db.value


def constant_shape(node: ir.Node) -> tuple[list[int] | None, str]:
    """A constant shape equivalent to a Reshape's computed one, or None and why not."""
    data, vector = node.inputs[0], evaluate(node.inputs[1])
    if vector is None or vector.scalar:
        return None, "its shape is not built from Shape/Gather/Concat/... of known tensors"
    allowzero = node.attributes.get_int("allowzero", 0)
    out: list[int | None] = []
    for p, d in enumerate(vector.dims):
        if isinstance(d, int):
            out.append(d)
        elif not allowzero and _same_dim(d[0], d[1], data, p):
            out.append(0)
        else:
            out.append(None)
    unknown = out.count(None)
    if unknown > 1 or (unknown == 1 and -1 in out):
        return None, f"{unknown} dims are neither static nor input dim i at position i"
    return [-1 if d is None else d for d in out], ""


class _Writer:
    """Puts constants into the graph they are read in: initializers in the main graph, Constant nodes in bodies."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.name = Names(model)

    def constant(self, before: ir.Node, array: np.ndarray, base: str) -> ir.Value:
        graph = before.graph
        if graph is self.model.graph and (self.model.ir_version or 8) >= 4:
            return add_initializer(graph, self.name(base), array)
        constant = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(array))], name=self.name(base))
        constant.outputs[0].name = constant.name
        graph.insert_before(before, constant)
        return constant.outputs[0]


@register
class FoldShapeSubgraphs(Pass):
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) -> Reshape(x, [0, -1]); Shape(static x) -> constant."""

    name = "fold-shape-subgraphs"

    def run(self, model: ir.Model) -> PassResult:
        writer = _Writer(model)
        changes: Counter[str] = Counter()
        dead: list[ir.Node] = []
        opset = default_opset(model) or 1
        for node in all_nodes(model):
            if node.graph is None or node.domain not in ("", "ai.onnx") or not node.outputs:
                continue
            if changes and any(v.shape is None or v.shape.has_unknown_dim() for v in node.outputs):
                # shapes after a rewritten Reshape may now be known: infer them (one node at a time, in order)
                # so that the Reshapes downstream can be folded in this same sweep
                infer_node(node, opset)
            if node.op_type in _SHAPE_OPS - {"Identity"} and self._fold_static(node, writer):
                changes[f"static-{node.op_type}"] += 1
                dead.append(node)
            elif node.op_type == "Reshape" and len(node.inputs) == 2 and const(node.inputs[1], SMALL) is None:
                shape, _ = constant_shape(node)
                if shape is None:
                    continue
                old = node.inputs[1].producer()
                node.replace_input_with(1, writer.constant(node, np.array(shape, np.int64), f"{node.outputs[0].name}_shape"))
                changes["Reshape"] += 1
                infer_node(node, opset)
                if old is not None:
                    dead.append(old)
        remove_dead(dead)
        return PassResult(model, bool(+changes), dict(changes))

    @staticmethod
    def _fold_static(node: ir.Node, writer: _Writer) -> bool:
        out = node.outputs[0]
        if out.is_graph_output() or not out.uses():
            return False
        vector = evaluate(out)
        if vector is None or not vector.static():
            return False
        array = np.array(vector.dims[0] if vector.scalar else vector.dims, np.int64)
        out.replace_all_uses_with(writer.constant(node, array, out.name or "shape"))
        return True

    def explain(self, model: ir.Model) -> list[str]:
        lines = []
        for node in all_nodes(model):
            if node.op_type == "Reshape" and len(node.inputs) == 2 and const(node.inputs[1], SMALL) is None:
                shape, why = constant_shape(node)
                if shape is None:
                    lines.append(f"{self.name}: {label(node)}: {why}")
        return lines


__all__ = ["FoldShapeSubgraphs", "evaluate", "constant_shape", "ShapeVector"]
