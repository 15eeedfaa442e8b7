"""``fold-constants``: compute once what does not depend on the inputs.

onnxscript's constant folder does the work (its size limits included); this pass adds:

- a size guard: folding may grow the model's tensor bytes (initializers plus Constant nodes)
  by at most ``max_growth`` (10%) unless ``allow_growth``. A fold that would pass the limit —
  a big ConstantOfShape / Expand / Tile of a small constant, a Cast of fp16 weights to fp32 —
  is not done, and a warning names the node. Folds producing at most ``SMALL_BYTES`` (shape
  arithmetic) are always allowed. ConstantOfShape, which onnxscript never folds, is folded
  when the guard allows it; Quantize/DequantizeLinear are never folded.
- Constant nodes of the main graph become initializers, as folded values do.
- nodes left without readers by folding are removed; counts are per folded op type.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer as oso
from onnx_ir.passes.common import NameFixPass

from slipway.graph import (
    Names,
    add_initializer,
    all_nodes,
    const,
    default_opset,
    infer_node,
    is_dead,
    label,
    remove_dead,
)
from slipway.passes.base import Pass, PassResult, register

SMALL_BYTES = 1024
# Ops whose output is never bigger than their largest input; any other op needs a known output shape.
_NOT_GROWING = frozenset({
    "Abs", "Neg", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Not", "Erf", "Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Shape", "Size",
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ArgMax", "ArgMin", "Softmax", "Clip",
})
_NEVER = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# onnxscript's own size limits (the defaults of its public folder)
_FOLDER_DEFAULTS = inspect.signature(oso.fold_constants_ir).parameters
INPUT_SIZE_LIMIT = _FOLDER_DEFAULTS["input_size_limit"].default
OUTPUT_SIZE_LIMIT = _FOLDER_DEFAULTS["output_size_limit"].default


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of the main graph's initializers plus the tensors held by Constant nodes anywhere."""
    total = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    for node in all_nodes(model):
        if node.op_type == "Constant" and node.domain == "":
            attr = node.attributes.get("value")
            if attr is not None and not attr.is_ref() and attr.type == ir.AttributeType.TENSOR:
                total += attr.value.nbytes
    return total


_NUMERIC_CONSTANTS = {"value_int": np.int64, "value_ints": np.int64, "value_float": np.float32,
                      "value_floats": np.float32}


def _constant_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a Constant node holds (``value`` or a numeric ``value_*``), or None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attributes) != 1:
        return None
    name, attr = next(iter(node.attributes.items()))
    if attr.is_ref():
        return None
    if name == "value" and attr.type == ir.AttributeType.TENSOR:
        return attr.value
    if name in _NUMERIC_CONSTANTS:
        return ir.tensor(np.array(attr.value, dtype=_NUMERIC_CONSTANTS[name]))
    return None


def lift_constants(model: ir.Model) -> list[ir.Node]:
    """Main-graph Constant nodes -> initializers; returns the nodes lifted."""
    graph = model.graph
    if model.ir_version is not None and model.ir_version < 4:
        return []  # initializers must also be graph inputs there
    lifted = []
    names = Names(model)
    for node in list(graph):
        tensor = _constant_tensor(node)
        out = node.outputs[0] if node.outputs else None
        if tensor is None or out is None or out.is_graph_output():
            continue
        names.release(out.name)  # the initializer takes the place (and the name) of the Constant's output
        init = add_initializer(graph, names(out.name or "const"), tensor)
        out.replace_all_uses_with(init)
        graph.remove(node, safe=True)
        lifted.append(node)
    return lifted


def _itemsize(value: ir.Value) -> int | None:
    dtype = value.dtype
    if dtype is None or dtype == ir.DataType.STRING:
        return None
    return max(1, math.ceil(dtype.bitwidth / 8))


def output_bytes(node: ir.Node) -> int | None:
    """Estimated bytes of the node's outputs, or None when unknown."""
    if node.op_type == "ConstantOfShape":
        shape = const(node.inputs[0], limit=64)
        attr = node.attributes.get("value")
        item = attr.value.dtype.itemsize if attr is not None and not attr.is_ref() else 4
        return None if shape is None else int(np.prod(shape)) * item
    total = 0
    for v in node.outputs:
        item = _itemsize(v)
        if item is None or v.shape is None or not all(isinstance(d, int) for d in v.shape):
            return None
        total += math.prod(v.shape) * item
    return total


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


class _Guard:
    """Decides per node (onnxscript's ``should_fold`` hook) and keeps the growth budget."""

    def __init__(self, budget: float, allow_growth: bool, opset: int) -> None:
        self.opset = opset
        self.budget = budget
        self.allow_growth = allow_growth
        self.grown = 0
        self.refused: dict[int, str] = {}  # node id -> warning (once per node over all rounds)

    @property
    def warnings(self) -> list[str]:
        return list(dict.fromkeys(self.refused.values()))

    def __call__(self, node: ir.Node) -> bool | None:
        if node.op_type in _NEVER:
            return None
        fold_anyway = True if node.op_type == "ConstantOfShape" else None
        if self.allow_growth:
            return fold_anyway
        out = output_bytes(node)
        if out is None:
            infer_node(node, self.opset)
            out = output_bytes(node)
        freed = sum(v.const_value.nbytes for v in node.inputs
                    if v is not None and v.is_initializer() and len(v.uses()) == 1 and v.const_value is not None)
        if out is None:
            if node.op_type in _NOT_GROWING:
                return None
            self.refused.setdefault(id(node), f"fold-constants: {label(node)} not folded: its output size is unknown")
            return False
        growth = out - freed
        if out > SMALL_BYTES and growth > 0 and self.grown + growth > self.budget:
            self.refused.setdefault(id(node), (
                f"fold-constants: {label(node)} not folded: its {_size(out)} output would grow the tensors by more "
                f"than the {_size(self.budget)} allowed (max_growth; allow_growth=True folds it)"))
            return False
        self.grown += max(growth, 0)
        return fold_anyway


def _with_owners(model: ir.Model) -> dict[int, tuple[str, int | None]]:
    """id(node) -> (op type, id of the node whose subgraph holds it, or None at the top of a graph or function)."""
    out: dict[int, tuple[str, int | None]] = {}

    def walk(graph, owner: int | None) -> None:
        for node in graph:
            out[id(node)] = (node.op_type, owner)
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    walk(attr.as_graph(), id(node))
                elif attr.type == ir.AttributeType.GRAPHS:
                    for g in attr.as_graphs():
                        walk(g, id(node))

    walk(model.graph, None)
    for f in model.functions.values():
        walk(f, None)
    return out


@register
class FoldConstants(Pass):
    """op(c1, c2, ...) -> c, with c computed once (size-guarded; Constant nodes become initializers)."""

    name = "fold-constants"

    def __init__(self, *, max_growth: float = 0.10, allow_growth: bool = False,
                 input_size_limit: int = INPUT_SIZE_LIMIT, output_size_limit: int = OUTPUT_SIZE_LIMIT,
                 max_rounds: int = 4) -> None:
        self.max_growth = max_growth
        self.allow_growth = allow_growth
        self.input_size_limit = input_size_limit
        self.output_size_limit = output_size_limit
        self.max_rounds = max_rounds

    def run(self, model: ir.Model) -> PassResult:
        original = _with_owners(model)
        opset = default_opset(model) or 1
        guard = _Guard(self.max_growth * tensor_bytes(model), self.allow_growth, opset)
        changes: Counter[str] = Counter()
        warnings: list[str] = []
        lift_constants(model)
        for _ in range(self.max_rounds):
            if not self._round(model, guard, warnings):
                break
        remaining = {id(n) for n in all_nodes(model)}
        for key, (op_type, owner) in original.items():  # a lifted Constant counts as "Constant"
            if key not in remaining and (owner is None or owner in remaining):  # not inside a folded If
                changes[op_type] += 1
        warnings.extend(guard.warnings)
        return PassResult(model, bool(+changes), dict(changes), warnings)

    def _round(self, model: ir.Model, guard: _Guard, warnings: list[str]) -> bool:
        dead_before = {id(n) for n in all_nodes(model) if is_dead(n)}
        try:
            result = oso.fold_constants(model, onnx_shape_inference=False, input_size_limit=self.input_size_limit,
                                        output_size_limit=self.output_size_limit, should_fold=guard)
            modified = result.modified
        except Exception as e:  # a folder bug on one node must not lose the model
            NameFixPass()(model)
            cause = e.__cause__ or e
            warnings.append(f"fold-constants: stopped: {str(e).splitlines()[0]}: {str(cause).splitlines()[0][:200]}")
            modified = False
        newly_dead = [n for n in all_nodes(model) if id(n) not in dead_before and is_dead(n)]
        remove_dead(newly_dead)
        lift_constants(model)
        return modified


__all__ = ["FoldConstants", "lift_constants", "tensor_bytes", "output_bytes"]
