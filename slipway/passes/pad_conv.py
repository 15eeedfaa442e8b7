"""Merge a constant zero Pad of the spatial dims into the pads of the Conv that reads it."""

from __future__ import annotations

import onnx_ir as ir

from slipway.graph import Names, attr_float, attr_ints, attr_str, const, is_op, label, node_like, remove_dead, replace
from slipway.passes._fusion import Fuse, FusionPass, Match, Skip
from slipway.passes.base import register


def conv_rank(conv: ir.Node) -> int | None:
    """Rank of the Conv's input, from its weight (constant or with a known shape)."""
    w = conv.inputs[1] if len(conv.inputs) > 1 else None
    if w is None:
        return None
    if w.shape is not None:
        return len(w.shape)
    array = const(w)
    return None if array is None else array.ndim


def pad_amounts(pad: ir.Node, rank: int) -> list[int] | str:
    """The Pad's [begin..., end...] amounts over all ``rank`` axes, or why it cannot merge."""
    if attr_str(pad, "mode", "constant") != "constant":
        return f"mode={attr_str(pad, 'mode', 'constant')!r} is not a zero pad"
    if "pads" in pad.attributes:  # opset < 11: pads and value are attributes
        pads, axes = attr_ints(pad, "pads", []), list(range(rank))
        if attr_float(pad, "value", 0.0) != 0.0:
            return "the pad value is not 0"
    else:
        pads_array = const(pad.inputs[1]) if len(pad.inputs) > 1 else None
        if pads_array is None:
            return "its pads are not a constant"
        pads = [int(p) for p in pads_array.reshape(-1)]
        value = pad.inputs[2] if len(pad.inputs) > 2 else None
        if value is not None:
            array = const(value)
            if array is None or array.size != 1 or array.reshape(-1)[0] != 0:
                return "its constant_value is not a constant 0"
        axes_value = pad.inputs[3] if len(pad.inputs) > 3 else None
        axes = list(range(rank))
        if axes_value is not None:
            axes_array = const(axes_value)
            if axes_array is None:
                return "its axes are not a constant"
            axes = [int(a) + rank if a < 0 else int(a) for a in axes_array.reshape(-1)]
    if len(pads) != 2 * len(axes) or any(not 0 <= a < rank for a in axes):
        return f"its pads {pads} do not fit a rank-{rank} input"
    full = [0] * 2 * rank
    for i, axis in enumerate(axes):
        full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
    if any(p < 0 for p in full):
        return f"it crops (negative pads {full})"
    if any(full[a] or full[a + rank] for a in (0, 1)):
        return f"it pads the batch or channel axis (pads {full})"
    return full


@register
class FusePadConv(FusionPass):
    """Conv(Pad(x, pads, mode="constant", value=0)) -> Conv(x, pads=pads + conv_pads)

    The Pad may take its pads as an attribute (opset < 11) or as a constant input with optional
    constant_value and axes inputs (opset 11+, 18+). Only non-negative pads of the spatial axes
    merge; a Conv with auto_pad SAME_* is left (its padding depends on the input size). A Pad
    that other nodes also read stays for them; the Conv reads x directly either way.
    """

    name = "fuse-pad-conv"

    def match(self, node: ir.Node) -> Match:
        if not is_op(node, "Conv") or node.inputs[0] is None:
            return None
        pad = node.inputs[0].producer()
        if not is_op(pad, "Pad") or pad.inputs[0] is None:
            return None
        where = f"{label(pad)} before {label(node)}"
        rank = conv_rank(node)
        if rank is None or rank < 3:
            return Skip(f"{where}: the Conv's input rank is unknown")
        amounts = pad_amounts(pad, rank)
        if isinstance(amounts, str):
            return Skip(f"{where}: {amounts}")
        auto_pad = attr_str(node, "auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            return Skip(f"{where}: the Conv has auto_pad={auto_pad}")
        spatial = rank - 2
        old = attr_ints(node, "pads", [0] * 2 * spatial) if auto_pad == "NOTSET" else [0] * 2 * spatial
        added = amounts[2:rank] + amounts[rank + 2:]
        pads = [a + b for a, b in zip(old, added, strict=True)]

        def apply(graph: ir.Graph, namer: Names) -> None:
            attrs = [a for a in node.attributes.values() if a.name not in ("pads", "auto_pad")]
            attrs.append(ir.AttrInt64s("pads", pads))
            new = node_like(node, "Conv", [pad.inputs[0], *node.inputs[1:]], attrs)
            replace(graph, [node], [new], node.outputs[0], new.outputs[0])
            remove_dead([pad])

        return Fuse("Conv(Pad)", apply)

