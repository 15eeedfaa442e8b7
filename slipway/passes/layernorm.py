"""``fuse-layernorm``: the decomposed LayerNorm becomes one ``LayerNormalization`` (opset >= 17).

Three onnxscript rewrite rules, applied in order:

- ``LayerNormalization``: ``(x - m) / Sqrt(ReduceMean((x - m)^2) + eps)`` with
  ``m = ReduceMean(x)`` over the trailing axes (``Pow(d, 2)`` or ``Mul(d, d)``; ``Div`` or ``Mul``
  by ``Reciprocal``; ``axes`` as an attribute (opset < 18) or as an input (opset >= 18)) becomes
  ``LayerNormalization(x, ones, axis=-k, epsilon=eps)``;
- ``scale``: ``Mul(LayerNormalization(x, s, b), g) -> LayerNormalization(x, s*g, b*g)``;
- ``bias``: ``Add(LayerNormalization(x, s, b), c) -> LayerNormalization(x, s, b+c)``,

so gamma and beta (constants broadcasting only over the normalized dims) fold in whether or not
they are there. The fold rules also apply to a ``LayerNormalization`` an exporter wrote.
Below opset 17 nothing changes and ``explain`` names the opset. Initializers and Constant nodes
left without a user (the axes, eps, the ones, a folded gamma) are dropped at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import MatchingTracer, MatchStatus, RewriteRuleSet, pattern

from slipway.graph import Names, const, default_opset, label, remove_dead
from slipway.passes.base import PassResult, RulesPass, register, rule_name

MIN_OPSET = 17
_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})


def onnx_opset(model: ir.Model) -> int:
    return default_opset(model) or 1


class _State:
    """What the rules of one run share: the opset, fresh names, values that may end up unused."""

    def __init__(self, model: ir.Model) -> None:
        self.opset = onnx_opset(model)
        self.namer = Names(model)
        self.maybe_unused: list[ir.Value] = []

    def opset_ok(self, result: pattern.MatchResult) -> bool:
        if self.opset < MIN_OPSET:
            result.fail(f"opset {self.opset} < {MIN_OPSET}: LayerNormalization needs opset {MIN_OPSET}")
            return False
        return True


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _reduce_axes(node: ir.Node, axes_input: ir.Value | None, rank: int | None) -> list[int] | str:
    """The sorted non-negative (or, rank unknown, negative) axes a keepdims ReduceMean reduces."""
    keep = node.attributes.get("keepdims")
    if keep is not None and keep.as_int() != 1:
        return f"{node.op_type} {node.name!r} has keepdims=0"
    if axes_input is not None:
        array = _const(axes_input)
        if array is None:
            return f"the axes of {node.name!r} are not a constant"
        axes = [int(a) for a in array.reshape(-1)]
    elif "axes" in node.attributes:
        axes = list(node.attributes["axes"].as_ints())
    else:
        axes = []
    if not axes:
        noop = node.attributes.get("noop_with_empty_axes")
        if noop is not None and noop.as_int():
            return f"{node.name!r} has no axes and noop_with_empty_axes=1"
        if rank is None:
            return f"{node.name!r} reduces over every axis of an input of unknown rank"
        axes = list(range(rank))
    if rank is not None:
        if any(not -rank <= a < rank for a in axes):
            return f"the axes {axes} of {node.name!r} are out of range"
        axes = [a % rank for a in axes]
    elif any(a >= 0 for a in axes):
        return f"the rank of the input of {node.name!r} is unknown and its axes are not negative"
    return sorted(set(axes))


def _trailing(axes: list[int], rank: int | None) -> int | None:
    """k when ``axes`` are the last k axes, else None."""
    k = len(axes)
    if k == 0:
        return None
    expected = list(range(rank - k, rank)) if rank is not None else list(range(-k, 0))
    return k if axes == expected else None


def _normalized_shape(x: ir.Value, k: int) -> tuple[int, ...] | None:
    if x.shape is None or len(x.shape) < k:
        return None
    dims = list(x.shape)[len(x.shape) - k:]
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def _source(value: ir.Value | None) -> ir.Value | None:
    """The value behind a chain of Identity nodes (the legacy exporter shares equal weights that way)."""
    while value is not None and value.producer() is not None and value.producer().op_type == "Identity" \
            and value.producer().domain == "":
        value = value.producer().inputs[0]
    return value


def _const(value: ir.Value | None) -> np.ndarray | None:
    return const(_source(value))


def _scalar(value: ir.Value | None) -> float | None:
    array = _const(value)
    if array is None or array.size != 1 or array.dtype.kind not in "fiu" and array.dtype.name != "bfloat16":
        return None  # (an integer is fine for Pow's exponent)
    return float(np.asarray(array, dtype=np.float64).reshape(-1)[0])


class LayerNormCore(pattern.RewriteRuleClassBase):
    """(x - ReduceMean(x)) / Sqrt(ReduceMean((x - mean)^2) + eps) -> LayerNormalization(x, ones)"""

    def __init__(self, state: _State, form: str) -> None:
        super().__init__(name="LayerNormalization")
        self.state = state
        self.form = form  # how d is divided by std: "div", "mul" (d * 1/std) or "mul-swapped"

    def pattern(self, op, x, eps):
        axes1 = pattern.Var("axes1", can_match_none=True)
        axes2 = pattern.Var("axes2", can_match_none=True)
        mean = op.ReduceMean(x, axes1, _outputs=["mean"])
        d = op.Sub(x, mean)
        square = pattern.OrValue([op.Pow(d, pattern.Var("exponent")), op.Mul(d, d)])
        var = op.ReduceMean(square, axes2, _outputs=["var"])
        std = op.Sqrt(pattern.OrValue([op.Add(var, eps), op.Add(eps, var)]))
        if self.form == "div":
            return op.Div(d, std)
        if self.form == "mul":
            return op.Mul(d, op.Reciprocal(std))
        return op.Mul(op.Reciprocal(std), d)

    def check(self, context, x, eps, mean, var, axes1=None, axes2=None, exponent=None, **_):
        result = pattern.MatchResult()
        epsilon = _scalar(eps)
        if epsilon is None:
            return result.fail("epsilon is not a constant scalar", eps)
        if exponent is not None and _scalar(exponent) != 2.0:
            return result.fail("the variance is not a power of 2", exponent)
        dtype = x.dtype or ir.DataType.from_numpy(_const(eps).dtype)
        if dtype not in _DTYPES:
            return result.fail(f"input dtype {dtype} is not float, float16 or bfloat16", x)
        rank = _rank(x)
        axes = _reduce_axes(mean.producer(), axes1, rank)
        axes_var = _reduce_axes(var.producer(), axes2, rank)
        for found in (axes, axes_var):
            if isinstance(found, str):
                return result.fail(found, x)
        if axes != axes_var:
            return result.fail(f"mean and variance reduce different axes ({axes} vs {axes_var})", var)
        k = _trailing(axes, rank)
        if k is None:
            return result.fail(f"axes {axes} are not the trailing axes of a rank-{rank} input", mean)
        shape = _normalized_shape(x, k)
        if shape is None:
            return result.fail(f"the normalized dims of {x.name!r} are not static (shape {x.shape})", x)
        if not self.state.opset_ok(result):
            return result
        self.plan = (k, epsilon, shape, dtype)
        self.state.maybe_unused.extend(v for v in (eps, axes1, axes2, exponent) if v is not None)
        return result

    def rewrite(self, op, x, **_):
        k, epsilon, shape, dtype = self.plan
        ones = ir.tensor(np.ones(shape, dtype=dtype.numpy()), name=self.state.namer(f"{x.name}_ln_scale"))
        scale = op.initializer(ones, ones.name)
        self.state.maybe_unused.append(scale)
        return op.LayerNormalization(x, scale, axis=-k, epsilon=epsilon, stash_type=1)


class _FoldAffine(pattern.RewriteRuleClassBase):
    """Shared by the scale and bias folds: ``c`` (a constant) op'd onto a LayerNormalization."""

    op_type = ""

    def __init__(self, state: _State, swap: bool) -> None:
        super().__init__(name=self.rule_name)
        self.state = state
        self.swap = swap

    def pattern(self, op, x, scale, c):
        bias = pattern.Var("bias", can_match_none=True)
        ln = op.LayerNormalization(x, scale, bias, _outputs=["ln"])
        args = (c, ln) if self.swap else (ln, c)
        return getattr(op, self.op_type)(*args)

    def check(self, context, x, scale, c, ln, bias=None, **_):
        result = pattern.MatchResult()
        node = ln.producer()
        if any(v.uses() or v.is_graph_output() for v in node.outputs[1:]):
            return result.fail("its Mean / InvStdDev outputs are used", node)
        arrays = [_const(scale), _const(c), None if bias is None else _const(bias)]
        if arrays[0] is None or arrays[1] is None or bias is not None and arrays[2] is None:
            return result.fail(f"the scale, bias or {self.op_type} operand is not a constant", c)
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else -1
        rank = _rank(x)
        if axis >= 0 and rank is None:
            return result.fail(f"axis={axis} on an input of unknown rank", x)
        k = -axis if axis < 0 else rank - axis
        shape = _normalized_shape(x, k) or (arrays[0].shape if arrays[0].ndim == k else None)
        if shape is None:
            return result.fail("the normalized shape is unknown", x)
        folded = _within(arrays[1], shape, k, rank)
        if isinstance(folded, str):
            return result.fail(folded, c)
        if not self.state.opset_ok(result):
            return result
        self.plan = (shape, folded, arrays)
        self.state.maybe_unused.extend(v for v in (scale, bias, c) if v is not None)
        return result

    def new_input(self, op, base: ir.Value | None, array: np.ndarray, shape: tuple[int, ...],
                  dtype: np.dtype, reuse: ir.Value | None) -> ir.Value:
        """An initializer holding ``array`` broadcast to ``shape``, or ``reuse`` when it already is it."""
        full = np.broadcast_to(array, shape).astype(dtype)
        source = _source(reuse)
        existing = const(source)
        if existing is not None and existing.shape == shape and np.array_equal(existing, full):
            return source
        name = self.state.namer(f"{base.name if base is not None else 'ln'}_{self.rule_name}")
        value = op.initializer(ir.tensor(np.ascontiguousarray(full), name=name), name)
        self.state.maybe_unused.append(value)
        return value


def _within(array: np.ndarray, shape: tuple[int, ...], k: int, rank: int | None) -> np.ndarray | str:
    """``array`` reshaped to broadcast against ``shape`` (the last k dims) without growing the
    output, or why it cannot be."""
    limit = rank if rank is not None else k
    if array.ndim > limit:
        return f"the constant has {array.ndim} dims, more than the output's {limit}"
    lead = array.ndim - k
    if lead > 0:
        if any(d != 1 for d in array.shape[:lead]):
            return f"the constant {list(array.shape)} varies along axes that are not normalized"
        array = array.reshape(array.shape[lead:])
    try:
        fits = np.broadcast_shapes(array.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    return array if fits else f"the constant {list(array.shape)} does not broadcast to {list(shape)}"


class FoldScale(_FoldAffine):
    """Mul(LayerNormalization(x, s, b), g) -> LayerNormalization(x, s*g, b*g)"""

    op_type, rule_name = "Mul", "scale"

    def rewrite(self, op, x, scale, c, ln, bias=None, **_):
        shape, g, (s, _, b) = self.plan
        dtype = s.dtype
        f64 = np.float64
        new_scale = self.new_input(op, c, s.astype(f64) * g.astype(f64), shape, dtype, c)
        inputs = [x, new_scale]
        if bias is not None:
            inputs.append(self.new_input(op, bias, b.astype(f64) * g.astype(f64), shape, dtype, bias))
        attrs = {a.name: a.value for a in ln.producer().attributes.values()}
        return op.LayerNormalization(*inputs, **attrs)


class FoldBias(_FoldAffine):
    """Add(LayerNormalization(x, s, b), c) -> LayerNormalization(x, s, b+c)"""

    op_type, rule_name = "Add", "bias"

    def rewrite(self, op, x, scale, c, ln, bias=None, **_):
        shape, beta, (s, _, b) = self.plan
        total = beta.astype(np.float64) + (0.0 if b is None else b.astype(np.float64))
        new_bias = self.new_input(op, c, total, shape, s.dtype, c)
        attrs = {a.name: a.value for a in ln.producer().attributes.values()}
        return op.LayerNormalization(x, scale, new_bias, **attrs)


@register
class FuseLayerNorm(RulesPass):
    """(x - mean) / Sqrt(var + eps) * gamma + beta -> LayerNormalization(x, gamma, beta, axis=-k, epsilon=eps)

    ``mean = ReduceMean(x)`` and ``var = ReduceMean((x - mean)^2)`` over the last k axes, with
    ``Pow(d, 2)`` or ``Mul(d, d)``, ``Div`` or ``Mul`` by ``Reciprocal``, gamma and beta optional
    (ones / no bias when absent) and constant. Needs opset >= 17; float, float16 and bfloat16.
    If/Loop/Scan bodies are rewritten too (onnxscript's rewriter walks them).
    """

    name = "fuse-layernorm"

    def __init__(self) -> None:
        self._state: _State | None = None

    def rules(self, model: ir.Model) -> Sequence[object]:
        self._state = state = _State(model)
        cores = [LayerNormCore.rule(state, form) for form in ("div", "mul", "mul-swapped")]
        folds = [cls.rule(state, swap) for cls in (FoldScale, FoldBias) for swap in (False, True)]
        return [*cores, *folds]

    def run(self, model: ir.Model) -> PassResult:
        if onnx_opset(model) < MIN_OPSET:
            return PassResult(model, False)
        _fill_missing_shapes(model)
        result = super().run(model)
        if self._state is not None and result.changes:
            remove_dead(self._state.maybe_unused)
        self._state = None
        return result

    def explain(self, model: ir.Model) -> list[str]:
        """Near misses only: a whole pattern matched but a condition (or the opset) ruled it out."""
        _fill_missing_shapes(model)
        tracer = MatchingTracer()
        RewriteRuleSet(list(self.rules(model))).apply_to_model(model, tracer=tracer)
        self._state = None
        lines = []
        for rule, matches in tracer.best_matches_map.items():
            for m in matches:
                reason = m.match_result.reason
                near = m.status in (MatchStatus.CONDITION_FAILED, MatchStatus.REPLACEMENT_FAILED) or \
                    m.status == MatchStatus.NO_MATCH and reason.startswith("Matched nodes have other uses")
                if near:
                    node = m.root_node
                    lines.append(f"{self.name}/{rule_name(rule)}: {label(node)}: {reason}")
        return list(dict.fromkeys(lines))


def _fill_missing_shapes(model: ir.Model) -> None:
    """Give a shape and dtype (from onnx shape inference) to each ReduceMean / LayerNormalization
    input that has none; nothing else is touched. Inference failing leaves the model as it is."""
    wanted = [node.inputs[0] for graph in model.graphs() for node in graph
              if node.op_type in ("ReduceMean", "LayerNormalization") and node.inputs and node.inputs[0] is not None
              and node.inputs[0].shape is None]
    if not wanted:
        return
    try:
        proto = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), strict_mode=False)
    except Exception:  # inference is a help here, never a requirement
        return
    inferred = {}
    for graph in ir.serde.deserialize_model(proto).graphs():
        inferred.update(ir.convenience.create_value_mapping(graph))
    for value in wanted:
        found = inferred.get(value.name or "")
        if found is not None and found.shape is not None:
            value.shape = found.shape
            value.dtype = value.dtype or found.dtype
