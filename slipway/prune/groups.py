"""Channel groups: which channels of an ONNX graph must be removed together, and what removing them edits.

One forward walk over the main graph (topological order) gives every value a *layout* - the axis
its channels lie on and which groups they belong to - or none (its channels are fixed):

- a **producer** (``Conv`` / ``ConvTranspose`` with ``group=1``, ``Gemm`` / ``MatMul`` with a constant
  weight) starts a new group of its output channels; it also *consumes* its input's channels (the
  weight's input axis is sliced);
- channel-preserving ops pass the layout on: activations, ``BatchNormalization`` (its four vectors
  sliced), pooling, ``Pad`` / ``Resize`` off the channel axis, reductions over other axes,
  ``Transpose`` / ``Unsqueeze`` (the axis moves), a **depthwise** ``Conv`` (weights sliced, ``group``
  shrinks with the channels);
- an elementwise op couples its inputs: a residual ``Add`` (or a squeeze-excitation ``Mul``) joins the
  groups of its inputs into one (union-find); a constant operand with a channel dim is sliced;
- ``Concat`` on the channel axis lays its inputs' groups side by side (offsets); ``Flatten`` /
  ``Reshape`` to ``[N, C*H*W]`` makes each channel ``H*W`` consecutive features of the ``Gemm`` after it;
- a **grouped** ``Conv`` (``1 < group < channels``) splits the group it reads into ``group`` blocks that must
  keep as many channels each (its output is a new group with the same blocks);
- everything else that reads a channel-carrying value (a graph output, ``Shape``, a normalization over it,
  a ``Split`` inside a group, a ``Slice`` / ``Reshape`` across the channel axis, an unknown op) **blocks** the groups
  it touches, with the reason ``slipway prune --explain`` prints.

The walk records *edits* (slice this constant on this axis by this layout, set this ``group``
attribute, rewrite this Reshape shape) by node position, so :mod:`slipway.prune.surgery` can apply
any choice of kept channels to a copy of the model.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from slipway.graph import attr_int, attr_ints, const, is_op, label
from slipway.prune.plan import Blocked, Edit, Group, Layout, Plan, Producer, Walk

__all__ = ["Layout", "Edit", "Producer", "Group", "Plan", "discover"]

UNARY = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Celu",
    "Gelu", "Softplus", "Softsign", "Mish", "Identity", "Dropout", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos", "ThresholdedRelu", "Shrink", "Sign",
})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"})
SPATIAL = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})
REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd",
                    "ReduceSumSquare", "ReduceLogSumExp"})


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _dims(value: ir.Value) -> list[int | None] | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def discover(model: ir.Model) -> Plan:
    """The channel groups of ``model``'s main graph (shapes must be inferred; see the module)."""
    w = Walk(model.graph)
    for node in w.nodes:
        tracked = [(i, w.get(v)) for i, v in enumerate(node.inputs) if w.get(v) is not None]
        try:
            _visit(w, node, tracked)
        except Blocked as e:
            for _, layout in tracked:
                w.block(layout, e.why)
    for out in model.graph.outputs:
        layout = w.get(out)
        if layout is not None:
            w.block(layout, f"reaches the graph output {out.name!r}, whose shape must not change")
    groups = {w.root(g): w.groups[w.root(g)] for g in list(w.groups)}
    for g in groups.values():  # merged groups' records: offsets stay relative to the root
        g.bn = sorted(set(g.bn))
    return Plan(groups, w.edits, dict(w.parent), w.consumers)


def _visit(w: Walk, node: ir.Node, tracked: list[tuple[int, Layout]]) -> None:
    op = node.op_type if is_op(node, node.op_type) else f"{node.domain}::{node.op_type}"
    if op in ("Conv", "ConvTranspose"):
        return _conv(w, node, tracked)
    if op in ("Gemm", "MatMul"):
        return _matmul(w, node, tracked)
    if not tracked:
        return None
    if op == "Shape" or op == "Size":
        raise Blocked(f"its shape is read by {label(node)}")
    layout = tracked[0][1]
    if op in UNARY:
        if tracked[0][0] != 0:
            raise Blocked(f"is a parameter of {label(node)}")
        if op == "PRelu":
            _slice_const(w, node, 1, layout, node.outputs[0])
        w.put(node.outputs[0], layout)
        return None
    if op in BINARY:
        return _binary(w, node, tracked)
    if op in SPATIAL or op in ("Resize", "Upsample", "Pad", "LRN"):
        return _spatial(w, node, op, layout)
    if op in REDUCE:
        return _reduce(w, node, layout)
    if op == "BatchNormalization":
        if tracked[0][0] != 0 or layout.axis != 1 or len(node.outputs) > 1 and any(v.uses() for v in node.outputs[1:]):
            raise Blocked(f"is read by {label(node)} in a way slipway cannot follow")
        for i in range(1, 5):
            w.edit("slice", node, i, 0, layout)
        for gid, _ in layout.segs:
            w.groups[w.root(gid)].bn.append((w.index[id(node)], 0))
        w.put(node.outputs[0], layout)
        return None
    if op == "InstanceNormalization" and tracked[0][0] == 0 and layout.axis == 1 and layout.inner == 1:
        for i in (1, 2):
            w.edit("slice", node, i, 0, layout)
        w.put(node.outputs[0], layout)
        return None
    if op in ("LayerNormalization", "GroupNormalization", "Softmax", "LogSoftmax", "Hardmax", "LpNormalization"):
        raise Blocked(f"is normalized over by {label(node)}: removing channels would change what every other "
                      "channel is divided by")
    if op == "Concat":
        return _concat(w, node, tracked)
    if op == "Flatten":
        return _flatten(w, node, layout)
    if op == "Reshape":
        return _reshape(w, node, layout)
    if op == "Transpose":
        perm = attr_ints(node, "perm", list(range(layout.rank))[::-1])
        if layout.inner != 1:
            raise Blocked(f"is transposed by {label(node)} after a flatten")
        w.put(node.outputs[0], Layout(perm.index(layout.axis), layout.rank, layout.segs))
        return None
    if op == "Unsqueeze":
        rank = _rank(node.outputs[0])
        axes = _axes(node, rank) if rank is not None else None
        if axes is None:
            raise Blocked(f"{label(node)} has axes that are not constant")
        axis = layout.axis
        for a in sorted(axes):
            axis += a <= axis
        w.put(node.outputs[0], Layout(axis, rank, layout.segs, layout.inner))
        return None
    if op == "Squeeze":
        axes = _axes(node, layout.rank)
        if axes is None or layout.axis in axes:
            raise Blocked(f"{label(node)} may squeeze the channel axis")
        w.put(node.outputs[0], Layout(layout.axis - sum(a < layout.axis for a in axes), layout.rank - len(axes),
                                      layout.segs, layout.inner))
        return None
    if op == "Split":
        return _split(w, node, layout)
    if op in ("Slice", "Gather"):
        raise Blocked(f"is cut by {label(node)} (a {op} of a prunable group is not supported yet)")
    raise Blocked(f"is read by {label(node)}, which slipway cannot follow")


def _axes(node: ir.Node, rank: int) -> list[int] | None:
    """The ``axes`` of a Reduce / Squeeze / Unsqueeze (attribute or constant input), non-negative; [] when absent."""
    if "axes" in node.attributes:
        axes = attr_ints(node, "axes", [])
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        c = const(node.inputs[1])
        if c is None:
            return None
        axes = [int(a) for a in np.ravel(c)]
    else:
        return []
    return [a % rank for a in axes]


def _conv(w: Walk, node: ir.Node, tracked: list[tuple[int, Layout]]) -> None:
    weight = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if any(i != 0 for i, _ in tracked):
        raise Blocked(f"is a weight of {label(node)}")
    if weight is None:
        raise Blocked(f"feeds {label(node)}, whose weight is not a constant")
    group = attr_int(node, "group", 1)
    transposed = node.op_type == "ConvTranspose"
    layout = tracked[0][1] if tracked else None
    if layout is not None and (layout.axis != 1 or layout.inner != 1):
        raise Blocked(f"reaches {label(node)} on a non-channel axis")
    cin = weight.shape[0] if transposed else weight.shape[1] * group
    depthwise = group > 1 and group == cin and (weight.shape[1] == 1 if not transposed else weight.shape[1] == 1) \
        and weight.shape[0] == group
    if depthwise:
        if layout is None:
            return None  # fixed channels in, fixed out
        for i in (1, 2):
            if i < len(node.inputs) and node.inputs[i] is not None:
                w.edit("slice", node, i, 0, layout)
        w.edit("group", node, 0, 0, layout)
        _note_values(w, node.inputs[0], layout)
        w.put(node.outputs[0], layout)
        return None
    if group != 1 and transposed:
        raise Blocked(f"feeds the grouped {label(node)} (group={group})")
    if layout is not None and group != 1:
        _grouped(w, node, group, layout)
    elif layout is not None:
        _consume(w, node, 1, 0 if transposed else 1, layout)
    cout = weight.shape[1] if transposed else weight.shape[0]
    gid = w.new_group(cout)
    w.groups[gid].blocks = group
    out = node.outputs[0]
    w.groups[gid].producers.append(Producer(w.index[id(node)], label(node), node.op_type, 1, 1 if transposed else 0,
                                            out.name, 1))
    out_layout = Layout(1, _rank(out) or weight.ndim, ((gid, cout),))
    w.edit("slice", node, 1, 1 if transposed else 0, out_layout)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        w.edit("slice", node, 2, 0, out_layout)
    w.put(out, out_layout)
    return None


def _grouped(w: Walk, node: ir.Node, group: int, layout: Layout) -> None:
    """A grouped Conv reads ``group`` equal runs of its input channels, each with its own filters: the group
    feeding it keeps as many channels in every run ("grouped" edit: each output block's own input positions)."""
    if len(layout.segs) != 1:
        raise Blocked(f"feeds the grouped {label(node)} (group={group}) through a concatenation")
    g = w.groups[w.root(layout.segs[0][0])]
    g.blocks = math.lcm(g.blocks, group)
    if g.size % g.blocks:
        raise Blocked(f"feeds the grouped {label(node)} (group={group}), which {g.size} channels do not divide")
    _consume(w, node, 1, 1, layout)
    w.edits[-1].kind = "grouped"
    w.edits[-1].parts = (group,)


def _consume(w: Walk, node: ir.Node, index: int, axis: int, layout: Layout) -> None:
    """``node``'s weight at ``index`` loses the input channels of ``layout`` on ``axis``; its output changes."""
    w.edit("slice", node, index, axis, layout)
    out = node.outputs[0]
    w.consumers.append((w.index[id(node)], out.name, 1 if node.op_type in ("Conv", "ConvTranspose", "Gemm")
                        else (_rank(out) or 2) - 1))
    _note_values(w, node.inputs[0], layout)


def _note_values(w: Walk, value: ir.Value, layout: Layout) -> None:
    """Each group of ``layout`` is read from ``value`` (what the activation criterion measures)."""
    offset = 0
    for gid, n in layout.segs:
        w.groups[w.root(gid)].values.append((value.name, layout.axis, offset, layout.inner))
        offset += n * layout.inner


def _matmul(w: Walk, node: ir.Node, tracked: list[tuple[int, Layout]]) -> None:
    gemm = node.op_type == "Gemm"
    weight = const(node.inputs[1])
    if weight is None or weight.ndim != 2 or any(i != 0 for i, _ in tracked):
        if tracked:
            raise Blocked(f"is multiplied by a non-constant in {label(node)}")
        return None
    trans_a, trans_b = (attr_int(node, "transA", 0), attr_int(node, "transB", 0)) if gemm else (0, 0)
    layout = tracked[0][1] if tracked else None
    if layout is not None:
        if trans_a or layout.axis != layout.rank - 1:
            raise Blocked(f"reaches {label(node)} on an axis it does not reduce")
        _consume(w, node, 1, 1 if trans_b else 0, layout)
    out = node.outputs[0]
    rank = _rank(out) or 2
    cout = weight.shape[0] if trans_b else weight.shape[1]
    gid = w.new_group(cout)
    w.groups[gid].producers.append(Producer(w.index[id(node)], label(node), node.op_type, 1, 0 if trans_b else 1,
                                            out.name, rank - 1))
    out_layout = Layout(rank - 1, rank, ((gid, cout),))
    w.edit("slice", node, 1, 0 if trans_b else 1, out_layout)
    if gemm and len(node.inputs) > 2 and node.inputs[2] is not None:
        _slice_const(w, node, 2, out_layout, out)
    w.put(out, out_layout)
    return None


def _slice_const(w: Walk, node: ir.Node, index: int, layout: Layout, out: ir.Value) -> None:
    """A constant operand broadcast against ``layout``: sliced when it has the channel dim, else left."""
    c = const(node.inputs[index])
    if c is None:
        raise Blocked(f"meets a non-constant operand of {label(node)}")
    axis = layout.axis - (layout.rank - c.ndim)
    if axis < 0 or c.shape[axis] == 1:
        return
    if c.shape[axis] != layout.size:
        raise Blocked(f"meets a constant of shape {list(c.shape)} in {label(node)}")
    w.edit("slice", node, index, axis, layout)


def _binary(w: Walk, node: ir.Node, tracked: list[tuple[int, Layout]]) -> None:
    out = node.outputs[0]
    rank = _rank(out)
    if rank is None:
        raise Blocked(f"{label(node)} has an output of unknown rank")
    layouts = {i: Layout(lay.axis + rank - lay.rank, rank, lay.segs, lay.inner) for i, lay in tracked}
    first = next(iter(layouts.values()))
    for lay in layouts.values():
        if lay.axis != first.axis or lay.inner != first.inner or [n for _, n in lay.segs] != [n for _, n in first.segs]:
            raise Blocked(f"meets channels laid out differently in {label(node)}")
    for i, v in enumerate(node.inputs):
        if v is None or i in layouts:
            continue
        if const(v) is not None:
            _slice_const(w, node, i, first, out)
            continue
        d = _dims(v)
        axis = first.axis - (rank - len(d)) if d is not None else None
        if d is None or (axis is not None and axis >= 0 and d[axis] != 1):
            raise Blocked(f"is combined in {label(node)} with {v.name!r}, whose channels are not prunable")
    for lay in layouts.values():
        for (a, _), (b, _) in zip(first.segs, lay.segs, strict=True):
            w.union(a, b)
    w.put(out, first)


def _spatial(w: Walk, node: ir.Node, op: str, layout: Layout) -> None:
    if layout.axis != 1 or layout.inner != 1:
        raise Blocked(f"reaches {label(node)} on a non-channel axis")
    if op in ("Resize", "Upsample", "Pad"):
        for i in range(1, len(node.inputs)):
            v = node.inputs[i]
            if v is None or (op == "Pad" and i == 2):
                continue
            c = const(v)
            if c is None:
                raise Blocked(f"{label(node)} has non-constant sizes")
            c = np.ravel(c)
            if op == "Resize" and i == 3 and c.size:
                raise Blocked(f"{label(node)} resizes to fixed sizes that include the channels")
            if op == "Pad" and i == 1 and c.size == 2 * layout.rank and (c[1] or c[1 + layout.rank]):
                raise Blocked(f"{label(node)} pads the channel axis")
            if op == "Pad" and i == 3:
                raise Blocked(f"{label(node)} pads chosen axes")
    w.put(node.outputs[0], layout)


def _reduce(w: Walk, node: ir.Node, layout: Layout) -> None:
    axes = _axes(node, layout.rank)
    if axes is None or not axes or layout.axis in axes or layout.inner != 1:
        raise Blocked(f"is reduced over by {label(node)}")
    if attr_int(node, "keepdims", 1):
        w.put(node.outputs[0], layout)
    else:
        w.put(node.outputs[0], Layout(layout.axis - sum(a < layout.axis for a in axes), layout.rank - len(axes),
                                      layout.segs))


def _concat(w: Walk, node: ir.Node, tracked: list[tuple[int, Layout]]) -> None:
    layouts = dict(tracked)
    first = tracked[0][1]
    axis = attr_int(node, "axis", 0) % first.rank
    if len(layouts) != len(node.inputs) or any(lay.inner != 1 or lay.axis != first.axis for lay in layouts.values()):
        raise Blocked(f"is concatenated by {label(node)} with channels that are not prunable")
    if axis == first.axis:
        segs = tuple(s for i in range(len(node.inputs)) for s in layouts[i].segs)
        w.put(node.outputs[0], Layout(first.axis, first.rank, segs))
        return
    for lay in layouts.values():
        if [n for _, n in lay.segs] != [n for _, n in first.segs]:
            raise Blocked(f"meets channels laid out differently in {label(node)}")
        for (a, _), (b, _) in zip(first.segs, lay.segs, strict=True):
            w.union(a, b)
    w.put(node.outputs[0], first)


def _flatten(w: Walk, node: ir.Node, layout: Layout) -> None:
    d = _dims(node.inputs[0])
    axis = attr_int(node, "axis", 1) % layout.rank if layout.rank else 1
    if d is None or axis != layout.axis or axis != 1 or any(x is None for x in d[2:]):
        raise Blocked(f"is flattened by {label(node)} in a way slipway cannot follow")
    inner = int(np.prod(d[2:], dtype=np.int64)) * layout.inner
    w.put(node.outputs[0], Layout(1, 2, layout.segs, inner))


def _reshape(w: Walk, node: ir.Node, layout: Layout) -> None:
    d_in, d_out = _dims(node.inputs[0]), _dims(node.outputs[0])
    shape = const(node.inputs[1]) if len(node.inputs) > 1 else None
    a = layout.axis
    if d_in is None or d_out is None or shape is None or any(x is None for x in d_in[a + 1:]):
        raise Blocked(f"is reshaped by {label(node)} to a shape slipway cannot follow")
    shape = np.ravel(shape)
    if len(d_out) > a and d_out[a] == d_in[a] and d_out[a + 1:] == d_in[a + 1:] and len(shape) == len(d_out):
        new = Layout(a, len(d_out), layout.segs, layout.inner)  # the dims before the channels change only
    elif len(d_out) == a + 1 and d_out[a] is not None and d_out[a] == layout.size * int(
            np.prod(d_in[a + 1:], dtype=np.int64)):
        new = Layout(a, a + 1, layout.segs, layout.inner * int(np.prod(d_in[a + 1:], dtype=np.int64)))
    else:
        raise Blocked(f"is reshaped by {label(node)} across the channel axis")
    if shape[a] > 0:  # an explicit channel count (not 0 = copy, -1 = inferred) is rewritten
        w.edit("reshape", node, 1, a, new)
    w.put(node.outputs[0], new)


def _split(w: Walk, node: ir.Node, layout: Layout) -> None:
    """A Split along the channel axis whose cuts fall between groups (a Concat undone): each output takes its
    groups; off the channel axis every output keeps the layout."""
    axis = attr_int(node, "axis", 0) % layout.rank
    if axis != layout.axis:
        for out in node.outputs:
            w.put(out, layout)
        return
    sizes = _split_sizes(node, layout.size)
    if sizes is None:
        raise Blocked(f"is cut by {label(node)} into sizes that are not constant")
    parts, k, edges = [], 0, np.cumsum([n * layout.inner for _, n in layout.segs]).tolist()
    for end in np.cumsum(sizes).tolist():
        if end not in edges:
            raise Blocked(f"is cut by {label(node)} inside a group (sizes {sizes}): not supported yet")
        j = edges.index(end) + 1
        parts.append(j - k)
        w.put(node.outputs[len(parts) - 1], Layout(layout.axis, layout.rank, layout.segs[k:j], layout.inner))
        k = j
    w.edit("split", node, 1, 0, layout)
    w.edits[-1].parts = tuple(parts)


def _split_sizes(node: ir.Node, total: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = const(node.inputs[1])
        return None if c is None else [int(x) for x in np.ravel(c)]
    if "split" in node.attributes:
        return attr_ints(node, "split", [])
    n = len(node.outputs)
    return [total // n] * n if total % n == 0 else None
