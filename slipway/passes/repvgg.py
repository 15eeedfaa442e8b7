"""RepVGG structural re-parameterization: parallel conv branches summed by Adds become one Conv."""

from __future__ import annotations

from dataclasses import dataclass

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
    only_used_by,
    other_user,
    replace,
)
from slipway.passes._fusion import Fuse, FusionPass, Match, Skip, f64, scale_outputs
from slipway.passes.base import register
from slipway.passes.batchnorm import bn_affine


@dataclass
class Branch:
    """One summand ``leaf``, an affine function of the shared input ``x``: a Conv (its BN folded
    in) or an identity (``scale * x + bias``, from a BN on x or x itself)."""

    x: ir.Value
    leaf: ir.Value
    nodes: list[ir.Node]  # computed only for this branch; removed by the merge
    bias: np.ndarray  # float64 [C]
    kernel: np.ndarray | None = None  # float64 [O, I/g, k...]; None for an identity
    scale: np.ndarray | None = None  # identity only
    conv: ir.Node | None = None
    dtype: np.dtype | None = None  # the conv weight's
    strides: tuple[int, ...] = ()
    begin: tuple[int, ...] = ()
    end: tuple[int, ...] = ()

    @property
    def group(self) -> int:
        return attr_int(self.conv, "group", 1) if self.conv is not None else 0


def single_use(value: ir.Value, node: ir.Node) -> bool:
    """:func:`only_used_by`, and used once (not twice by the same node)."""
    return only_used_by(value, node) and len(value.uses()) == 1


def is_root(node: ir.Node) -> bool:
    """An Add whose sum is not just one term of another Add's sum."""
    if not is_op(node, "Add") or len(node.inputs) != 2 or None in node.inputs:
        return False
    out = node.outputs[0]
    uses = list(out.uses())
    return out.is_graph_output() or len(uses) != 1 or not is_inner(uses[0].node, out)


def is_inner(add: ir.Node, value: ir.Value) -> bool:
    """``value`` is an Add's sum that only feeds ``add``, another Add of the same graph."""
    producer = value.producer()
    return (is_op(add, "Add") and None not in add.inputs and single_use(value, add)
            and is_op(producer, "Add") and producer.graph is add.graph)


def flatten(root: ir.Node) -> tuple[list[ir.Node], list[tuple[ir.Value, ir.Node]]]:
    """The Adds of the sum rooted at ``root`` and its terms, each with the Add that reads it."""
    adds, leaves, stack = [root], [], [root]
    while stack:
        add = stack.pop()
        for value in add.inputs:
            producer = value.producer()
            if is_inner(add, value) and len(producer.inputs) == 2 and None not in producer.inputs:
                adds.append(producer)
                stack.append(producer)
            else:
                leaves.append((value, add))
    return adds, leaves


def reads_conv(leaf: ir.Value) -> bool:
    """The term is a Conv's output, or a BN's of a Conv's output."""
    p = leaf.producer()
    if is_op(p, "BatchNormalization") and p.inputs[0] is not None:
        p = p.inputs[0].producer()
    return is_op(p, "Conv")


def parse(leaf: ir.Value, add: ir.Node) -> tuple[ir.Value, Branch | Skip] | None:
    """The input a Conv / BN(Conv) / BN summand reads and the branch it is (or why it cannot be)."""
    p = leaf.producer()
    if not is_op(p, "Conv", "BatchNormalization") or p.inputs[0] is None or len(p.outputs) < 1:
        return None
    inner = p.inputs[0]
    q = inner.producer() if p.op_type == "BatchNormalization" else None
    conv = p if p.op_type == "Conv" else q if is_op(q, "Conv") and single_use(inner, p) else None
    x = conv.inputs[0] if conv is not None else inner
    if x is None:
        return None
    if not single_use(leaf, add):
        return x, Skip(f"{label(p)}: its output is also used by {other_user(leaf, add)}", warn=True)
    s, t = np.ones(1), np.zeros(1)
    if p.op_type == "BatchNormalization":
        affine = bn_affine(p)
        if isinstance(affine, Skip):
            return x, affine
        s, t = affine
        if conv is None:
            return x, Branch(x, leaf, [p], bias=t, scale=s)
    return x, conv_branch(x, leaf, conv, s, t, [conv] if conv is p else [conv, p])


def conv_branch(x: ir.Value, leaf: ir.Value, conv: ir.Node, s: np.ndarray, t: np.ndarray,
                nodes: list[ir.Node]) -> Branch | Skip:
    w = float_const(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if w is None or w.ndim < 3:
        return Skip(f"{label(conv)}: its weight is not a constant", warn=True)
    has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
    b = float_const(conv.inputs[2]) if has_bias else np.zeros(w.shape[0])
    if b is None:
        return Skip(f"{label(conv)}: its bias is not a constant", warn=True)
    if s.size not in (1, w.shape[0]):
        return Skip(f"{label(conv)}: its BN has {s.size} channels for {w.shape[0]} outputs")
    spatial, k = w.ndim - 2, w.shape[2:]
    auto_pad = attr_str(conv, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return Skip(f"{label(conv)}: auto_pad={auto_pad}", warn=True)
    pads = attr_ints(conv, "pads", [0] * 2 * spatial) if auto_pad == "NOTSET" else [0] * 2 * spatial
    dilations = attr_ints(conv, "dilations", [1] * spatial)
    if any(d != 1 and n > 1 for d, n in zip(dilations, k, strict=True)):
        return Skip(f"{label(conv)}: dilations {dilations} (only 1 merges)", warn=True)
    s = np.broadcast_to(s, (w.shape[0],))
    return Branch(x, leaf, nodes, bias=f64(b).reshape(-1) * s + t, kernel=scale_outputs("Conv", w, s), conv=conv,
                  dtype=w.dtype,
                  strides=tuple(attr_ints(conv, "strides", [1] * spatial)), begin=tuple(pads[:spatial]),
                  end=tuple(pads[spatial:]))


@register
class MergeRepVGG(FusionPass):
    """Add(Conv_k(x), Conv_1(x), BN(x)) -> Conv_k(x)

    RepVGG / ACNet / MobileOne re-parameterization. The terms of a sum of Adds (any order and
    association) that are Convs (optionally followed by BN) or identities of one input x (a BN on
    x, or x itself) merge into one Conv: smaller kernels are zero-padded into the largest where
    their pads put them (pad_k = pad_1 + (k-1)/2 for a centered 1x1), an identity becomes a kernel
    with its BN scale at the center of channel i -> i (per group), and the biases add up. The
    branches must share strides and groups, line up (the same output size), use dilation 1 and
    feed nothing else; an identity needs stride 1 and as many output as input channels. Terms
    that are not branches of x stay in the sum.
    """

    name = "merge-repvgg"

    def match(self, node: ir.Node) -> Match:
        if not is_root(node):
            return None
        adds, leaves = flatten(node)
        parsed = [(leaf, parse(leaf, add)) for leaf, add in leaves]
        inputs = [p[0] for _, p in parsed if p is not None]
        if not inputs:
            return None
        x = max(dict.fromkeys(inputs), key=lambda v: sum(p is not None and p[0] is v for _, p in parsed))
        members, failed, others, has_conv = [], [], [], False
        for leaf, p in parsed:
            if leaf is x:
                members.append(Branch(x, leaf, [], bias=np.zeros(1), scale=np.ones(1)))
                continue
            if p is not None and p[0] is x:
                has_conv = has_conv or reads_conv(leaf)
                if isinstance(p[1], Branch):
                    members.append(p[1])
                    continue
                failed.append(p[1])
            others.append(leaf)
        if not has_conv:
            return None
        if len(members) < 2 or all(m.kernel is None for m in members):
            return failed[0] if failed and len(members) + len(failed) >= 2 else None
        why = mismatch(members)
        if why:
            return Skip(f"{label(node)}: the branches on {x.name!r} cannot merge: {why}", warn=True)

        def apply(graph: ir.Graph, namer: Names) -> None:
            merge(graph, namer, node, adds, members, others)

        return Fuse(f"{len(members)}-branch block", apply)


def mismatch(members: list[Branch]) -> str | None:
    """Why these branches cannot become one Conv, or None."""
    convs = [m for m in members if m.kernel is not None]
    ref = convs[0]
    for m in convs[1:]:
        if m.kernel.ndim != ref.kernel.ndim or m.kernel.shape[0] != ref.kernel.shape[0]:
            return "their output shapes differ"
        if m.group != ref.group or m.kernel.shape[1] != ref.kernel.shape[1]:
            return f"groups differ ({ref.group} vs {m.group})"
        if m.strides != ref.strides:
            return f"strides differ ({list(ref.strides)} vs {list(m.strides)})"
        if m.dtype != ref.dtype:
            return "weight dtypes differ"
    channels = ref.kernel.shape[0]
    if len(convs) < len(members):
        if any(s != 1 for s in ref.strides):
            return f"an identity branch needs stride 1, the convs have strides {list(ref.strides)}"
        if ref.kernel.shape[1] * ref.group != channels:
            return "an identity branch needs as many input as output channels"
        if any(m.scale.size not in (1, channels) for m in members if m.kernel is None):
            return "the identity BN has the wrong number of channels"
    reach = {tuple(b + e - k for b, e, k in zip(m.begin, m.end, m.kernel.shape[2:], strict=True)) for m in convs}
    if len(reach) > 1 or (len(convs) < len(members) and reach != {(-1,) * (ref.kernel.ndim - 2)}):
        return "their pads do not line up (different output sizes or offsets)"
    return None


def merge(graph: ir.Graph, namer: Names, root: ir.Node, adds: list[ir.Node], members: list[Branch],
          others: list[ir.Value]) -> None:
    convs = sorted((m for m in members if m.kernel is not None), key=lambda m: -m.kernel[0, 0].size)
    ref = convs[0]  # the largest kernel: its weight and bias names go to the merged Conv
    spatial = ref.kernel.ndim - 2
    out, ipg = ref.kernel.shape[:2]
    begin = [max(m.begin[d] if m.kernel is not None else 0 for m in members) for d in range(spatial)]
    size = [begin[d] + 1 + max(m.kernel.shape[2 + d] - 1 - m.begin[d] if m.kernel is not None else 0
                                for m in members) for d in range(spatial)]
    reach = [ref.begin[d] + ref.end[d] - ref.kernel.shape[2 + d] for d in range(spatial)]
    end = [reach[d] + size[d] - begin[d] for d in range(spatial)]
    kernel, bias = np.zeros((out, ipg, *size)), np.zeros(out)
    for m in members:
        bias += np.broadcast_to(m.bias, (out,))
        if m.kernel is not None:
            at = [begin[d] - m.begin[d] for d in range(spatial)]
            window = tuple(slice(a, a + n) for a, n in zip(at, m.kernel.shape[2:], strict=True))
            kernel[(slice(None), slice(None), *window)] += m.kernel
        else:
            o = np.arange(out)
            kernel[(o, o % ipg, *begin)] += np.broadcast_to(m.scale, (out,))
    old_w, old_b = ref.conv.inputs[1], ref.conv.inputs[2] if len(ref.conv.inputs) > 2 else None
    w_value = add_initializer(graph, namer(f"{old_w.name or 'W'}_repvgg"), kernel.astype(ref.dtype))
    b_name = old_b.name if old_b is not None and old_b.name else f"{old_w.name or 'W'}_bias"
    b_value = add_initializer(graph, namer(b_name), bias.astype(ref.dtype))
    attrs = [ir.AttrInt64s("kernel_shape", size), ir.AttrInt64s("pads", begin + end),
             ir.AttrInt64s("strides", list(ref.strides)), ir.AttrInt64s("dilations", [1] * spatial),
             ir.AttrInt64("group", ref.group)]
    nodes = [ir.Node("", "Conv", [ref.x, w_value, b_value], attrs, name=ref.conv.name)]
    for leaf in others:
        nodes.append(ir.Node("", "Add", [nodes[-1].outputs[0], leaf], name=root.name if leaf is others[-1] else None))
    old = list(dict.fromkeys([*adds, *(n for m in members for n in m.nodes)]))
    replace(graph, old, nodes, root.outputs[0], nodes[-1].outputs[0], renames=[(w_value, old_w), (b_value, old_b)])
