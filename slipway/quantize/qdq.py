"""INT8 post-training quantization to standard QDQ ONNX, given a range per activation tensor.

``quantize_qdq(model, ranges)`` returns a copy in which

* every weight of a Conv / ConvTranspose / Gemm / MatMul is an int8 initializer read through
  ``DequantizeLinear`` (symmetric, zero point 0, per output channel: Conv axis 0, ConvTranspose
  axis 1 (the scale of channel j is shared by the ``group`` copies of j), Gemm axis 0 when
  ``transB=1`` else 1, MatMul axis 1 of a 2-D B; a channel of zeros gets scale 1);
* every bias is int32 with scale ``input_scale * weight_scale`` (per channel), so that ONNX
  Runtime turns ``DQ -> Conv -> Q`` into ``QLinearConv`` and TensorRT / OpenVINO into int8 kernels;
* the activation tensors the engines need carry ``QuantizeLinear -> DequantizeLinear``: the inputs
  of the quantized ops, the output of a Conv (engines fuse ``DQ -> Conv -> Q``) - taken *after* a
  Relu / Clip that is its only reader, so the activation is absorbed into the quantized range -,
  both inputs and the output of a residual ``Add`` (``QLinearAdd``), the inputs and the output of a
  ``Concat`` (one shared scale over the union of their ranges - unless some inputs are never
  negative and others are: the shared zero point would keep their Relu from being absorbed), and
  the output of a pool. A data movement op (Reshape, Transpose, MaxPool, Flatten, Squeeze,
  Unsqueeze, Slice) whose input is quantized gets its output quantized with the *same* scale, so
  engines run it on int8 data.

The placement is tensor-centric (one Q/DQ pair per tensor, read by every consumer that is not
excluded), as in onnxruntime's QDQ quantizer. Nodes named in ``exclude_nodes`` keep reading float
tensors and float weights; the accuracy-budget loop uses this to revert sensitive layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from slipway.errors import UserError
from slipway.graph import (
    WEIGHT_QMAX,
    Names,
    add_initializer,
    attr_float,
    attr_int,
    const,
    copy_model,
    default_opset,
    is_op,
    out_channels,
    quantize_weight,
    remove_dead,
)
from slipway.passes.opset import convert
from slipway.quantize.types import Ranges

__all__ = ["QuantReport", "quantize_qdq", "activation_qparams", "weight_axis", "SUPPORTED",
           "MIN_OPSET"]

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
JOINS = ("Add", "Concat")
POOLS = ("GlobalAveragePool", "AveragePool")  # own output scale (engines requantize)
SHARED = ("Reshape", "Transpose", "MaxPool", "Flatten", "Squeeze", "Unsqueeze", "Slice")  # same scale in and out
SUPPORTED = COMPUTE + JOINS + POOLS + SHARED
ABSORBED = ("Relu", "Clip")
QTYPES = {"int8": (np.int8, -128, 127), "uint8": (np.uint8, 0, 255)}
MIN_OPSET = 13  # per-axis DequantizeLinear
# reduce_range: 7-bit weights. x86 CPUs without VNNI multiply u8 x s8 with VPMADDUBSW, which adds
# pairs of products into int16 and saturates (2 x 255 x 127 > 32767); |w| <= 63 cannot saturate.
REDUCED_QMAX = 63


@dataclass
class QuantReport:
    """What :func:`quantize_qdq` did. Node keys are node names (``OpType_index`` for unnamed nodes)."""

    quantized: dict[str, str] = field(default_factory=dict)  # node -> op type
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why it stayed float
    absorbed: list[str] = field(default_factory=list)  # Relu / Clip read through the Q after them
    activations: int = 0  # tensors given a QuantizeLinear -> DequantizeLinear pair
    weights: int = 0  # weights stored as int8
    biases: int = 0  # biases stored as int32
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Quantized nodes per op type, plus the totals."""
        counts: dict[str, int] = {}
        for op in self.quantized.values():
            counts[op] = counts.get(op, 0) + 1
        return {**counts, "quantized": len(self.quantized), "skipped": len(self.skipped),
                "activations": self.activations, "weights": self.weights, "biases": self.biases}


# --- numbers ------------------------------------------------------------------------------------

def activation_qparams(lo: float, hi: float, activation_type: str, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, zero_point)`` scalars that represent ``[lo, hi]`` (always widened to hold 0).

    Symmetric int8: zero point 0, ``scale = max|x| / 127``. Symmetric uint8: zero point 0 for a
    range that is never negative (``scale = hi / 255``), else 128. Asymmetric: the range is spread
    over all 256 levels with the zero point that puts 0 on a level."""
    dtype, qmin, qmax = QTYPES[activation_type]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        if activation_type == "uint8" and lo >= 0:
            zp, scale = 0, hi / 255.0
        else:
            zp, scale = (0 if activation_type == "int8" else 128), max(-lo, hi) / 127.0
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax)) if scale > 0 else 0
    if not scale > 0 or not np.isfinite(scale):
        scale = 1.0
    return np.array(scale, dtype=np.float32), np.array(zp, dtype=dtype)


def weight_axis(node: ir.Node, w: np.ndarray, per_channel: bool) -> int | None:
    """The output-channel axis of ``node``'s weight (None: per tensor)."""
    if not per_channel:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr_int(node, "transB", 0) else 1
    return 1 if w.ndim == 2 else None  # MatMul: the N axis of a 2-D B


# --- planning -----------------------------------------------------------------------------------

@dataclass
class _Plan:
    ranges: Ranges
    exclude: set[str]
    ops: set[str]
    per_channel: bool = True
    qmax: int = WEIGHT_QMAX
    need: dict[ir.Value, None] = field(default_factory=dict)  # ordered set of tensors to Q/DQ
    parent: dict[ir.Value, ir.Value] = field(default_factory=dict)  # union-find: tensors sharing a scale
    weights: list[tuple[ir.Node, int]] = field(default_factory=list)  # (node, input index) stored int8
    biases: list[ir.Node] = field(default_factory=list)
    report: QuantReport = field(default_factory=QuantReport)

    def find(self, v: ir.Value) -> ir.Value:
        while self.parent.get(v, v) is not v:
            v = self.parent[v]
        return v

    def union(self, a: ir.Value, b: ir.Value) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra

    def has_range(self, v: ir.Value | None) -> bool:
        return _is_float32(v) and v.name in self.ranges

    def usable(self, node: ir.Node) -> bool:
        return node.name not in self.exclude


def _is_float32(v: ir.Value | None) -> bool:
    """float32, or of unknown type (shape inference could not tell; calibration ranges are float only)."""
    return v is not None and v.dtype in (ir.DataType.FLOAT, None)


def _absorb(value: ir.Value, plan: _Plan) -> tuple[ir.Value, list[ir.Node]]:
    """Follow ``value`` through a chain of Relu / Clip that are its only reader."""
    chain = []
    while not value.is_graph_output() and len(value.uses()) == 1:
        user = value.uses()[0].node
        if not (is_op(user, *ABSORBED) and plan.usable(user) and value is user.inputs[0]):
            break
        if user.op_type == "Clip" and any(v is not None and const(v) is None for v in user.inputs[1:]):
            break
        chain.append(user)
        value = user.outputs[0]
    return value, chain


def _plan_compute(node: ir.Node, plan: _Plan) -> str | None:
    """Plan a Conv / ConvTranspose / Gemm / MatMul; the reason it stays float, or None."""
    acts, weights = [], []
    for idx in (0, 1):
        v = node.inputs[idx] if len(node.inputs) > idx else None
        if v is None:
            return "missing input"
        array = const(v)
        if array is not None:
            if array.dtype != np.float32:
                return f"input {v.name!r} is {array.dtype}, not float32"
            if idx == 0 and node.op_type != "MatMul":
                return "its data input is a constant"
            weights.append(idx)
        elif node.op_type in ("Conv", "ConvTranspose") and idx == 1:
            return f"weight {v.name!r} is not a constant"
        elif not _is_float32(v):
            return f"input {v.name!r} is not float32"
        elif not plan.has_range(v):
            return f"no range for input {v.name!r}"
        else:
            acts.append(v)
    out, chain = _absorb(node.outputs[0], plan)
    plan.need.update(dict.fromkeys(acts))
    plan.weights.extend((node, idx) for idx in weights)
    if node.op_type in ("Conv", "ConvTranspose"):  # engines fuse DQ -> Conv -> Q only with the Q
        if plan.has_range(out):
            plan.need[out] = None
            plan.report.absorbed.extend(n.name for n in chain)
        else:
            plan.report.notes.append(f"{node.name}: no range for its output {out.name!r}; engines may not fuse it")
    _plan_bias(node, plan, 0 in weights)
    return None


def _out_channels(node: ir.Node, w: np.ndarray) -> int:
    return out_channels(node.op_type, w, attr_int(node, "group", 1), attr_int(node, "transB", 0))


def _plan_bias(node: ir.Node, plan: _Plan, const_input: bool) -> None:
    if node.op_type == "MatMul" or len(node.inputs) < 3 or node.inputs[2] is None or const_input:
        return
    b, w = const(node.inputs[2]), const(node.inputs[1])
    if b is None or w is None or b.dtype != np.float32:
        plan.report.notes.append(f"{node.name}: bias left float (not a float32 constant)")
    elif node.op_type == "Gemm" and (attr_float(node, "alpha", 1.0) != 1.0 or attr_float(node, "beta", 1.0) != 1.0):
        plan.report.notes.append(f"{node.name}: bias left float (Gemm alpha or beta is not 1)")
    elif b.size != _out_channels(node, w) or max(b.shape, default=1) != b.size:
        plan.report.notes.append(f"{node.name}: bias left float (it is not one value per output channel)")
    else:
        plan.biases.append(node)


def _plan_join(node: ir.Node, plan: _Plan) -> str | None:
    """Plan an Add (both inputs and output) or a Concat (inputs and output share one scale)."""
    if node.op_type == "Add" and len(node.inputs) != 2:
        return "not a two-input Add"
    for v in node.inputs:
        if v is None or const(v) is not None:
            return "an input is a constant"
        if not plan.has_range(v):
            return f"no range for input {v.name!r}"
    out, chain = _absorb(node.outputs[0], plan)
    if not plan.has_range(out):
        return f"no range for output {out.name!r}"
    plan.need.update(dict.fromkeys([*node.inputs, out]))
    plan.report.absorbed.extend(n.name for n in chain)
    if node.op_type == "Concat":
        if len({plan.ranges[v.name][0] >= 0 for v in [*node.inputs, out]}) == 1:
            for v in node.inputs:
                plan.union(out, v)
        else:  # one scale would give the never-negative inputs a zero point inside the range: no Relu removal
            plan.report.notes.append(f"{node.name}: inputs keep their own scales (some are never negative, some are)")
    return None


def _propagate(node: ir.Node, plan: _Plan) -> bool:
    """A data-movement op or a pool whose input is quantized: quantize its output too."""
    x, y = node.inputs[0] if node.inputs else None, node.outputs[0]
    if x is None or x not in plan.need or not y.uses() or not _is_float32(y):
        return False
    if node.op_type in POOLS:
        if not plan.has_range(y):
            return False
    plan.need[y] = None
    if node.op_type in SHARED:
        plan.union(x, y)
    return True


def _plan(graph: ir.Graph, plan: _Plan) -> None:
    report = plan.report
    for node in graph:
        if node.op_type not in COMPUTE + JOINS or node.domain != "":
            continue
        if node.op_type not in plan.ops:
            report.skipped[node.name] = "op type not selected"
        elif not plan.usable(node):
            report.skipped[node.name] = "excluded"
        elif reason := (_plan_compute(node, plan) if node.op_type in COMPUTE else _plan_join(node, plan)):
            report.skipped[node.name] = reason
        else:
            report.quantized[node.name] = node.op_type
    for node in graph:  # topological order: a chain of data-movement ops propagates in one sweep
        if node.domain == "" and node.op_type in POOLS + SHARED and node.op_type in plan.ops and plan.usable(node):
            if _propagate(node, plan):
                report.quantized[node.name] = node.op_type
    done = {*report.quantized, *report.skipped, *report.absorbed}
    for node in graph:  # the other nodes that read a calibrated tensor run in float
        if node.name in done or node.op_type in (*SUPPORTED, *ABSORBED):
            continue
        if any(map(plan.has_range, node.inputs)):
            report.skipped[node.name] = f"{node.op_type} is not quantized (runs in float)"


# --- rewriting ----------------------------------------------------------------------------------

def _dequantize(graph: ir.Graph, namer: Names, base: str, q: ir.Value, scale: ir.Value, zp: ir.Value,
                axis: int | None, shape: ir.Shape | None) -> ir.Value:
    attrs = [ir.AttrInt64("axis", axis)] if axis is not None else []
    out = ir.Value(name=namer(f"{base}_dequantized"), type=ir.TensorType(ir.DataType.FLOAT), shape=shape)
    graph.append(ir.Node("", "DequantizeLinear", [q, scale, zp], attrs, outputs=[out], name=namer(f"{base}_DQ")))
    return out


def _quantize_weights(graph: ir.Graph, namer: Names, plan: _Plan) -> dict[ir.Node, np.ndarray]:
    """int8 initializers + DequantizeLinear for the planned weights; the weight scale of each node."""
    done: dict[tuple[ir.Value, int | None], tuple[ir.Value, np.ndarray]] = {}
    scales: dict[ir.Node, np.ndarray] = {}
    old = []
    for node, idx in plan.weights:
        v = node.inputs[idx]
        w = const(v)
        axis = weight_axis(node, w, plan.per_channel) if idx == 1 else None
        if (v, axis) not in done:
            q, scale = quantize_weight(w, axis, plan.qmax)
            base = v.name or f"{node.name}_W"
            qv = add_initializer(graph, namer(f"{base}_quantized"), q)
            sv = add_initializer(graph, namer(f"{base}_scale"), scale)
            zv = add_initializer(graph, namer(f"{base}_zero_point"), np.zeros(scale.shape, np.int8))
            done[(v, axis)] = (_dequantize(graph, namer, base, qv, sv, zv, axis, ir.Shape(w.shape)), scale)
            plan.report.weights += 1
        dq, scale = done[(v, axis)]
        node.replace_input_with(idx, dq)
        old.append(v)
        if idx == 1:
            scales[node] = scale
    remove_dead(old)
    return scales


def _quantize_biases(graph: ir.Graph, namer: Names, plan: _Plan, qparams: dict[ir.Value, tuple],
                     w_scales: dict[ir.Node, np.ndarray]) -> None:
    old = []
    for node in plan.biases:
        b = np.asarray(const(node.inputs[2]), np.float64).reshape(-1)
        x_scale = float(qparams[plan.find(node.inputs[0])][0])
        w_scale = np.asarray(w_scales[node], np.float64).reshape(-1)
        if node.op_type == "ConvTranspose":  # per-channel scale of dim 1 repeats for each group
            w_scale = np.tile(w_scale, attr_int(node, "group", 1))
        scale = (x_scale * w_scale).astype(np.float32)
        q = np.round(b / scale.astype(np.float64))
        if np.abs(q).max(initial=0) >= 2**31 - 1:
            plan.report.notes.append(f"{node.name}: bias left float (it overflows int32 at scale input x weight)")
            continue
        base = node.inputs[2].name or f"{node.name}_B"
        axis = 0 if scale.size > 1 else None
        scale = scale if axis is not None else scale.reshape(())
        qv = add_initializer(graph, namer(f"{base}_quantized"), q.astype(np.int32))
        sv = add_initializer(graph, namer(f"{base}_scale"), scale)
        zv = add_initializer(graph, namer(f"{base}_zero_point"), np.zeros(scale.shape, np.int32))
        old.append(node.inputs[2])
        node.replace_input_with(2, _dequantize(graph, namer, base, qv, sv, zv, axis, ir.Shape([b.size])))
        plan.report.biases += 1
    remove_dead(old)


def _group_qparams(plan: _Plan, activation_type: str, symmetric: bool) -> dict[ir.Value, tuple]:
    """(scale, zero point) per group of tensors sharing a scale (keyed by its root); the range is the union."""
    spans: dict[ir.Value, tuple[float, float]] = {}
    for v in plan.need:
        if v.name in plan.ranges:
            lo, hi = plan.ranges[v.name]
            root = plan.find(v)
            old = spans.get(root, (lo, hi))
            spans[root] = (min(old[0], lo), max(old[1], hi))
    return {root: activation_qparams(lo, hi, activation_type, symmetric) for root, (lo, hi) in spans.items()}


def _quantize_activations(graph: ir.Graph, namer: Names, plan: _Plan, qparams: dict[ir.Value, tuple]) -> None:
    made: dict[ir.Value, tuple[ir.Value, ir.Value]] = {}
    excluded = {n for n in graph if not plan.usable(n)}
    for v in plan.need:
        root = plan.find(v)
        if root not in made:
            scale, zp = qparams[root]
            made[root] = (add_initializer(graph, namer(f"{root.name}_scale"), scale),
                          add_initializer(graph, namer(f"{root.name}_zero_point"), zp))
        sv, zv = made[root]
        name = v.name
        users = [(u.node, u.idx) for u in v.uses() if u.node not in excluded]
        qtype = ir.TensorType(ir.DataType.from_numpy(qparams[root][1].dtype))
        qout = ir.Value(name=namer(f"{name}_quantized"), type=qtype, shape=v.shape)
        q = ir.Node("", "QuantizeLinear", [v, sv, zv], outputs=[qout], name=namer(f"{name}_Q"))
        graph.append(q)
        dq = _dequantize(graph, namer, name, qout, sv, zv, None, v.shape)
        for user, idx in users:
            user.replace_input_with(idx, dq)
        if v.is_graph_output():  # the graph output becomes the DQ so that its producer still fuses
            i = list(graph.outputs).index(v)
            v.name = namer(f"{name}_float")
            dq.name = name
            graph.outputs[i] = dq
        plan.report.activations += 1


# --- entry point --------------------------------------------------------------------------------

def _check(ranges: Mapping[str, tuple[float, float]], activation_type: str, ops: Iterable[str]) -> Ranges:
    if activation_type not in QTYPES:
        raise UserError(f"activation_type must be 'int8' or 'uint8', got {activation_type!r}")
    unknown = sorted(set(ops) - set(SUPPORTED))
    if unknown:
        raise UserError(f"cannot quantize op type(s) {', '.join(unknown)} to INT8; supported: {', '.join(SUPPORTED)}")
    clean: Ranges = {}
    for name, span in ranges.items():
        try:
            lo, hi = (float(x) for x in span)
        except (TypeError, ValueError):
            raise UserError(f"range of tensor {name!r} must be a (low, high) pair, got {span!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise UserError(f"range of tensor {name!r} is not a finite (low <= high) pair: ({lo}, {hi})")
        clean[name] = (lo, hi)
    return clean


def _name_nodes(model: ir.Model) -> None:
    """Give every unnamed main-graph node the name ``OpType_index`` (so reports can name it)."""
    namer = Names(model)
    for i, node in enumerate(model.graph):
        if not node.name:
            node.name = namer(f"{node.op_type}_{i}")


def quantize_qdq(model: ir.Model, ranges: Mapping[str, tuple[float, float]], *, per_channel: bool = True,
                 symmetric_activations: bool = True, activation_type: str = "int8", exclude_nodes: Iterable[str] = (),
                 ops: Iterable[str] = SUPPORTED, reduce_range: bool = False) -> tuple[ir.Model, QuantReport]:
    """A QDQ copy of ``model`` (the input is not changed) and what was quantized; see the module doc.

    ``ranges`` maps activation tensor names to their calibrated (low, high). Unnamed nodes are
    named ``OpType_index`` (their position in the main graph), also for ``exclude_nodes``.
    Models below opset 13 are converted to 13 (per-axis DequantizeLinear needs it).
    ``reduce_range``: 7-bit weights (``|q| <= 63``), for x86 CPUs without VNNI where onnxruntime's
    u8 x s8 kernels otherwise saturate (a large accuracy loss on some models; see ``REDUCED_QMAX``).

    On onnxruntime's CPU engine, ``activation_type="uint8", symmetric_activations=False`` is the
    layout it fuses everywhere (a Q with zero point at the bottom of the range removes a Relu);
    symmetric int8 activations (the TensorRT layout) keep ``Conv -> Relu`` in float there.
    """
    if not isinstance(model, ir.Model):
        raise UserError(f"quantize_qdq expects an onnx_ir.Model, got {type(model).__name__}")
    clean, ops = _check(ranges, activation_type, ops), set(ops)
    model = copy_model(model)
    _name_nodes(model)
    ShapeInferencePass(strict_mode=False)(model)
    names = {n.name for n in model.graph}
    missing = sorted(set(exclude_nodes) - names)
    if missing:
        raise UserError(f"exclude_nodes: no node named {missing[0]!r} in the model")
    opset = default_opset(model)
    if opset is None:
        model.opset_imports[""] = MIN_OPSET
    elif opset < MIN_OPSET:
        convert(model, MIN_OPSET)
    plan = _Plan(clean, set(exclude_nodes), ops, per_channel, REDUCED_QMAX if reduce_range else WEIGHT_QMAX)
    if opset is not None and opset < MIN_OPSET:
        plan.report.notes.append(f"opset {opset} converted to {MIN_OPSET} (per-channel DequantizeLinear)")
    graph = model.graph
    _plan(graph, plan)
    namer = Names(model)
    qparams = _group_qparams(plan, activation_type, symmetric_activations)
    w_scales = _quantize_weights(graph, namer, plan)
    _quantize_biases(graph, namer, plan, qparams, w_scales)
    _quantize_activations(graph, namer, plan, qparams)
    graph.sort()
    if not plan.report.quantized:
        plan.report.notes.append("nothing was quantized")
    return model, plan.report
