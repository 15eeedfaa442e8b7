"""``fold-qat-batchnorm``: the BatchNormalization a QAT export leaves after a quantized Conv.

A PyTorch QAT export stores each quantized weight as an int8 initializer read through
``DequantizeLinear`` (or as a float initializer fake-quantized by ``QuantizeLinear ->
DequantizeLinear``), and sometimes leaves a ``BatchNormalization`` after the Conv. The plain
``fuse-batchnorm`` pass cannot fold that BN (the Conv weight is not a constant), and engines do
not fuse ``DQ -> Conv -> BN -> Q`` into an int8 convolution. This pass folds it *through* the
dequantization:

* with ``BN(y) = s * y + t`` per channel and a weight ``W = scale * (q - zp)``, the folded weight
  ``W * s`` is ``(scale * |s|) * (sign(s) * q)`` exactly when ``zp == 0``: only the scales change
  (one per output channel) and q flips sign where ``s < 0`` - no new rounding error;
* otherwise (an asymmetric uint8 weight; a channel whose ``-128`` cannot flip, as PyTorch's
  [-128, 127] weights have) the folded float weight (that channel) is requantized to symmetric
  per-channel int8;
* the bias becomes ``b * s + t``. A bias that was int32 (through DequantizeLinear) is requantized
  to int32 at ``input_scale * new_weight_scale``, the input scale read from the per-tensor
  DequantizeLinear that feeds the Conv; a float bias (or none) stays float - onnxruntime still fuses
  ``DQ -> Conv -> Q`` into QLinearConv with a float bias, and float adds no rounding.

A model without QuantizeLinear / DequantizeLinear is left alone at once (float models pay nothing).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from slipway.graph import (
    Names,
    add_initializer,
    attr_int,
    const,
    float_const,
    is_op,
    label,
    node_like,
    only_used_by,
    other_user,
    quantize_weight,
    replace,
)
from slipway.passes._fusion import Fuse, FusionPass, Match, Skip, f64
from slipway.passes.base import PassResult, register
from slipway.passes.batchnorm import bn_affine

__all__ = ["FoldQatBatchNorm", "has_qdq"]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_QRANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


def has_qdq(model: ir.Model, *, subgraphs: bool = False) -> bool:
    """Whether the main graph (with ``subgraphs``, any graph) has QuantizeLinear / DequantizeLinear nodes."""
    nodes = ir.traversal.RecursiveGraphIterator(model.graph) if subgraphs else model.graph
    return any(is_op(n, *QDQ_OPS) for n in nodes)


def _per_axis(array: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A scale or zero point shaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    if array.ndim == 0 or array.size == 1:
        return array.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return array.reshape(shape)


def _dq_params(dq: ir.Node, ndim: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(scale, zero point) broadcastable to the input, and the axis, of a DequantizeLinear with constant
    parameters (zero point 0 when absent)."""
    scale = const(dq.inputs[1]) if len(dq.inputs) > 1 else None
    zp = const(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else np.zeros((), np.int64)
    if scale is None or zp is None or attr_int(dq, "block_size", 0):
        return None
    axis = attr_int(dq, "axis", 1) % max(ndim, 1)
    return _per_axis(f64(scale), axis, ndim), _per_axis(zp.astype(np.int64), axis, ndim), axis


def _weight_levels(dq: ir.Node) -> tuple[np.ndarray, list[ir.Node]] | Skip:
    """The integer weight that ``dq`` reads (an int8/uint8 constant, or Q(float constant) evaluated
    as ONNX does) and the nodes that produce it besides ``dq``."""
    src = dq.inputs[0]
    q = const(src)
    if q is not None:
        return (q, []) if q.dtype in _QRANGE else Skip(f"{label(dq)}: weight is {q.dtype}, not int8/uint8")
    qn = src.producer() if src is not None else None
    if not is_op(qn, "QuantizeLinear") or not only_used_by(src, dq):
        return Skip(f"{label(dq)}: its input is not a constant nor a QuantizeLinear of one", warn=True)
    w = float_const(qn.inputs[0])
    if w is None or len(qn.inputs) < 3 or qn.inputs[2] is None:
        return Skip(f"{label(qn)}: fake-quantized weight without a constant input and zero point", warn=True)
    params = _dq_params(qn, w.ndim)
    if params is None:
        return Skip(f"{label(qn)}: scale or zero point is not a constant", warn=True)
    scale, zp, _ = params
    dtype = const(qn.inputs[2]).dtype
    if dtype not in _QRANGE:
        return Skip(f"{label(qn)}: quantizes to {dtype}, not int8/uint8")
    lo, hi = _QRANGE[dtype]
    return np.clip(np.round(f64(w) / scale) + zp, lo, hi).astype(dtype), [qn]


def _fold_weight(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int, s: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """(int8 weight, per-output-channel scale, channels requantized) for ``dequantize(q) * s`` along
    axis 0. A channel is rescaled exactly when it can be; the others are requantized."""
    c = q.shape[0]
    rows = (-1,) + (1,) * (q.ndim - 1)
    w = (q.astype(np.float64) - zp) * scale * s.reshape(rows)
    new_q, new_scale = quantize_weight(w, 0)
    if q.dtype != np.int8 or np.any(zp) or not (scale.ndim == 0 or axis == 0):
        return new_q, new_scale, c
    channel_scale = np.broadcast_to(scale.reshape(-1), (c,)) if scale.ndim else np.full(c, float(scale))
    flipped = q.astype(np.int64) * np.where(s < 0, -1, 1).reshape(rows)
    exact = (flipped.reshape(c, -1).max(axis=1, initial=0) <= 127) & (s != 0)  # -128 cannot flip; s = 0: zeros
    new_q[exact] = flipped[exact].astype(np.int8)
    new_scale[exact] = (channel_scale * np.abs(s))[exact].astype(np.float32)
    return new_q, new_scale, int((~exact & (s != 0)).sum())


def _bias(conv: ir.Node) -> tuple[np.ndarray | None, list[ir.Node]] | Skip:
    """The Conv's bias as float64 (None when absent) and its DequantizeLinear, if any."""
    if len(conv.inputs) < 3 or conv.inputs[2] is None:
        return None, []
    b = float_const(conv.inputs[2])
    if b is not None:
        return f64(b).reshape(-1), []
    dq = conv.inputs[2].producer()
    bq = const(dq.inputs[0]) if is_op(dq, "DequantizeLinear") else None
    params = _dq_params(dq, 1) if bq is not None else None
    if params is None or not only_used_by(conv.inputs[2], conv):
        return Skip(f"{label(conv)}: bias is neither a constant nor a DequantizeLinear of one", warn=True)
    scale, zp, _ = params
    return ((bq.astype(np.float64) - zp) * scale).reshape(-1), [dq]


def _input_scale(conv: ir.Node) -> float | None:
    """The per-tensor scale of the DequantizeLinear that feeds the Conv's data input, if any."""
    dq = conv.inputs[0].producer() if conv.inputs[0] is not None else None
    scale = const(dq.inputs[1]) if is_op(dq, "DequantizeLinear") else None
    return float(scale.reshape(-1)[0]) if scale is not None and scale.size == 1 else None


def _dq_node(like: ir.Node, namer: Names, base: str, inputs: list[ir.Value], axis: int | None,
             shape: tuple[int, ...]) -> ir.Node:
    attrs = [ir.AttrInt64("axis", axis)] if axis is not None else []
    node = node_like(like, "DequantizeLinear", inputs, attrs, name=namer(f"{base}_DQ"))
    node.outputs[0].name = namer(f"{base}_dequantized")
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    node.outputs[0].shape = ir.Shape(shape)
    return node


@register
class FoldQatBatchNorm(FusionPass):
    """BatchNormalization(Conv(x, DQ(Wq, s_w), b)) -> Conv(x, DQ(Wq', s_w'), b')

    For QAT exports: the BN is folded through the weight's DequantizeLinear (a constant int8/uint8
    weight, or a fake-quantized ``Q -> DQ`` of a float one). A ``Q -> DQ`` pair between the Conv
    and the BN (eager-mode PyTorch QAT observes the Conv output) is dropped: up to half a step of
    that grid (times the BN scale) moves, within the next quantization's step. With a zero point of 0 the fold only
    rescales per output channel (``s_w' = s_w * |s|``, ``Wq' = sign(s) * Wq``) and is exact; else the
    folded weight is requantized to symmetric per-channel int8. The bias ``b * s + t`` stays int32
    (at scale ``input_scale * s_w'``) when it was int32 and the input scale is known, else float.
    """

    name = "fold-qat-batchnorm"

    def run(self, model: ir.Model) -> PassResult:
        return super().run(model) if has_qdq(model, subgraphs=True) else PassResult(model, False)

    def explain(self, model: ir.Model) -> list[str]:
        return super().explain(model) if has_qdq(model, subgraphs=True) else []

    def match(self, node: ir.Node) -> Match:
        if not is_op(node, "BatchNormalization") or node.inputs[0] is None:
            return None
        conv, between = _conv_before(node)
        if not is_op(conv, "Conv") or len(conv.inputs) < 2 or conv.inputs[1] is None:
            return None
        wdq = conv.inputs[1].producer()
        if not is_op(wdq, "DequantizeLinear"):
            return None  # a float weight: fuse-batchnorm's job
        where = f"{label(node)} after {label(conv)}"
        reader = between[0] if between else node
        if not only_used_by(conv.outputs[0], reader):
            return Skip(f"{where}: the Conv output is also used by {other_user(conv.outputs[0], reader)}", warn=True)
        if not only_used_by(conv.inputs[1], conv):
            return Skip(f"{where}: the dequantized weight is shared with {other_user(conv.inputs[1], conv)}", warn=True)
        affine = bn_affine(node)
        levels = _weight_levels(wdq)
        bias = _bias(conv)
        for found in (affine, levels, bias):
            if isinstance(found, Skip):
                return found
        (s, t), (q, q_nodes), (b, b_nodes) = affine, levels, bias
        params = _dq_params(wdq, q.ndim)
        if params is None:
            return Skip(f"{where}: the weight's scale or zero point is not a constant", warn=True)
        if q.ndim < 3 or q.shape[0] != s.size:
            return Skip(f"{where}: {s.size} BN channels, weight of shape {list(q.shape)}")
        new_q, new_scale, requantized = _fold_weight(q, *params, s)
        new_b = (b if b is not None else 0.0) * s + t

        def apply(graph: ir.Graph, namer: Names) -> None:
            _rewrite(graph, namer, (node, conv, wdq, q_nodes, b_nodes, between), new_q, new_scale, new_b)

        how = "requantized" if requantized else "rescaled"
        return Fuse(f"BatchNormalization({'QDQ(' if between else ''}Conv(DequantizeLinear){')' if between else ''})"
                    f" {how}", apply)


def _conv_before(bn: ir.Node) -> tuple[ir.Node | None, list[ir.Node]]:
    """The node before ``bn``, looking through a ``QuantizeLinear -> DequantizeLinear`` pair that reads
    only a Conv (an eager-mode PyTorch QAT export observes the Conv output before the BN): then that
    Conv and the pair, which the fold drops (its grid is per tensor before the BN, per channel after)."""
    v = bn.inputs[0]
    dq = v.producer()
    if not is_op(dq, "DequantizeLinear") or not only_used_by(v, bn) or dq.inputs[0] is None:
        return dq, []
    q = dq.inputs[0].producer()
    if not is_op(q, "QuantizeLinear") or not only_used_by(dq.inputs[0], dq) or q.inputs[0] is None:
        return dq, []
    conv = q.inputs[0].producer()
    return (conv, [q, dq]) if is_op(conv, "Conv") else (dq, [])


def _rewrite(graph: ir.Graph, namer: Names, nodes: tuple, new_q: np.ndarray, new_scale: np.ndarray,
             new_b: np.ndarray) -> None:
    bn, conv, wdq, q_nodes, b_nodes, between = nodes
    base = wdq.inputs[0].name or f"{conv.name}_W"
    qv = add_initializer(graph, namer(f"{base}_bn"), new_q)
    sv = add_initializer(graph, namer(f"{base}_bn_scale"), new_scale)
    zv = add_initializer(graph, namer(f"{base}_bn_zero_point"), np.zeros(new_scale.shape, np.int8))
    w_dq = _dq_node(wdq, namer, f"{base}_bn", [qv, sv, zv], 0, new_q.shape)
    new_nodes = [w_dq]
    x_scale = _input_scale(conv) if b_nodes else None
    b_name = f"{conv.name or 'conv'}_bias_bn"
    b_scale = (x_scale * f64(new_scale)).astype(np.float32) if x_scale is not None else None
    bq = np.round(new_b / f64(b_scale)) if b_scale is not None else None
    if bq is not None and np.abs(bq).max(initial=0) < 2**31 - 1:
        bias_inputs = [add_initializer(graph, namer(b_name), bq.astype(np.int32)),
                       add_initializer(graph, namer(f"{b_name}_scale"), b_scale),
                       add_initializer(graph, namer(f"{b_name}_zero_point"), np.zeros(b_scale.shape, np.int32))]
        b_dq = _dq_node(wdq, namer, b_name, bias_inputs, 0, new_b.shape)
        new_nodes.append(b_dq)
        bias = b_dq.outputs[0]
    else:
        bias = add_initializer(graph, namer(b_name), new_b.astype(np.float32))
    new_conv = node_like(conv, "Conv", [conv.inputs[0], w_dq.outputs[0], bias], conv.attributes.values())
    new_nodes.append(new_conv)
    replace(graph, [*q_nodes, wdq, *b_nodes, conv, *between, bn], new_nodes, bn.outputs[0], new_conv.outputs[0])
