"""``eliminate``: remove nodes that compute nothing, and collapse chains of layout ops.

onnxscript's rules are used where they are right (no-op Cast / Transpose, Cast∘Cast, Transpose
pairs, Reshape chains); the others are ours because onnxscript's miss common cases: its Slice
rules need all five inputs and one axis, its Expand and Mul/Add rules only see static or scalar
shapes, its Dropout rule reads a ``training_mode`` attribute that opset 12 moved to an input,
and its Identity elimination can rename a graph input. Rules also run in If/Loop/Scan bodies.
Identity nodes go last, keeping graph output names (an Identity carrying a graph input or
another output to a graph output stays: ONNX needs it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass
from onnxscript.optimizer import basic_constant_propagation
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet
from onnxscript.rewriter.rules import common as osr

from slipway.graph import all_nodes, const, default_opset
from slipway.passes.base import PassResult, RulesPass, register, rule_name

INT64_MAX = np.iinfo(np.int64).max
SMALL = 1 << 16  # constants the rules read (shapes, axes, scalars); weights are not read


def ints(value: ir.Value | None) -> list[int] | None:
    a = const(value, SMALL)
    return None if a is None or a.ndim > 1 or a.dtype.kind not in "iu" else [int(v) for v in a.reshape(-1)]


def axes_of(node: ir.Node) -> list[int] | None:
    """A node's ``axes``, from its attribute (old opsets) or its second input; None if absent or not constant."""
    attr = node.attributes.get("axes")
    if attr is not None:
        return None if attr.is_ref() else list(attr.as_ints())
    return ints(node.inputs[1]) if len(node.inputs) > 1 else None


def rank(value: ir.Value) -> int | None:
    return None if value.shape is None else len(value.shape)


def normalized(axes: Sequence[int], r: int | None) -> list[int] | None:
    if any(a < 0 for a in axes):
        if r is None:
            return None
        return [a + r if a < 0 else a for a in axes]
    return list(axes)


def opset(context) -> int:
    return default_opset(context.model) or 1


def int64(values: Sequence[int]) -> ir.Tensor:
    return ir.tensor(np.array(values, dtype=np.int64))


class _Rule(RewriteRuleClassBase):
    def rewrite(self, op, x, **_):
        return op.Identity(x)


class Dropout(_Rule):
    """Dropout(x) -> x at inference (no or false training_mode, or ratio 0) when its mask is unused."""

    def pattern(self, op, x):
        return op.Dropout(x, _allow_other_inputs=True, _allow_other_attributes=True)

    def check(self, context, x, **_) -> MatchResult:
        node = context.root
        is_test = node.attributes.get("is_test")
        if is_test is not None and not is_test.is_ref() and is_test.as_int() == 0:
            return MatchResult().fail("is_test=0 (training)")
        training = node.inputs[2] if len(node.inputs) > 2 else None
        ratio = const(node.inputs[1], SMALL) if len(node.inputs) > 1 else None
        flag = const(training, SMALL)
        if training is not None and not (flag is not None and not flag.any()):
            if ratio is None or ratio.size != 1 or float(ratio.reshape(-1)[0]) != 0.0:
                return MatchResult().fail("training_mode is not a constant false")
        return MatchResult()


class NoOpReshape(_Rule):
    """Reshape(x, s) -> x when s is x's shape (0 copies, one -1 infers)."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True)

    def check(self, context, x, shape, **_) -> MatchResult:
        target, out = ints(shape), context.output_values[0]
        if x.shape is None:
            return MatchResult().fail("input shape unknown")
        if target is None:
            if x.shape.is_static() and out.shape is not None and out.shape.is_static() and x.shape == out.shape:
                return MatchResult()
            return MatchResult().fail("target shape not constant")
        if len(target) != len(x.shape):
            return MatchResult().fail("rank changes")
        allowzero = context.root.attributes.get_int("allowzero", 0)
        unknown = 0
        for s, d in zip(target, x.shape, strict=True):
            if (s == 0 and not allowzero) or s == d:
                continue
            if s == -1:
                unknown += 1
            else:
                return MatchResult().fail(f"target {target} differs from {x.shape}")
        return MatchResult() if unknown <= 1 else MatchResult().fail("more than one -1")


class NoOpFlatten(_Rule):
    """Flatten(x, axis=1) -> x for 2-D x."""

    def pattern(self, op, x):
        return op.Flatten(x, _allow_other_attributes=True)

    def check(self, context, x, **_) -> MatchResult:
        if rank(x) == 2 and context.root.attributes.get_int("axis", 1) in (1, -1):
            return MatchResult()
        return MatchResult().fail("input is not 2-D or axis is not 1")


class ReshapeOfFlatten(RewriteRuleClassBase):
    """Reshape(Flatten(x), s) -> Reshape(x, s) when s has no 0 (which would copy a Flatten dim)."""

    def pattern(self, op, x, shape):
        return op.Reshape(op.Flatten(x, _allow_other_attributes=True), shape, _allow_other_attributes=True)

    def check(self, context, x, shape, **_) -> MatchResult:
        target = ints(shape)
        if target is None or (0 in target and not context.root.attributes.get_int("allowzero", 0)):
            return MatchResult().fail("shape not constant or has a 0")
        self._allowzero = context.root.attributes.get_int("allowzero", 0)
        return MatchResult()

    def rewrite(self, op, x, shape, **_):
        return op.Reshape(x, shape, allowzero=self._allowzero) if self._allowzero else op.Reshape(x, shape)


def _slice_args(node: ir.Node, x: ir.Value) -> dict[int, tuple[int, int, int]] | None:
    """{axis: (start, end, step)} of a Slice with constant inputs and known axes, or None."""
    args = [ints(v) if v is not None else None for v in node.inputs[1:5]] + [None] * (5 - len(node.inputs))
    starts, ends, axes, steps = args[:4]
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    if len(node.inputs) > 3 and node.inputs[3] is not None and axes is None:
        return None
    if len(node.inputs) > 4 and node.inputs[4] is not None and steps is None:
        return None
    axes = normalized(axes if axes is not None else list(range(len(starts))), rank(x))
    steps = steps if steps is not None else [1] * len(starts)
    if axes is None or len(set(axes)) != len(axes) or len(axes) != len(starts) or len(steps) != len(starts):
        return None
    return {a: (s, e, t) for a, s, e, t in zip(axes, starts, ends, steps, strict=True)}


def _full(x: ir.Value, axis: int, start: int, end: int, step: int) -> bool:
    dim = x.shape[axis] if x.shape is not None and axis < len(x.shape) else None
    static = isinstance(dim, int)
    starts_at_0 = start == 0 or (start < 0 and static and start + dim <= 0)
    return step == 1 and starts_at_0 and (end >= INT64_MAX // 2 or (static and end >= dim))


class NoOpSlice(_Rule):
    """Slice(x, starts, ends, axes, steps) -> x when every axis is kept whole."""

    def pattern(self, op, x):
        return op.Slice(x, _allow_other_inputs=True)

    def check(self, context, x, **_) -> MatchResult:
        args = _slice_args(context.root, x)
        if args is None or not all(_full(x, a, *ses) for a, ses in args.items()):
            return MatchResult().fail("not a constant full-range slice")
        return MatchResult()


class SliceSlice(RewriteRuleClassBase):
    """Slice(Slice(x, a), b) -> Slice(x, a∘b): disjoint axes merge; one axis composes for step 1, ends >= 0."""

    def pattern(self, op, x):
        return op.Slice(op.Slice(x, _allow_other_inputs=True), _allow_other_inputs=True)

    def check(self, context, x, **_) -> MatchResult:
        inner, outer = context.nodes if context.nodes[0] is not context.root else context.nodes[::-1]
        first, second = _slice_args(inner, x), _slice_args(outer, x)
        if first is None or second is None:
            return MatchResult().fail("slice arguments not constant")
        merged = dict(first)
        for axis, (s2, e2, t2) in second.items():
            if axis not in merged:
                merged[axis] = (s2, e2, t2)
                continue
            s1, e1, t1 = merged[axis]
            if t1 != 1 or t2 != 1 or min(s1, e1, s2, e2) < 0:
                return MatchResult().fail(f"axis {axis} sliced twice with steps or negative bounds")
            merged[axis] = (s1 + s2, min(e1, min(s1 + e2, INT64_MAX)), 1)
        self._merged = sorted(merged.items())
        return MatchResult()

    def rewrite(self, op, x, **_):
        axes = [a for a, _ in self._merged]
        starts, ends, steps = (int64([v[i] for _, v in self._merged]) for i in range(3))
        return op.Slice(x, op.Constant(value=starts), op.Constant(value=ends), op.Constant(value=int64(axes)),
                        op.Constant(value=steps))


class NoOpExpand(_Rule):
    """Expand(x, s) -> x when broadcasting x to s changes nothing."""

    def pattern(self, op, x, shape):
        return op.Expand(x, shape)

    def check(self, context, x, shape, **_) -> MatchResult:
        target = ints(shape)
        if target is None or x.shape is None or len(target) > len(x.shape):
            return MatchResult().fail("target not constant, input rank unknown or smaller than the target's")
        tail = list(x.shape)[len(x.shape) - len(target):]
        if all(s == 1 or s == d for s, d in zip(target, tail, strict=True)):
            return MatchResult()
        return MatchResult().fail(f"expand to {target} may broadcast {x.shape}")


def _unsqueeze(op, x, axes: list[int], version: int):
    if version >= 13:
        return op.Unsqueeze(x, op.Constant(value=int64(axes)))
    return op.Unsqueeze(x, axes=axes)


class UnsqueezeUnsqueeze(RewriteRuleClassBase):
    """Unsqueeze(Unsqueeze(x, a), b) -> Unsqueeze(x, a∪b) (positions composed)."""

    def pattern(self, op, x):
        return op.Unsqueeze(op.Unsqueeze(x, _allow_other_inputs=True), _allow_other_inputs=True)

    def check(self, context, x, **_) -> MatchResult:
        inner, outer = context.nodes if context.nodes[0] is not context.root else context.nodes[::-1]
        a1, a2 = axes_of(inner), axes_of(outer)
        r = rank(x)
        if a1 is None or a2 is None:
            return MatchResult().fail("axes not constant")
        a1 = normalized(a1, None if r is None else r + len(a1))
        a2 = normalized(a2, None if r is None else r + len(a1 or []) + len(a2))
        if a1 is None or a2 is None:
            return MatchResult().fail("negative axes and unknown rank")
        total = len(a2) + len(a1) + (r if r is not None else max([*a1, *a2]) + 1)
        rest = [p for p in range(total) if p not in a2]  # final positions of the inner result's dims
        if any(p >= len(rest) for p in a1):
            return MatchResult().fail("unknown rank")
        self._axes = sorted(a2 + [rest[p] for p in a1])
        self._version = opset(context)
        return MatchResult()

    def rewrite(self, op, x, **_):
        return _unsqueeze(op, x, self._axes, self._version)


class _Pair(_Rule):
    """Shared check: the two nodes' axes are the same set (normalized against the outer rank)."""

    def check(self, context, x, **_) -> MatchResult:
        inner, outer = context.nodes if context.nodes[0] is not context.root else context.nodes[::-1]
        a1, a2 = axes_of(inner), axes_of(outer)
        if a1 is None or a2 is None:
            return MatchResult().fail("axes absent or not constant")
        r = rank(x)
        outer_rank = None if r is None else (r + len(a1) if inner.op_type == "Unsqueeze" else r)
        n1, n2 = normalized(a1, outer_rank), normalized(a2, outer_rank)
        same = sorted(a1) == sorted(a2) if n1 is None or n2 is None else sorted(n1) == sorted(n2)
        return MatchResult() if same else MatchResult().fail(f"axes {a1} and {a2} differ")


class SqueezeUnsqueeze(_Pair):
    """Squeeze(Unsqueeze(x, a), a) -> x."""

    def pattern(self, op, x):
        return op.Squeeze(op.Unsqueeze(x, _allow_other_inputs=True), _allow_other_inputs=True)


class UnsqueezeSqueeze(_Pair):
    """Unsqueeze(Squeeze(x, a), a) -> x (Squeeze with explicit axes only removes size-1 dims)."""

    def pattern(self, op, x):
        return op.Unsqueeze(op.Squeeze(x, _allow_other_inputs=True), _allow_other_inputs=True)


class NeutralElement(_Rule):
    """x*1, 1*x, x+0, 0+x, x-0, x/1 -> x when broadcasting with the constant does not change x's shape."""

    def __init__(self, op_type: str, neutral: float, swap: bool) -> None:
        super().__init__(f"{op_type}{'Left' if swap else ''}Neutral")
        self.op_type, self.neutral, self.swap = op_type, neutral, swap

    @classmethod
    def rules(cls) -> list:
        specs = [("Mul", 1.0, False), ("Mul", 1.0, True), ("Add", 0.0, False), ("Add", 0.0, True),
                 ("Sub", 0.0, False), ("Div", 1.0, False)]
        return [cls.rule(*spec) for spec in specs]

    def pattern(self, op, x, c):
        node = getattr(op, self.op_type)
        return node(c, x) if self.swap else node(x, c)

    def check(self, context, x, c, **_) -> MatchResult:
        value = const(c, SMALL)
        if value is None or value.size == 0 or not np.all(value == self.neutral):
            return MatchResult().fail(f"operand is not a constant {self.neutral:g}")
        if value.ndim == 0:
            return MatchResult()
        if x.shape is None or value.ndim > len(x.shape):
            return MatchResult().fail("broadcasting may change the shape")
        tail = list(x.shape)[len(x.shape) - value.ndim:]
        if all(s == 1 or s == d for s, d in zip(value.shape, tail, strict=True)):
            return MatchResult()
        return MatchResult().fail(f"constant of shape {list(value.shape)} may broadcast {x.shape}")


def _static_dims(shape: ir.Shape) -> int:
    return sum(isinstance(d, int) for d in shape)


def _merge_shape(x: ir.Value, y: ir.Value) -> None:
    """``x`` learns what ``y`` knows of their (shared) type and shape."""
    if x.type is None:
        x.type = y.type
    if x.shape is None or (y.shape is not None and len(y.shape) == len(x.shape)
                           and _static_dims(y.shape) > _static_dims(x.shape)):
        x.shape = y.shape


def remove_identity(node: ir.Node) -> bool:
    """``y = Identity(x)``: readers of y read x; a graph output keeps its name. Returns whether removed."""
    graph = node.graph
    x, y = (node.inputs[0] if node.inputs else None), node.outputs[0]
    if graph is None or x is None or len(node.outputs) != 1:
        return False
    if y.is_graph_output():
        producer = x.producer()
        # x takes y's name, so it must be made in this graph and not already be named by the signature.
        if producer is None or producer.graph is not graph or x.is_graph_output():
            return False
        name = y.name
        _merge_shape(x, y)
        y.replace_all_uses_with(x, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        x.name = name
        return True
    _merge_shape(x, y)
    y.replace_all_uses_with(x)
    graph.remove(node, safe=True)
    return True


def remove_identities(model: ir.Model) -> list[ir.Node]:
    return [n for n in all_nodes(model) if n.op_type == "Identity" and n.domain in ("", "ai.onnx") and remove_identity(n)]


@register
class Eliminate(RulesPass):
    """f(x) -> x for no-op f (Identity, inference Dropout, no-op Cast/Reshape/Flatten/Slice/Expand/Transpose,
    x*1, x+0, x-0, x/1); g(f(x)) -> h(x) for Transpose, Reshape, Slice, Unsqueeze chains and Squeeze/Unsqueeze pairs.
    """

    name = "eliminate"

    def __init__(self, *, max_rounds: int = 8) -> None:
        self.max_rounds = max_rounds

    def rules(self, model: ir.Model) -> Sequence[object]:
        return [
            Dropout.rule(), osr.no_op_cast_rule, osr.cast_cast_rule, osr.no_op_transpose_rule,
            osr.transpose_transpose_rule, NoOpReshape.rule(), osr.reshape_reshape_rule, NoOpFlatten.rule(),
            ReshapeOfFlatten.rule(), NoOpSlice.rule(), SliceSlice.rule(), NoOpExpand.rule(),
            UnsqueezeUnsqueeze.rule(), SqueezeUnsqueeze.rule(), UnsqueezeSqueeze.rule(), *NeutralElement.rules(),
        ]

    def run(self, model: ir.Model) -> PassResult:
        identities = {id(n) for n in all_nodes(model) if n.op_type == "Identity"}
        changes: Counter[str] = Counter()
        warnings: dict[str, None] = {}
        rules = self.rules(model)
        for _ in range(self.max_rounds):
            basic_constant_propagation(all_nodes(model))  # Constant outputs in subgraphs get their values too
            applied = 0
            for rule in rules:
                try:
                    n = RewriteRuleSet([rule]).apply_to_model(model)
                except Exception as e:  # a failing rule leaves its node as it was
                    NameFixPass()(model)
                    warnings[f"eliminate/{rule_name(rule)}: skipped: {str(e).splitlines()[0][:200]}"] = None
                    continue
                changes[rule_name(rule)] += n
                applied += n
            removed = remove_identities(model)
            changes["Identity"] += sum(id(n) in identities for n in removed)
            if not applied and not removed:
                break
        return PassResult(model, bool(+changes), dict(changes), list(warnings))


__all__ = ["Eliminate", "remove_identity", "remove_identities", "ints", "axes_of", "SMALL"]
