"""Which tensor of B corresponds to which tensor of A.

Only float tensors of the main graph are compared (values inside subgraphs and integer
tensors such as shapes or indices are not). A tensor of B matches the tensor of A

1. that B's tensor is derived from by value-preserving ops, walking B's graph backwards through
   ``Cast`` (to a float type), ``Identity`` and ``DequantizeLinear(QuantizeLinear(X))``, which
   corresponds to ``X`` (so a QDQ model's ``X_DequantizeLinear_Output`` matches ``X``, and an FP16
   model's ``Cast(x)`` matches ``x``); a graph input of A matched this way is compared with its
   quantized or cast copy in B;
2. with the same name, when B computes it in a float type.

Each tensor of A takes its best candidate: a walk through a Q/DQ pair first (the dequantized
value is what B's later nodes consume; ORT's quantizer folds a ReLU into the Q/DQ pair and gives
the ReLU's name to the un-clipped Conv output before it), then the same name, then other
backward walks; the shortest walk first. A tensor of B with A's name never walks.

A tensor of B that a chain of ``Cast`` / ``Identity`` nodes turns into a tensor with A's name
(an FP16 model's Conv output cast back to the name A has for it) is not listed as unmatched: it
is compared as that tensor. ``QuantizeLinear`` is not walked forwards: it clips to its range,
so the tensor before a Q/DQ pair may differ from the one after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

__all__ = ["FLOAT_TYPES", "Match", "Matching", "float_values", "match"]

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
MAX_WALK = 8  # longest chain of value-preserving ops walked
# Candidate ranks, best first. The dequantized copy of X beats B's own X: it is the value B's
# later nodes consume, and a quantizer may fold a ReLU into the Q/DQ pair and give its name
# to the un-clipped Conv output before it.
RANK_QDQ, RANK_NAME, RANK_BACKWARD = range(3)


@dataclass
class Match:
    a: str  # tensor name in A
    b: str  # tensor name in B
    via: str  # "" for a match by name, else the ops walked in B ("Cast", "Q/DQ", "Cast>Identity")
    node: str  # the node of A producing the tensor, "" for a graph input
    op_type: str  # its op type, "(input)" for a graph input


@dataclass
class Matching:
    matches: list[Match]  # in A's topological order (graph inputs first)
    unmatched_a: list[str]
    unmatched_b: list[str]


def _is_float(v: ir.Value) -> bool:
    return v.dtype in FLOAT_TYPES


def float_values(model: ir.Model) -> dict[str, tuple[ir.Value, ir.Node]]:
    """Float outputs of the main graph's nodes, in topological order.

    Values computed from constants alone (Constant nodes, dequantized or cast weights) are left
    out: they are weights, not activations, and an optimizer folds them away.
    """
    out: dict[str, tuple[ir.Value, ir.Node]] = {}
    constant: set[int] = set()
    for node in model.graph:
        if _from_constants(node, constant):
            constant.update(id(v) for v in node.outputs)
            continue
        for v in node.outputs:
            if v.name and _is_float(v):
                out[v.name] = (v, node)
    return out


def _from_constants(node: ir.Node, constant: set[int]) -> bool:
    if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
        return False
    return all(v is None or v.is_initializer() or v.const_value is not None or id(v) in constant
               for v in node.inputs)


def _float_inputs(model: ir.Model) -> dict[str, ir.Value]:
    inits = model.graph.initializers
    return {v.name: v for v in model.graph.inputs if v.name not in inits and _is_float(v)}


def _standard(node: ir.Node, *ops: str) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in ops


def _backward(v: ir.Value, names: set[str]) -> tuple[str, str] | None:
    """Walk up value-preserving ops from ``v`` to the first value named in ``names``."""
    path: list[str] = []
    cur = v
    for _ in range(MAX_WALK):
        node = cur.producer()
        if node is None or not node.inputs or node.inputs[0] is None:
            return None
        if _standard(node, "Cast", "Identity"):
            cur, step = node.inputs[0], node.op_type
        elif _standard(node, "DequantizeLinear"):
            q = node.inputs[0].producer()
            if q is None or not _standard(q, "QuantizeLinear") or not q.inputs or q.inputs[0] is None:
                return None
            cur, step = q.inputs[0], "Q/DQ"
        else:
            return None
        path.append(step)
        if cur.name in names:
            return cur.name, ">".join(path)
    return None


def _forward(v: ir.Value, names: set[str]) -> tuple[str, str] | None:
    """Walk down chains of Cast / Identity consumers of ``v`` to a value named in ``names``."""
    frontier: list[tuple[ir.Value, list[str]]] = [(v, [])]
    for _ in range(MAX_WALK):
        nxt: list[tuple[ir.Value, list[str]]] = []
        for cur, path in frontier:
            for node in cur.consumers():
                if not _standard(node, "Cast", "Identity") or node.inputs[0] is not cur:
                    continue
                out = node.outputs[0]
                if not _is_float(out):
                    continue
                if out.name in names:
                    return out.name, ">".join([*path, node.op_type])
                nxt.append((out, [*path, node.op_type]))
        if not nxt:
            return None
        frontier = nxt
    return None


def match(a: ir.Model, b: ir.Model) -> Matching:
    """Match the float tensors of ``b`` to those of ``a`` (see the module docstring)."""
    a_values = float_values(a)
    a_inputs = _float_inputs(a)
    b_values = float_values(b)
    targets = set(a_values) | set(a_inputs)
    # A name -> (rank, walk length, b name, via)
    best: dict[str, tuple[int, int, str, str]] = {}
    unmatched_b: list[str] = []
    for name, (value, _node) in b_values.items():
        found: tuple[int, str, str] | None = None
        if name in a_values:
            found = (RANK_NAME, name, "")
        elif (hit := _backward(value, targets)) is not None:
            found = (RANK_QDQ if "Q/DQ" in hit[1] else RANK_BACKWARD, *hit)
        if found is None:
            if _forward(value, targets) is None:  # else it becomes a tensor compared under A's name
                unmatched_b.append(name)
            continue
        rank, target, via = found
        key = (rank, via.count(">") + (1 if via else 0), name, via)
        if target not in best or key[:2] < best[target][:2]:
            best[target] = key
    matches = [Match(n, best[n][2], best[n][3], "", "(input)") for n in a_inputs if n in best]
    unmatched_a = []
    for name, (_value, node) in a_values.items():
        if name in best:
            matches.append(Match(name, best[name][2], best[name][3], node.name or "", node.op_type))
        else:
            unmatched_a.append(name)
    return Matching(matches, unmatched_a, unmatched_b)
