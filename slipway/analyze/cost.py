"""Cost formulas, one per ONNX op type, in a registry keyed by op type.

Conventions (all counts are for one run of the node at the resolved static shapes):

* **MACs** are multiply-accumulates of the ops that reduce products: Conv, ConvTranspose,
  Gemm, MatMul, Einsum and their integer / QLinear forms. Every other op has 0 MACs.
  Bias additions are not MACs.
* **FLOPs** = 2 x MACs for those ops (one multiply + one add), plus 1 FLOP per bias element
  added (Conv/ConvTranspose/Gemm with a bias) and per alpha/beta scaling in Gemm.
* Elementwise and activation ops cost a fixed number of FLOPs per output element, counted
  as elementary operations, each 1 FLOP: add, subtract, multiply, divide, compare/select,
  and one evaluation of exp, log, sqrt, tanh, erf, sin or cos (see ``ELEMENTWISE_FLOPS``:
  Sigmoid = neg, exp, add, div = 4). Variadic Sum/Max/Min/Mean cost (inputs - 1) per element.
* Pooling: MaxPool k-1 comparisons, AveragePool k-1 adds + 1 divide per output element
  (k = kernel volume); global pools the same over the whole spatial extent.
* Normalizations (inference form): BatchNormalization 2 per element (scale and shift are
  folded per channel); Layer/Instance/Group normalization 5 per element for the statistics and
  the normalization (sum, subtract, square, sum of squares, multiply) plus 1 each for scale and
  bias, plus 4 per normalized group (two divisions, eps add, rsqrt).
* Softmax / LogSoftmax: 5 per element (max, subtract, exp, sum, divide or subtract).
* Resize: nearest 0; linear 2^(r+1) - 1 and cubic 2*4^r - 1 per output element, r = number
  of resized axes (a weighted sum of 2^r or 4^r neighbours).
* Reductions: one op per input element (plus a divide per output for ReduceMean).
* Data movement (Reshape, Transpose, Concat, Slice, Gather, Pad, Cast, ...) and Constant
  cost 0 MACs and 0 FLOPs; their bytes are still counted by the caller.

* Recurrent layers (LSTM, GRU, RNN) with their default activations: the input and recurrent
  matrix products are MACs (per step, batch row and direction: gates x hidden x (input + hidden));
  FLOPs add the per-unit gate arithmetic (see ``RECURRENT``).
* Control flow counts the nodes of its subgraphs (:class:`slipway.analyze.types.SubgraphCost`):
  If the branch its condition picks when that is a constant, else the larger branch (noted);
  Loop its body x the trip count ``M`` when that is a constant, Scan its body x the sequence
  length. A Loop whose trip count is unknown counts one iteration and is flagged
  ``trip_count_unknown`` (a lower bound, never zero). Bytes are the subgraph's, repeated alike.

An op without a formula, or one whose shapes cannot be inferred, is "not counted": its MACs
and FLOPs are None, never a silent zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from slipway.analyze.scopes import trip_count
from slipway.analyze.shapes import ValueInfo
from slipway.analyze.types import SubgraphCost

if TYPE_CHECKING:
    from slipway.analyze._proto import NodeView


class NotCounted(Exception):
    """Raised by a formula that cannot count this node; the message says why."""


@dataclass
class Op:
    """What a formula sees: the node and the static info of its inputs and outputs."""

    node: NodeView
    inputs: list[ValueInfo | None]  # None for an absent optional input
    outputs: list[ValueInfo | None]
    # Control flow: the cost of each subgraph run once, by attribute name ("then_branch", "body").
    bodies: dict[str, SubgraphCost] = field(default_factory=dict)
    # The value of a small constant input (by value name), None when it is not a known constant.
    resolve: Callable[[str], np.ndarray | None] | None = None
    opset: int = 0  # the default-domain opset the node runs under

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def in_shape(self, i: int = 0) -> tuple[int, ...]:
        info = self.inputs[i] if i < len(self.inputs) else None
        if info is None or info.shape is None:
            raise NotCounted(f"shape of input {i} is unknown")
        return info.shape

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        info = self.outputs[i] if i < len(self.outputs) else None
        if info is None or info.shape is None:
            raise NotCounted(f"shape of output {i} is unknown")
        return info.shape

    def in_numel(self, i: int = 0) -> int:
        return math.prod(self.in_shape(i))

    def out_numel(self, i: int = 0) -> int:
        return math.prod(self.out_shape(i))

    def attr_int(self, name: str, default: int) -> int:
        return self.node.attributes.get_int(name, default)

    def attr_float(self, name: str, default: float) -> float:
        return self.node.attributes.get_float(name, default)

    def attr_str(self, name: str, default: str) -> str:
        return self.node.attributes.get_string(name, default)

    def value(self, i: int) -> np.ndarray | None:
        """The value of input ``i`` when it is a known constant (computed from constants), else None."""
        name = self.node.inputs[i] if i < len(self.node.inputs) else ""
        return self.resolve(name) if name and self.resolve is not None else None

    def body(self, attr: str) -> SubgraphCost:
        if attr not in self.bodies:
            raise NotCounted(f"{self.node.op_type} has no {attr} subgraph the analysis could read")
        return self.bodies[attr]


@dataclass
class OpCost:
    macs: int
    flops: int
    note: str = ""
    # Control flow only: bytes moved by its subgraphs (else the caller counts the node's own inputs
    # and outputs), the iterations counted, and whether a trip count is unknown (one iteration counted).
    bytes_moved: tuple[int, int] | None = None
    trip_count: int | None = None
    trip_count_unknown: bool = False
    not_counted: list[str] = field(default_factory=list)  # op types inside the subgraph counted


Formula = Callable[[Op], OpCost]
_REGISTRY: dict[tuple[str, str], Formula] = {}


def cost(*op_types: str, domain: str = "") -> Callable[[Formula], Formula]:
    """Register a formula for one or more op types: ``@cost("Conv")``."""

    def register(fn: Formula) -> Formula:
        for op in op_types:
            _REGISTRY[(domain, op)] = fn
        return fn

    return register


def formula_for(op_type: str, domain: str = "") -> Formula | None:
    """The registered formula for an op, or None."""
    return _REGISTRY.get(("" if domain == "ai.onnx" else domain, op_type))


def registered_ops(domain: str = "") -> list[str]:
    """Op types with a formula in ``domain`` (default: the ONNX domain)."""
    return sorted(op for d, op in _REGISTRY if d == domain)


def evaluate(op: Op) -> tuple[OpCost | None, str]:
    """(cost, note) of one node; the cost is None when the node is not counted (the note says why)."""
    node = op.node
    fn = formula_for(node.op_type, node.domain)
    if fn is None:
        if node.has_subgraph:
            return None, f"control flow op {_qualified(node)}: ops inside its subgraphs are not counted"
        return None, f"no cost formula for {_qualified(node)}"
    try:
        c = fn(op)
    except NotCounted as e:
        return None, str(e)
    except (IndexError, ValueError, TypeError, ZeroDivisionError) as e:  # malformed attributes or shapes
        return None, f"cost formula for {_qualified(node)} failed: {e}"
    c.macs, c.flops = int(c.macs), int(c.flops)
    return c, c.note


def _qualified(node: NodeView) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


# ---------------------------------------------------------------- matrix / convolution ops


def _conv_like(op: Op, x: int, w: int, bias: int | None, transposed: bool) -> OpCost:
    wshape = op.in_shape(w)
    if transposed:
        # W is [C_in, C_out/group, k...]: every input element scatters (C_out/group) x k products.
        macs = op.in_numel(x) * math.prod(wshape[1:])
    else:
        # W is [C_out, C_in/group, k...]: every output element gathers (C_in/group) x k products.
        macs = op.out_numel() * math.prod(wshape[1:])
    flops = 2 * macs
    if bias is not None and op.has_input(bias):
        flops += op.out_numel()
    return OpCost(macs, flops)


@cost("Conv")
def _conv(op: Op) -> OpCost:
    return _conv_like(op, 0, 1, 2, transposed=False)


@cost("ConvTranspose")
def _conv_transpose(op: Op) -> OpCost:
    return _conv_like(op, 0, 1, 2, transposed=True)


@cost("ConvInteger")
def _conv_integer(op: Op) -> OpCost:
    return _conv_like(op, 0, 1, None, transposed=False)


@cost("QLinearConv")
def _qlinear_conv(op: Op) -> OpCost:
    # x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B
    return _conv_like(op, 0, 3, 8, transposed=False)


def matmul_macs(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """MACs of numpy-style matmul: prod(broadcast batch dims) x M x K x N; 1-D operands allowed."""
    if not a or not b:
        raise NotCounted("MatMul of a scalar")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    m, k = a2[-2], a2[-1]
    k2, n = b2[-2], b2[-1]
    if k != k2:
        raise NotCounted(f"MatMul inner dims differ ({k} vs {k2})")
    batch = _broadcast(a2[:-2], b2[:-2])
    return math.prod(batch) * m * k * n


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise NotCounted(f"MatMul batch dims {a} and {b} do not broadcast")
        out.append(max(x, y))
    return tuple(out)


@cost("MatMul", "MatMulInteger")
def _matmul(op: Op) -> OpCost:
    macs = matmul_macs(op.in_shape(0), op.in_shape(1))
    return OpCost(macs, 2 * macs)


@cost("QLinearMatMul")
def _qlinear_matmul(op: Op) -> OpCost:
    # a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point
    macs = matmul_macs(op.in_shape(0), op.in_shape(3))
    return OpCost(macs, 2 * macs)


@cost("Gemm")
def _gemm(op: Op) -> OpCost:
    a, b = op.in_shape(0), op.in_shape(1)
    m, k = (a[1], a[0]) if op.attr_int("transA", 0) else (a[0], a[1])
    n = b[0] if op.attr_int("transB", 0) else b[1]
    macs = m * k * n
    flops = 2 * macs
    if op.attr_float("alpha", 1.0) != 1.0:
        flops += m * n
    beta = op.attr_float("beta", 1.0)
    if op.has_input(2) and beta != 0.0:
        flops += m * n * (1 if beta == 1.0 else 2)
    return OpCost(macs, flops)


@cost("Einsum")
def _einsum(op: Op) -> OpCost:
    equation = op.attr_str("equation", "").replace(" ", "")
    lhs = equation.split("->")[0].split(",")
    if "." in equation:
        raise NotCounted("Einsum with an ellipsis is not counted")
    sizes: dict[str, int] = {}
    for i, term in enumerate(lhs):
        for label, dim in zip(term, op.in_shape(i), strict=False):
            sizes[label] = max(sizes.get(label, 1), dim)
    if len(lhs) == 1:
        return OpCost(0, op.in_numel(0), "single-operand Einsum counted as a reduction")
    # Every combination of labels is one product; n operands need n-1 multiplies (and one add).
    combos = math.prod(sizes.values())
    macs = combos * (len(lhs) - 1)
    return OpCost(macs, 2 * macs)


# ---------------------------------------------------------------- elementwise and activations

# FLOPs per output element; see the conventions at the top of the file.
ELEMENTWISE_FLOPS: dict[str, int] = {
    # arithmetic, one elementary op
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Pow": 1, "Mod": 1, "Neg": 1, "Abs": 1, "Reciprocal": 1,
    "Sqrt": 1, "Exp": 1, "Log": 1, "Erf": 1, "Tanh": 1, "Sin": 1, "Cos": 1, "Tan": 1, "Asin": 1,
    "Acos": 1, "Atan": 1, "Sinh": 1, "Cosh": 1, "Asinh": 1, "Acosh": 1, "Atanh": 1,
    "Floor": 1, "Ceil": 1, "Round": 1, "Sign": 1, "Relu": 1,
    # comparisons, logic and selection
    "Equal": 1, "Less": 1, "LessOrEqual": 1, "Greater": 1, "GreaterOrEqual": 1, "And": 1, "Or": 1,
    "Xor": 1, "Not": 1, "Where": 1, "IsNaN": 1, "IsInf": 1, "BitShift": 1,
    # composite activations: their elementary ops
    "LeakyRelu": 2,  # multiply, select
    "PRelu": 2,  # multiply, select
    "Clip": 2,  # max, min
    "ThresholdedRelu": 2,  # compare, select
    "Elu": 3,  # exp, subtract, multiply (selected)
    "Celu": 4,  # divide, exp, subtract, multiply
    "Selu": 4,  # exp, multiply, subtract, multiply
    "Sigmoid": 4,  # negate, exp, add, divide
    "HardSigmoid": 4,  # multiply, add, max, min
    "HardSwish": 5,  # hard sigmoid + multiply
    "Softplus": 3,  # exp, add, log
    "Softsign": 3,  # abs, add, divide
    "Mish": 5,  # softplus (3), tanh, multiply
    "Swish": 6,  # multiply by alpha, sigmoid (4), multiply
    "Shrink": 2,  # compare, add/subtract
    # (de)quantization: scale and zero point (rounding/saturation not counted)
    "QuantizeLinear": 2, "DequantizeLinear": 2,
}
VARIADIC = {"Sum", "Max", "Min", "Mean"}


def _elementwise(flops_per_element: int) -> Formula:
    def formula(op: Op) -> OpCost:
        return OpCost(0, flops_per_element * op.out_numel())

    return formula


for _op, _flops in ELEMENTWISE_FLOPS.items():
    cost(_op)(_elementwise(_flops))


@cost(*VARIADIC)
def _variadic(op: Op) -> OpCost:
    n = op.out_numel()
    operands = sum(1 for i in range(len(op.inputs)) if op.has_input(i))
    flops = n * max(operands - 1, 0)
    if op.node.op_type == "Mean":
        flops += n
    return OpCost(0, flops)


@cost("Gelu")
def _gelu(op: Op) -> OpCost:
    # none: x * 0.5 * (1 + erf(x / sqrt 2)) = 5; tanh: 0.5x(1 + tanh(c(x + 0.044715x^3))) = 9
    per = 9 if op.attr_str("approximate", "none") == "tanh" else 5
    return OpCost(0, per * op.out_numel())


# ---------------------------------------------------------------- normalization, softmax, reductions


@cost("BatchNormalization")
def _batch_norm(op: Op) -> OpCost:
    return OpCost(0, 2 * op.in_numel(0), "inference form: per-channel scale and shift")


def _norm(op: Op, groups: int, scale: bool, bias: bool) -> OpCost:
    per = 5 + int(scale) + int(bias)
    return OpCost(0, per * op.in_numel(0) + 4 * groups)


@cost("LayerNormalization")
def _layer_norm(op: Op) -> OpCost:
    shape = op.in_shape(0)
    axis = op.attr_int("axis", -1) % len(shape)
    return _norm(op, math.prod(shape[:axis]), True, op.has_input(2))


@cost("InstanceNormalization")
def _instance_norm(op: Op) -> OpCost:
    shape = op.in_shape(0)
    return _norm(op, shape[0] * shape[1], True, True)


@cost("GroupNormalization")
def _group_norm(op: Op) -> OpCost:
    return _norm(op, op.in_shape(0)[0] * op.attr_int("num_groups", 1), True, True)


@cost("RMSNormalization")
def _rms_norm(op: Op) -> OpCost:
    shape = op.in_shape(0)
    axis = op.attr_int("axis", -1) % len(shape)
    # square, sum of squares, multiply by rsqrt, scale; per row: divide, eps add, rsqrt
    return OpCost(0, 4 * op.in_numel(0) + 3 * math.prod(shape[:axis]))


@cost("LpNormalization")
def _lp_norm(op: Op) -> OpCost:
    shape = op.in_shape(0)
    rows = op.in_numel(0) // shape[op.attr_int("axis", -1) % len(shape)]
    return OpCost(0, 3 * op.in_numel(0) + rows)  # |x|^p, sum, divide; root per row


@cost("Softmax", "LogSoftmax")
def _softmax(op: Op) -> OpCost:
    return OpCost(0, 5 * op.in_numel(0))


@cost("Hardmax", "ArgMax", "ArgMin", "CumSum", "TopK")
def _one_per_input(op: Op) -> OpCost:
    note = "partial sort counted as one comparison per input element" if op.node.op_type == "TopK" else ""
    return OpCost(0, op.in_numel(0), note)


REDUCE_FLOPS = {  # (per input element, per output element)
    "ReduceSum": (1, 0), "ReduceMean": (1, 1), "ReduceMax": (1, 0), "ReduceMin": (1, 0),
    "ReduceProd": (1, 0), "ReduceL1": (2, 0), "ReduceL2": (2, 1), "ReduceSumSquare": (2, 0),
    "ReduceLogSum": (1, 1), "ReduceLogSumExp": (2, 1),
}


@cost(*REDUCE_FLOPS)
def _reduce(op: Op) -> OpCost:
    per_in, per_out = REDUCE_FLOPS[op.node.op_type]
    return OpCost(0, per_in * op.in_numel(0) + per_out * op.out_numel())


# ---------------------------------------------------------------- pooling and resizing


def _kernel(op: Op) -> int:
    kernel = op.node.attributes.get_ints("kernel_shape", None)
    if not kernel:
        raise NotCounted(f"{op.node.op_type} without kernel_shape")
    return math.prod(kernel)


@cost("MaxPool")
def _max_pool(op: Op) -> OpCost:
    return OpCost(0, op.out_numel() * (_kernel(op) - 1))


@cost("AveragePool")
def _avg_pool(op: Op) -> OpCost:
    return OpCost(0, op.out_numel() * _kernel(op))


@cost("LpPool")
def _lp_pool(op: Op) -> OpCost:
    return OpCost(0, op.out_numel() * (2 * _kernel(op) + 1))


@cost("GlobalAveragePool")
def _global_avg_pool(op: Op) -> OpCost:
    return OpCost(0, op.in_numel(0))


@cost("GlobalMaxPool")
def _global_max_pool(op: Op) -> OpCost:
    return OpCost(0, op.in_numel(0) - op.out_numel())


@cost("Resize", "Upsample")
def _resize(op: Op) -> OpCost:
    x, y = op.in_shape(0), op.out_shape()
    resized = sum(1 for a, b in zip(x, y, strict=False) if a != b)
    mode = op.attr_str("mode", "nearest")
    if mode == "nearest" or resized == 0:
        return OpCost(0, 0, "nearest: data movement" if mode == "nearest" else "no axis resized")
    taps = (2 if mode == "linear" else 4) ** resized
    return OpCost(0, op.out_numel() * (2 * taps - 1), f"{mode}: {taps} taps per output element")


# ---------------------------------------------------------------- data movement and constants

DATA_MOVEMENT = (
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Expand",
    "Tile", "Pad", "Shape", "Size", "ConstantOfShape", "Range", "Cast", "CastLike", "Dropout",
    "DepthToSpace", "SpaceToDepth", "Trilu", "EyeLike", "OneHot", "NonZero", "ReverseSequence",
    "SplitToSequence", "ConcatFromSequence", "SequenceAt", "SequenceConstruct", "Compress",
)


@cost(*DATA_MOVEMENT)
def _data_movement(op: Op) -> OpCost:
    return OpCost(0, 0, "data movement")


@cost("Constant")
def _constant(op: Op) -> OpCost:
    return OpCost(0, 0, "constant")


# ---------------------------------------------------------------- recurrent layers

# (gates, FLOPs per hidden unit per step besides the matrix products, bias adds per unit):
# LSTM: 4 gate sums of Wx and Rh, 3 sigmoids (4 each), tanh of g, c = f*c + i*g (3), tanh of c,
# o * tanh(c) = 22; GRU: 3 sums, 2 sigmoids, r * (Rh + Rb), tanh, h = (1 - z) * n + z * h (3) = 16;
# RNN: one sum and a tanh = 2.
RECURRENT: dict[str, tuple[int, int, int]] = {"LSTM": (4, 22, 8), "GRU": (3, 16, 6), "RNN": (1, 2, 2)}


@cost(*RECURRENT)
def _recurrent(op: Op) -> OpCost:
    gates, per_unit, bias_adds = RECURRENT[op.node.op_type]
    x, w = op.in_shape(0), op.in_shape(1)  # X [seq, batch, input] (layout 0), W [directions, gates*H, input]
    seq, batch = (x[1], x[0]) if op.attr_int("layout", 0) else (x[0], x[1])
    directions, hidden = w[0], w[1] // gates
    steps = seq * batch * directions  # every (step, batch row, direction) runs the cell once
    macs = steps * gates * hidden * (x[2] + hidden)
    flops = 2 * macs + steps * hidden * (per_unit + (bias_adds if op.has_input(3) else 0))
    return OpCost(macs, flops, "default activations assumed")


# ---------------------------------------------------------------- control flow


def _repeat(body: SubgraphCost, times: int, note: str, *, loop: bool = True, unknown: bool = False) -> OpCost:
    """The cost of running ``body`` ``times`` times (once, flagged, when a ``loop``'s count is ``unknown``)."""
    notes = [note, *body.notes]
    if body.not_counted:
        notes.append("not counted inside: " + ", ".join(sorted(set(body.not_counted))))
    return OpCost(
        times * body.macs, times * body.flops, "; ".join(notes),
        bytes_moved=(times * body.bytes_read, times * body.bytes_written),
        trip_count=times if loop and not unknown else None,
        trip_count_unknown=unknown or body.trip_count_unknown,
        not_counted=sorted(set(body.not_counted)),
    )


@cost("If")
def _if(op: Op) -> OpCost:
    then, other = op.body("then_branch"), op.body("else_branch")
    cond = op.value(0)
    if cond is not None and cond.size == 1:
        taken = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
        return _repeat(op.body(taken), 1, f"condition is a constant: {taken} runs", loop=False)
    taken = "then_branch" if (then.macs, then.flops) >= (other.macs, other.flops) else "else_branch"
    note = (f"branch unknown statically: counted the larger, {taken} (then {then.flops:,} FLOPs, "
            f"else {other.flops:,} FLOPs)")
    return _repeat(op.body(taken), 1, note, loop=False)


@cost("Loop")
def _loop(op: Op) -> OpCost:
    body = op.body("body")
    trips = trip_count(op.value(0))
    if trips is None:
        return _repeat(body, 1, "trip count unknown: cost of one iteration", unknown=True)
    note = f"{trips} iterations"
    if op.has_input(1) and op.value(1) is None:
        note = f"at most {trips} iterations (the loop may stop early on its condition)"
    return _repeat(body, trips, note)


@cost("Scan")
def _scan(op: Op) -> OpCost:
    if op.opset < 9:
        raise NotCounted("Scan-8 (with a batch axis) is not counted")
    body = op.body("body")
    first = len(op.inputs) - op.attr_int("num_scan_inputs", 0)
    axes = op.node.attributes.get_ints("scan_input_axes", None) or [0]
    info = op.inputs[first] if 0 <= first < len(op.inputs) else None
    if info is None or info.shape is None:
        return _repeat(body, 1, "sequence length unknown: cost of one iteration", unknown=True)
    trips = info.shape[axes[0] % len(info.shape)]
    return _repeat(body, trips, f"{trips} iterations (sequence length)")
