"""Fold an inference BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from slipway.graph import (
    Names,
    add_initializer,
    attr_float,
    attr_int,
    float_const,
    is_op,
    label,
    node_like,
    only_used_by,
    other_user,
    out_channels,
    replace,
)
from slipway.passes._fusion import Fuse, FusionPass, Match, Skip, f64, scale_outputs
from slipway.passes.base import register

PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def bn_affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | Skip:
    """(s, t) with ``BatchNormalization(y) == s * y + t`` per channel, or why not (as a Skip)."""
    if attr_int(bn, "training_mode", 0):
        return Skip(f"{label(bn)}: training_mode=1 normalizes with batch statistics", warn=True)
    if not attr_int(bn, "spatial", 1):
        return Skip(f"{label(bn)}: spatial=0 (per-element statistics) is not supported")
    if any(v.uses() or v.is_graph_output() for v in bn.outputs[1:]):
        return Skip(f"{label(bn)}: its running-statistics outputs are used", warn=True)
    params = []
    for value in bn.inputs[1:5]:
        array = float_const(value)
        if array is None:
            name = value.name if value is not None else "(missing)"
            return Skip(f"{label(bn)}: parameter {name!r} is not a constant", warn=True)
        params.append(f64(array).reshape(-1))
    gamma, beta, mean, var = params
    if not gamma.size == beta.size == mean.size == var.size:
        return Skip(f"{label(bn)}: scale, bias, mean and var differ in length")
    s = gamma / np.sqrt(var + attr_float(bn, "epsilon", 1e-5))
    return s, beta - mean * s


@register
class FuseBatchNorm(FusionPass):
    """BatchNormalization(Conv(x, W, b)) -> Conv(x, W', b') (also ConvTranspose and Gemm)

    ``W' = W * s`` along the output channels (ConvTranspose: group x W's dim 1; Gemm: the N axis of
    B, transB respected) and ``b' = b * s + t`` where ``s = gamma / sqrt(var + eps)`` and
    ``t = beta - mean * s``. Only when the producer's output feeds nothing but the BN and every
    weight is a constant. A BatchNormalization with no such producer is left as it is: ONNX
    Runtime and OpenVINO run it as one per-channel scale-shift kernel, which is faster than the
    Mul + Add pair it would otherwise become (two kernels, two passes over memory).
    """

    name = "fuse-batchnorm"

    def match(self, node: ir.Node) -> Match:
        if not is_op(node, "BatchNormalization") or node.inputs[0] is None:
            return None
        prod = node.inputs[0].producer()
        if not is_op(prod, *PRODUCERS) or len(prod.outputs) != 1:
            return None
        affine = bn_affine(node)
        if isinstance(affine, Skip):
            return affine
        s, t = affine
        where = f"{label(node)} after {label(prod)}"
        if not only_used_by(prod.outputs[0], node):
            user = other_user(prod.outputs[0], node)
            return Skip(f"{where}: {prod.op_type} output is also used by {user}", warn=True)
        if len(prod.inputs) < 2 or (w := float_const(prod.inputs[1])) is None:
            return Skip(f"{where}: the {prod.op_type} weight is not a constant", warn=True)
        has_bias = len(prod.inputs) > 2 and prod.inputs[2] is not None
        b = float_const(prod.inputs[2]) if has_bias else np.zeros(1, w.dtype)
        if b is None:
            return Skip(f"{where}: the {prod.op_type} bias is not a constant", warn=True)
        group, trans_b = attr_int(prod, "group", 1), attr_int(prod, "transB", 0)
        if (prod.op_type == "Gemm" and w.ndim != 2) or (prod.op_type != "Gemm" and w.ndim < 3):
            return Skip(f"{where}: unexpected weight rank {w.ndim}")
        if prod.op_type == "ConvTranspose" and (group < 1 or w.shape[0] % group):
            return Skip(f"{where}: input channels {w.shape[0]} not divisible by group {group}")
        if (channels := out_channels(prod.op_type, w, group, trans_b)) != s.size:
            return Skip(f"{where}: {s.size} BN channels, {channels} output channels")
        if prod.op_type != "Gemm" and b.size not in (1, s.size):
            return Skip(f"{where}: bias of {b.size} values for {s.size} channels")

        def apply(graph: ir.Graph, namer: Names) -> None:
            _fold(graph, namer, node, prod, (w, b if has_bias else None), s, t)

        return Fuse(f"BatchNormalization({prod.op_type})", apply)


def _fold(graph: ir.Graph, namer: Names, bn: ir.Node, prod: ir.Node, wb: tuple[np.ndarray, np.ndarray | None],
          s: np.ndarray, t: np.ndarray) -> None:
    w, b = wb
    group, trans_b = attr_int(prod, "group", 1), attr_int(prod, "transB", 0)
    new_w = scale_outputs(prod.op_type, w, s, group, trans_b)
    attrs = [a for a in prod.attributes.values() if a.name != "beta"]
    if prod.op_type == "Gemm":  # BN(alpha*A*B + beta*C) = alpha*A*(B*s) + (beta*C*s + t), beta -> 1
        c = f64(b) * attr_float(prod, "beta", 1.0) if b is not None else np.zeros(1)
        new_b = c * s + t
    else:
        new_b = (f64(b).reshape(-1) if b is not None else 0.0) * s + t
    old_w, old_b = prod.inputs[1], prod.inputs[2] if len(prod.inputs) > 2 else None
    w_value = add_initializer(graph, namer(f"{old_w.name or 'W'}_bn"), new_w.astype(w.dtype))
    b_value = add_initializer(
        graph, namer(f"{(old_b.name if old_b is not None else None) or w_value.name + '_bias'}_bn"), new_b.astype(w.dtype))
    new = node_like(prod, prod.op_type, [prod.inputs[0], w_value, b_value], attrs)
    replace(graph, [prod, bn], [new], bn.outputs[0], new.outputs[0], renames=[(w_value, old_w), (b_value, old_b)])
