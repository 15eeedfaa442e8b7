"""``sink-transposes``: move Transposes down through elementwise ops until they meet and cancel.

A Transpose is followed down its chain of sole users. Through an elementwise op it commutes:
``U(Transpose(x)) == Transpose(U(x))`` for a unary op, and for a binary op whose other input is
a constant ``c`` of rank <= r, ``B(Transpose(x, p), c) == Transpose(B(x, c'), p)`` with ``c'``
the constant unsqueezed to rank r and transposed by the inverse of p. The chain is only rewritten
when it ends where a Transpose disappears:

- another Transpose: the two compose into one (``perm = p[q]``) or, when that is the identity,
  vanish (``cancel``);
- a binary op whose other input is a Transpose with the same perm (read by nothing else):
  ``B(Transpose(x, p), Transpose(y, p)) == Transpose(B(x, y), p)`` (``merge``).

So every rewrite removes at least one Transpose and one node; nothing is sunk for its own sake.
A chain stops at a value with several users, a graph output, a non-elementwise op or a binary
op whose other input is neither a constant nor a same-perm Transpose. If/Loop/Scan bodies are
rewritten too (a chain never crosses a graph boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slipway.graph import (
    Names,
    add_initializer,
    const,
    is_op,
    label,
    node_like,
    only_used_by,
    replace,
    sole_user,
)
from slipway.passes._fusion import Fuse, FusionPass, Match, Skip
from slipway.passes.base import register

UNARY = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "CastLike", "Ceil", "Celu",
    "Clip", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf",
    "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid",
    "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
})
BINARY = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater", "GreaterOrEqual",
    "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "PRelu", "Sub", "Sum", "Xor",
})
_MAX_CHAIN = 64


def _perm(node: ir.Node) -> list[int] | None:
    attr = node.attributes.get("perm")
    if attr is not None:
        return list(attr.as_ints())
    x = node.inputs[0]
    if x is None or x.shape is None:
        return None
    return list(range(len(x.shape)))[::-1]


def _permuted_const(array: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    """``c'`` with ``Transpose(c', perm)`` == ``array`` broadcast to rank len(perm)."""
    full = array.reshape((1,) * (len(perm) - array.ndim) + array.shape)
    return np.transpose(full, np.argsort(perm))


def _strip(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` without its leading 1s (what right-aligned broadcasting sees)."""
    first = next((i for i, d in enumerate(shape) if d != 1), len(shape))
    return tuple(shape[first:])


@dataclass
class _Step:
    """An elementwise node the Transpose sinks through; ``other`` is the constant input (or None)."""

    node: ir.Node
    other: int | None = None  # index of the constant input of a binary op


def _classify(node: ir.Node, t: ir.Value, perm: list[int]) -> _Step | ir.Node | str:
    """How the Transpose output ``t`` passes ``node``: a step, the other same-perm Transpose of a
    merge (returned as that node), or why it cannot."""
    uses = [i for i, v in enumerate(node.inputs) if v is t]
    if node.domain != "" or len(node.outputs) != 1:
        return f"{label(node)} is not an elementwise op"
    if node.op_type in UNARY:
        return _Step(node) if uses == [0] else f"{label(node)} reads it as a parameter"
    if node.op_type not in BINARY or len(node.inputs) != 2:
        return f"{label(node)} is not elementwise"
    if uses == [0, 1]:
        return _Step(node)
    if node.op_type == "PRelu" and uses != [0]:
        return f"{label(node)} reads it as the slope"
    other_index = 1 - uses[0]
    other = node.inputs[other_index]
    array = const(other)
    if array is not None:
        if array.ndim > len(perm):
            return f"the constant of {label(node)} has more dims than the Transpose"
        return _Step(node, other_index)
    producer = other.producer() if other is not None else None
    if is_op(producer, "Transpose") and _perm(producer) == perm and only_used_by(other, node):
        return producer
    return f"the other input of {label(node)} is neither a constant nor a Transpose with perm {perm} read only there"


def _compose(inner: list[int], outer: list[int]) -> list[int]:
    """perm of Transpose(Transpose(x, inner), outer)."""
    return [inner[i] for i in outer]


def _out_shape(value: ir.Value, perm: list[int]) -> ir.Shape | None:
    """The shape before ``Transpose(perm)`` of a value whose transposed shape is ``value.shape``."""
    if value.shape is None or len(value.shape) != len(perm):
        return None
    dims: list = [None] * len(perm)
    for j, p in enumerate(perm):
        dims[p] = value.shape[j]
    return ir.Shape(dims)


def _rebuild(graph: ir.Graph, namer: Names, node: ir.Node, inputs: list[ir.Value | None], t: ir.Node,
             perm: list[int], old_nodes: list[ir.Node]) -> ir.Node:
    """``node`` on untransposed inputs followed by one Transpose(perm) in place of ``old_nodes``."""
    out = node.outputs[0]
    moved = node_like(node, node.op_type, inputs, node.attributes.values())
    moved.outputs[0].name = namer(f"{out.name or node.op_type}_untransposed")
    if out.type is not None:
        moved.outputs[0].type = out.type
    moved.outputs[0].shape = _out_shape(out, perm)
    transpose = node_like(t, "Transpose", [moved.outputs[0]], [ir.AttrInt64s("perm", perm)])
    replace(graph, old_nodes, [moved, transpose], out, transpose.outputs[0])
    return transpose


def _sink(graph: ir.Graph, namer: Names, t: ir.Node, step: _Step, perm: list[int]) -> ir.Node:
    x, tv = t.inputs[0], t.outputs[0]
    inputs = []
    for i, v in enumerate(step.node.inputs):
        if v is tv:
            inputs.append(x)
        elif i == step.other:
            array = const(v)
            moved = _permuted_const(array, perm)
            keep = _strip(array.shape) == _strip(moved.shape)  # only size-1 axes moved: same data, same broadcast
            inputs.append(v if keep else add_initializer(graph, namer(f"{v.name or 'c'}_untransposed"), moved.astype(array.dtype)))
        else:
            inputs.append(v)
    return _rebuild(graph, namer, step.node, inputs, t, perm, [t, step.node])


def _cancel(graph: ir.Graph, t: ir.Node, outer: ir.Node) -> None:
    """Transpose(Transpose(x)) == x."""
    x, out = t.inputs[0], outer.outputs[0]
    if not out.is_graph_output():
        out.replace_all_uses_with(x)
        graph.remove([outer, t], safe=True)
        return
    producer = x.producer()
    if producer is not None and producer.graph is graph and not x.is_graph_output():
        replace(graph, [t, outer], [], out, x)  # x takes the output's name
        return
    identity = ir.Node("", "Identity", [x], name=outer.name)
    replace(graph, [t, outer], [identity], out, identity.outputs[0])


def _apply(t: ir.Node, steps: list[_Step], end: ir.Node, partner: ir.Node | None, perm: list[int]):
    def apply(graph: ir.Graph, namer: Names) -> None:
        current = t
        for step in steps:
            current = _sink(graph, namer, current, step, perm)
        if partner is None:  # end is a Transpose
            q = _compose(perm, _perm(end) if "perm" in end.attributes else list(range(len(perm)))[::-1])
            if q == sorted(q):
                _cancel(graph, current, end)
            else:
                end.replace_input_with(0, current.inputs[0])
                end.attributes["perm"] = ir.AttrInt64s("perm", q)
                graph.remove(current, safe=True)
            return
        tv, pv = current.outputs[0], partner.outputs[0]
        inputs = [current.inputs[0] if v is tv else partner.inputs[0] if v is pv else v for v in end.inputs]
        _rebuild(graph, namer, end, inputs, current, perm, [current, partner, end])

    return apply


@register
class SinkTransposes(FusionPass):
    """U(Transpose(x)) -> Transpose(U(x)) until Transpose(Transpose(x)) -> x, or one Transpose, meet

    U is a unary elementwise op or a binary one with a constant (permuted to match) or a
    same-perm Transpose as its other input. A chain is rewritten only where a Transpose then
    disappears, so the Transpose count and the node count always go down. Risky: moving a
    Transpose changes which tensor (size, layout) gets copied.
    """

    name = "sink-transposes"
    risky = True

    def match(self, node: ir.Node) -> Match:
        if not is_op(node, "Transpose") or node.inputs[0] is None:
            return None
        perm = _perm(node)
        if perm is None or sorted(perm) != list(range(len(perm))):
            return None
        steps: list[_Step] = []
        value = node.outputs[0]
        for _ in range(_MAX_CHAIN):
            user = sole_user(value)
            if user is None:
                why = "a graph output" if value.is_graph_output() else "read by several nodes"
                return self._stop(node, steps, f"{value.name!r} is {why}")
            if is_op(user, "Transpose"):
                outer = _perm(user) if "perm" in user.attributes else list(range(len(perm)))[::-1]
                if len(outer) != len(perm):
                    return None  # an invalid model; leave it to the checker
                rule = "cancel" if _compose(perm, outer) == sorted(perm) else "compose"
                return Fuse(rule, _apply(node, steps, user, None, perm))
            found = _classify(user, value, perm)
            if isinstance(found, str):
                return self._stop(node, steps, found, elementwise=user.op_type in UNARY | BINARY)
            if isinstance(found, ir.Node):
                return Fuse("merge", _apply(node, steps, user, found, perm))
            steps.append(found)
            value = user.outputs[0]
        return self._stop(node, steps, f"the chain is longer than {_MAX_CHAIN} ops")

    def _stop(self, node: ir.Node, steps: list[_Step], why: str, elementwise: bool = False) -> Skip | None:
        """A near miss worth explaining: the Transpose passed some elementwise op, or reached one."""
        if not steps and not elementwise:
            return None
        through = ", ".join(s.node.op_type for s in steps) or "nothing"
        return Skip(f"{label(node)}: not sunk (through {through}): {why}; no Transpose to cancel with")
