"""Fold constant per-channel Mul/Div/Add/Sub around a Conv into the Conv's weights and bias."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from slipway.graph import (
    Names,
    add_initializer,
    attr_int,
    attr_ints,
    attr_str,
    float_const,
    is_op,
    label,
    node_like,
    only_used_by,
    other_user,
    out_channels,
    replace,
)
from slipway.passes._fusion import Fuse, FusionPass, Match, Skip, f64, per_channel, scale_outputs
from slipway.passes.base import register

AFFINE_OPS = ("Mul", "Div", "Add", "Sub")
CONVS = ("Conv", "ConvTranspose")


def affine_of(node: ir.Node, operand: int, c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, t) with ``node(v) == a * v + t`` when input ``operand`` is v and the other input is ``c``;
    None when not affine (a division by v, or by a constant with zeros)."""
    c = f64(c)
    if node.op_type == "Mul":
        return c, np.zeros(1)
    if node.op_type == "Div":
        return (1.0 / c, np.zeros(1)) if operand == 0 and np.all(c != 0) else None
    if node.op_type == "Add":
        return np.ones(1), c
    return (np.ones(1), -c) if operand == 0 else (-np.ones(1), c)


def conv_operand(node: ir.Node) -> tuple[int, ir.Node, np.ndarray] | None:
    """(index of the conv operand, the conv, the constant operand) for Mul/Add/... (conv, const)."""
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    for i in (0, 1):
        conv, c = node.inputs[i].producer(), float_const(node.inputs[1 - i])
        if is_op(conv, *CONVS) and c is not None and len(conv.outputs) == 1:
            return i, conv, c
    return None


def conv_weights(conv: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | str:
    w = float_const(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if w is None or w.ndim < 3:
        return "its weight is not a constant"
    if len(conv.inputs) > 2 and conv.inputs[2] is not None:
        b = float_const(conv.inputs[2])
        return (w, b) if b is not None else "its bias is not a constant"
    return w, None


@register
class FuseConvAffine(FusionPass):
    """Add(Mul(Conv(x, W, b), s), t) -> Conv(x, W*s, b*s + t); Conv(Mul(x, s), W, b) -> Conv(x, W*s, b)

    After a Conv or ConvTranspose: a constant Mul, Div, Add or Sub that only varies along the
    channel axis (scalar, [C,1,1], [1,C,1,1]) folds into its weights and bias, one op at a time.
    Before a Conv: a per-input-channel Mul or Div folds into W (exact: the zero padding stays
    zero); an Add or Sub folds into the bias (``b + sum(W * t)``) only when the Conv pads nothing,
    because with padding the border outputs would see ``t`` where the original saw zeros.
    """

    name = "fuse-conv-affine"

    def match(self, node: ir.Node) -> Match:
        if is_op(node, *AFFINE_OPS):
            return self._after(node)
        if is_op(node, "Conv") and node.inputs[0] is not None and is_op(node.inputs[0].producer(), *AFFINE_OPS):
            return self._before(node, node.inputs[0].producer())
        return None

    def _after(self, node: ir.Node) -> Match:
        found = conv_operand(node)
        if found is None:
            return None
        operand, conv, c = found
        where = f"{label(node)} after {label(conv)}"
        if not only_used_by(conv.outputs[0], node):
            return Skip(f"{where}: the {conv.op_type} output is also used by {other_user(conv.outputs[0], node)}")
        wb = conv_weights(conv)
        if isinstance(wb, str):
            return Skip(f"{where}: {wb}")
        w, b = wb
        group = attr_int(conv, "group", 1)
        if conv.op_type == "ConvTranspose" and (group < 1 or w.shape[0] % group):
            return Skip(f"{where}: input channels not divisible by group")
        channels = out_channels(conv.op_type, w, group)
        vec = per_channel(c, w.ndim, channels)
        affine = affine_of(node, operand, c) if vec is not None else None
        if affine is None:
            return Skip(f"{where}: the constant of shape {list(c.shape)} is not a per-channel scale or shift")
        a, t = (np.broadcast_to(per_channel(v, w.ndim, channels), (channels,)) for v in affine)

        def apply(graph: ir.Graph, namer: Names) -> None:
            new_w = scale_outputs(conv.op_type, w, a, group)
            new_b = (f64(b).reshape(-1) if b is not None else 0.0) * a + t
            _swap(graph, namer, conv, [node], node.outputs[0], conv.inputs[0], new_w, new_b, w.dtype)

        return Fuse(f"{node.op_type}({conv.op_type})", apply)

    def _before(self, conv: ir.Node, pre: ir.Node) -> Match:
        if len(pre.inputs) != 2 or any(v is None for v in pre.inputs):
            return None
        consts = [float_const(v) for v in pre.inputs]
        if consts[0] is None and consts[1] is None:
            return None
        operand = 0 if consts[1] is not None else 1
        x, c = pre.inputs[operand], consts[1 - operand]
        where = f"{label(pre)} before {label(conv)}"
        if not only_used_by(pre.outputs[0], conv):
            return Skip(f"{where}: its output is also used by {other_user(pre.outputs[0], conv)}")
        wb = conv_weights(conv)
        if isinstance(wb, str):
            return Skip(f"{where}: {wb}")
        w, b = wb
        group = attr_int(conv, "group", 1)
        cin = w.shape[1] * group
        if x.shape is None or len(x.shape) != w.ndim or x.shape[1] != cin:
            return Skip(f"{where}: the shape of {x.name!r} is unknown or broadcast by the constant")
        affine = affine_of(pre, operand, c) if per_channel(c, w.ndim, cin) is not None else None
        if affine is None:
            return Skip(f"{where}: the constant of shape {list(c.shape)} is not a per-channel scale or shift")
        a, t = (np.broadcast_to(per_channel(v, w.ndim, cin), (cin,)) for v in affine)
        if np.any(t != 0) and _pads(conv, w.ndim - 2):
            return Skip(f"{where}: a shift before a zero-padded Conv is not exact (pads={_pads(conv, w.ndim - 2)})")

        def apply(graph: ir.Graph, namer: Names) -> None:
            new_w, shift = _scale_inputs(w, a, t, group)
            new_b = (f64(b).reshape(-1) if b is not None else 0.0) + shift
            _swap(graph, namer, conv, [pre], conv.outputs[0], x, new_w, new_b, w.dtype)

        kind = "Mul" if pre.op_type in ("Mul", "Div") else "Add"
        return Fuse(f"Conv({kind})", apply)


def _pads(conv: ir.Node, spatial: int) -> list[int]:
    """The Conv's padding, [] when it pads nothing; [-1] for SAME_* (depends on the input size)."""
    auto_pad = attr_str(conv, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return [-1]
    pads = attr_ints(conv, "pads", [0] * 2 * spatial) if auto_pad == "NOTSET" else []
    return pads if any(pads) else []


def _scale_inputs(w: np.ndarray, a: np.ndarray, t: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Conv(a * x + t, W) == Conv(x, W') + shift with a, t per input channel (grouped W [O, I/g, k..])."""
    w = f64(w)
    out, ipg = w.shape[0], w.shape[1]
    # input channel read by W[o, i]: (o // (O/g)) * (I/g) + i
    channel = (np.arange(out)[:, None] // (out // group)) * ipg + np.arange(ipg)[None, :]
    spatial = (1,) * (w.ndim - 2)
    new_w = w * a[channel].reshape(w.shape[:2] + spatial)
    shift = (w * t[channel].reshape(w.shape[:2] + spatial)).reshape(out, -1).sum(axis=1)
    return new_w, shift


def _swap(graph: ir.Graph, namer: Names, conv: ir.Node, extra: list[ir.Node], old_out: ir.Value, x: ir.Value,
          new_w: np.ndarray, new_b: np.ndarray, dtype: np.dtype) -> None:
    old_w, old_b = conv.inputs[1], conv.inputs[2] if len(conv.inputs) > 2 else None
    w_value = add_initializer(graph, namer(f"{old_w.name or 'W'}_affine"), new_w.astype(dtype))
    b_value = add_initializer(
        graph, namer(f"{(old_b.name if old_b is not None else None) or w_value.name + '_bias'}"), new_b.astype(dtype))
    new = node_like(conv, conv.op_type, [x, w_value, b_value], conv.attributes.values())
    replace(graph, [conv, *extra], [new], old_out, new.outputs[0], renames=[(w_value, old_w), (b_value, old_b)])
