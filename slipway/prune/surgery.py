"""Apply a choice of kept channels to a copy of the model: the edits :func:`slipway.prune.groups.discover` recorded.

``keep`` maps a group (its root id) to the sorted indices of the channels that stay; a group not in
``keep`` keeps everything. Every sliced constant becomes a new initializer (a weight shared by two
nodes is never cut twice); the old one goes when nothing reads it any more, and the new one takes its
name. Intermediate shapes are re-inferred, graph inputs and outputs keep theirs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from slipway.graph import Names, add_initializer, const, copy_model, default_opset, remove_dead
from slipway.passes.shapes import infer
from slipway.prune.plan import Edit, Layout, Plan

__all__ = ["apply", "indices", "set_const", "reinfer"]


def indices(plan: Plan, layout: Layout, keep: Mapping[int, np.ndarray]) -> np.ndarray:
    """Positions along ``layout``'s axis (elements, ``inner`` per channel) that stay."""
    parts, offset = [], 0
    for gid, n in layout.segs:
        kept = keep.get(plan.root(gid))
        kept = np.arange(n) if kept is None else np.asarray(kept)
        parts.append(offset + kept)
        offset += n
    channels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if layout.inner == 1:
        return channels
    return (channels[:, None] * layout.inner + np.arange(layout.inner)[None]).ravel()


def apply(model: ir.Model, plan: Plan, keep: Mapping[int, np.ndarray], *, shapes: bool = True) -> ir.Model:
    """A copy of ``model`` (the one ``plan`` was discovered on) with only the ``keep`` channels."""
    new = copy_model(model)
    graph = new.graph
    nodes = list(graph)
    names = Names(new)
    for edit in plan.edits:
        node = nodes[edit.node]
        idx = indices(plan, edit.layout, keep)
        if edit.kind == "group":
            node.attributes["group"] = ir.AttrInt64("group", int(idx.size))
            continue
        if edit.kind == "grouped":
            set_const(node, edit.index, _grouped(const(node.inputs[edit.index]), idx, edit), names)
            continue
        if edit.kind == "split":
            _split(node, edit, plan, keep, names, node.version or default_opset(new) or 13)
            continue
        value = node.inputs[edit.index]
        array = const(value)
        if edit.kind == "reshape":
            array = np.array(array, copy=True)
            array[edit.axis] = idx.size
        elif array.shape[edit.axis] == idx.size:
            continue  # nothing removed here
        else:
            array = np.ascontiguousarray(np.take(array, idx, axis=edit.axis))
        set_const(node, edit.index, array, names)
    if shapes:
        reinfer(new)
    return new


def _grouped(w: np.ndarray, idx: np.ndarray, edit: Edit) -> np.ndarray:
    """A grouped Conv's weight ``[out, in / group, k..]`` with only the kept input channels (``idx``, positions in
    the whole input): each block of output filters keeps the positions its own input block kept."""
    group = edit.parts[0]
    run, rows = edit.layout.size // group, w.shape[0] // group
    blocks = [w[b * rows:(b + 1) * rows][:, idx[(idx >= b * run) & (idx < (b + 1) * run)] - b * run]
              for b in range(group)]
    return np.ascontiguousarray(np.concatenate(blocks, axis=0))


def _split(node: ir.Node, edit: Edit, plan: Plan, keep: Mapping[int, np.ndarray], names: Names,
           opset: int) -> None:
    """A Split's sizes become each output's kept share (an input from opset 13, an attribute before)."""
    sizes, k = [], 0
    for n in edit.parts:
        part = Layout(edit.layout.axis, edit.layout.rank, edit.layout.segs[k:k + n], edit.layout.inner)
        sizes.append(int(indices(plan, part, keep).size))
        k += n
    if "split" in node.attributes or opset < 13:
        node.attributes["split"] = ir.AttrInt64s("split", sizes)
        return
    node.attributes.pop("num_outputs", None)
    set_const(node, 1, np.array(sizes, np.int64), names)


def set_const(node: ir.Node, index: int, array: np.ndarray, names: Names) -> None:
    """``node.inputs[index]`` becomes a new initializer holding ``array`` (created when ``index`` is past the
    inputs); the old value goes when nothing reads it any more, and the new one takes its name."""
    value = node.inputs[index] if index < len(node.inputs) else None
    base = value.name if value is not None and value.name else (node.name or node.op_type) + "_bias"
    fresh = add_initializer(node.graph, names(base), np.asarray(array))
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, fresh)
    if value is not None and value.name in remove_dead([value]):
        names.release(fresh.name)
        fresh.name = value.name


def reinfer(model: ir.Model) -> None:
    """Forget every intermediate shape (channel counts changed) and infer them again."""
    outputs = {id(v) for v in model.graph.outputs}
    for node in model.graph:
        for v in node.outputs:
            if id(v) not in outputs:
                v.shape = None
    infer(model)
