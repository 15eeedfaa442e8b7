"""``fuse-gelu``: the decomposed GELU (erf or tanh form) becomes one ``Gelu`` node (opset >= 20).

The match is anchored at the ``Erf`` (or ``Tanh``) node and walks out from it, so the product
``0.5 * x * (1 + ...)`` may be written in any order and grouping (``(x * a) * 0.5``,
``(x * 0.5) * a``, ``x * (a * 0.5)``, ``(x * a) / 2``, operands either way round), with
``x / sqrt(2)`` or ``x * (1/sqrt(2))`` inside the Erf and ``Pow(x, 3)``, ``x * (x * x)`` or
``(x * x) * x`` for the cube. Constants may be scalars or any single-element tensor that does
not raise the rank, within a relative 1e-4 of their exact value. Every intermediate value must
feed only the pattern; the constants left without a user are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from slipway.graph import Names, const, is_op, label, replace, sole_user
from slipway.passes._fusion import Fuse, FusionPass, Match, Skip
from slipway.passes.base import PassResult, register

MIN_OPSET = 20
_TOL = 1e-4
SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBE_COEFF = 0.044715


@dataclass
class _Found:
    x: ir.Value
    nodes: list[ir.Node]
    consts: list[np.ndarray] = field(default_factory=list)


def _scalar(value: ir.Value | None, target: float, found: _Found | None = None) -> bool:
    """``value`` is a one-element float constant within the tolerance of ``target``."""
    array = const(value)
    if array is None or array.size != 1 or array.dtype.kind not in "fiu" and array.dtype.name != "bfloat16":
        return False
    v = float(np.asarray(array, dtype=np.float64).reshape(-1)[0])
    if abs(v - target) > _TOL * abs(target):
        return False
    if found is not None:
        found.consts.append(array)
    return True


def _operands(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other input of a binary ``node`` that reads ``value`` once."""
    a, b = node.inputs[0], node.inputs[1]
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def _erf_input(anchor: ir.Node) -> _Found | str:
    u = anchor.inputs[0]
    p = u.producer() if u is not None else None
    if u is None or p is None or sole_user(u) is not anchor:
        return f"{label(anchor)}: its input is not x / sqrt(2) used only here"
    found = _Found(p.inputs[0], [p]) if p.inputs else None
    if is_op(p, "Div") and _scalar(p.inputs[1], SQRT2, found):
        return found
    if is_op(p, "Mul"):
        for i in (0, 1):
            found = _Found(p.inputs[i], [p])
            if _scalar(p.inputs[1 - i], 1.0 / SQRT2, found):
                return found
    return f"{label(anchor)}: its input is not x / sqrt(2) (Div by 1.41421 or Mul by 0.70711)"


def _cube(c: ir.Value, x: ir.Value, user: ir.Node, found: _Found) -> list[ir.Node] | None:
    """Nodes computing ``c = x^3`` (Pow(x, 3), x * (x * x) or (x * x) * x), used only by ``user``."""
    p = c.producer()
    if p is None or sole_user(c) is not user:
        return None
    if is_op(p, "Pow") and p.inputs[0] is x and _scalar(p.inputs[1], 3.0, found):
        return [p]
    if not is_op(p, "Mul"):
        return None
    for sq_value, other in ((p.inputs[0], p.inputs[1]), (p.inputs[1], p.inputs[0])):
        sq = sq_value.producer() if sq_value is not None else None
        if other is not x or sq is None or sole_user(sq_value) is not p:
            continue
        if is_op(sq, "Mul") and sq.inputs[0] is x and sq.inputs[1] is x:
            return [sq, p]
        if is_op(sq, "Pow") and sq.inputs[0] is x and _scalar(sq.inputs[1], 2.0, found):
            return [sq, p]
    return None


def _tanh_input(anchor: ir.Node) -> _Found | None:
    """x from ``Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))``; None when it is no GELU."""
    u = anchor.inputs[0]
    p = u.producer() if u is not None else None
    if u is None or not is_op(p, "Mul") or sole_user(u) is not anchor:
        return None
    for i in (0, 1):
        s = p.inputs[i]
        found = _Found(s, [p])
        if not _scalar(p.inputs[1 - i], SQRT_2_OVER_PI, found) or s is None or sole_user(s) is not p:
            continue
        add = s.producer()
        if not is_op(add, "Add"):
            continue
        for x, t in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            q = t.producer() if t is not None else None
            if not is_op(q, "Mul") or sole_user(t) is not add:
                continue
            for j in (0, 1):
                cube = _cube(q.inputs[j], x, q, found)
                if cube is not None and _scalar(q.inputs[1 - j], CUBE_COEFF, found):
                    found.x = x
                    found.nodes += [add, q, *cube]
                    return found
    return None


def _factor(value: ir.Value, found: _Found, user: ir.Node) -> tuple[set[str], list[ir.Node]] | None:
    """Which of the factors x and 0.5 ``value`` is: x, 0.5, or Mul(x, 0.5) read only by ``user``."""
    if value is found.x:
        return {"x"}, []
    if _scalar(value, 0.5, found):
        return {"half"}, []
    p = value.producer()
    if is_op(p, "Mul") and sole_user(value) is user:
        other = _operands(p, found.x)
        if other is not None and _scalar(other, 0.5, found):
            return {"x", "half"}, [p]
    return None


def _tail(anchor: ir.Node, found: _Found) -> ir.Value | str:
    """The value ``0.5 * x * (1 + anchor)``, collecting its nodes into ``found``; or why not."""
    out = anchor.outputs[0]
    add = sole_user(out)
    one = _operands(add, out) if is_op(add, "Add") else None
    if one is None or not _scalar(one, 1.0, found):
        return f"{label(anchor)}: its output does not feed (1 + {anchor.op_type}) alone"
    found.nodes += [anchor, add]
    cur, have = add.outputs[0], set()
    while have != {"x", "half"}:
        node = sole_user(cur)
        got = None
        if is_op(node, "Mul"):
            other = _operands(node, cur)
            got = _factor(other, found, node) if other is not None else None
        elif is_op(node, "Div") and node.inputs[0] is cur and _scalar(node.inputs[1], 2.0, found):
            got = {"half"}, []
        if got is None or got[0] & have:
            return f"{label(anchor)}: (1 + {anchor.op_type}) is not multiplied by x and 0.5 alone"
        have |= got[0]
        found.nodes += [*got[1], node]
        cur = node.outputs[0]
    return cur


def _rank_ok(found: _Found) -> bool:
    """No constant has more dims than x (which would broadcast the output to a higher rank)."""
    rank = len(found.x.shape) if found.x.shape is not None else 0
    return all(a.ndim <= rank for a in found.consts)


@register
class FuseGelu(FusionPass):
    """0.5 * x * (1 + Erf(x / sqrt(2))) -> Gelu(x); 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> Gelu(x, approximate="tanh")

    Needs opset >= 20 (Gelu's first version); below that the pattern is left as it is and
    ``explain`` names the opset. If/Loop/Scan bodies are rewritten too.
    """

    name = "fuse-gelu"

    def __init__(self) -> None:
        self._opset = MIN_OPSET

    def _set_opset(self, model: ir.Model) -> None:
        self._opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))

    def run(self, model: ir.Model) -> PassResult:
        self._set_opset(model)
        return super().run(model)

    def explain(self, model: ir.Model) -> list[str]:
        self._set_opset(model)
        return super().explain(model)

    def match(self, node: ir.Node) -> Match:
        if is_op(node, "Erf"):
            found, approximate = _erf_input(node), "none"
        elif is_op(node, "Tanh"):
            found, approximate = _tanh_input(node), "tanh"
            if found is None:
                return None
        else:
            return None
        if isinstance(found, str):
            return Skip(found)
        out = _tail(node, found)
        if isinstance(out, str):
            return Skip(out)
        if not _rank_ok(found):
            return Skip(f"{label(node)}: a constant has more dims than the input (rank unknown: scalars only)")
        if self._opset < MIN_OPSET:
            return Skip(f"{label(node)}: opset {self._opset} < {MIN_OPSET}: Gelu needs opset {MIN_OPSET}")
        return Fuse("Gelu" if approximate == "none" else "Gelu-tanh", _applier(found, out, approximate))


def _applier(found: _Found, out: ir.Value, approximate: str):
    def apply(graph: ir.Graph, namer: Names) -> None:
        attrs = [ir.AttrString("approximate", "tanh")] if approximate == "tanh" else []
        gelu = ir.Node("", "Gelu", [found.x], attrs, name=namer(f"{out.producer().name or 'Gelu'}_gelu"))
        replace(graph, found.nodes, [gelu], out, gelu.outputs[0])

    return apply
