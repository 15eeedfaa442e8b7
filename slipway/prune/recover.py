"""Recovery without training: per-channel statistics from calibration data, and re-estimation.

Exported models carry BatchNorm folded into their convolutions: each Conv computes
``y = gamma * (z - mu) / sigma + beta`` with ``mu`` / ``sigma`` the statistics of its pre-BN output
``z`` on the training data. Pruning changes ``z`` (its inputs lost channels), so the baked ``mu`` and
``sigma`` are stale - the same reason "adaptive BN" (EagleEye) re-estimates BN statistics after
pruning. On a folded model the re-estimation is: for every convolution whose weights were cut (a
producer that lost output channels, or a consumer that lost input channels), measure the per-channel
mean and standard deviation of its output on calibration data in the unpruned model (``m_o``, ``s_o``)
and in the pruned one (``m_p``, ``s_p``), and fold ``y' = (y - m_p) * s_o / s_p + m_o`` into its weight and
bias (``mode="stats"``), or only the mean shift ``y' = y + m_o - m_p`` (``mode="bias"``: bias
compensation). Layers are corrected in dependency order - those whose inputs no other corrected layer
feeds first - so each is measured after everything upstream was corrected (one pass over the data per
level). The scale is clipped to ``[0, MAX_SCALE]``; a ``MatMul`` (no bias input) is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slipway.graph import Names, attr_int, const, copy_model
from slipway.prune.plan import Plan
from slipway.prune.surgery import set_const
from slipway.verify.engine import ort_runner
from slipway.verify.inputs import Feeds

__all__ = ["MODES", "MAX_SCALE", "Stats", "channel_stats", "activations", "reference_stats", "recover"]

MODES = ("stats", "bias", "none")
MAX_SCALE = 4.0


@dataclass
class Stats:
    mean: np.ndarray
    std: np.ndarray
    mean_abs: np.ndarray


def channel_stats(model: ir.Model, feeds: Iterable[Feeds], wanted: Mapping[str, int]) -> dict[str, Stats]:
    """Per-channel mean, std and mean |x| of the values ``wanted`` (name -> channel axis) over ``feeds``."""
    copy = copy_model(model)
    values = {v.name: v for v in copy.graph.inputs}
    values.update({v.name: v for n in copy.graph for v in n.outputs})
    present = {v.name for v in copy.graph.outputs}
    for name in wanted:
        if name not in present:
            copy.graph.outputs.append(values[name])
    # "basic": at "all", onnxruntime 1.32 fuses a Conv into the residual Add after it even when the Conv's output
    # is a graph output, then fails to load the model
    run = ort_runner(copy, optimization="basic")
    sums: dict[str, list[np.ndarray | int]] = {}
    for f in feeds:
        out = run(f)
        for name, axis in wanted.items():
            x = np.moveaxis(np.asarray(out[name], dtype=np.float64), axis, 0).reshape(out[name].shape[axis], -1)
            acc = sums.setdefault(name, [0.0, 0.0, 0.0, 0])
            acc[0] = acc[0] + x.sum(axis=1)
            acc[1] = acc[1] + (x * x).sum(axis=1)
            acc[2] = acc[2] + np.abs(x).sum(axis=1)
            acc[3] += x.shape[1]
    stats = {}
    for name, (s, s2, sa, n) in sums.items():
        mean = s / n
        stats[name] = Stats(mean, np.sqrt(np.maximum(s2 / n - mean * mean, 0.0)), sa / n)
    return stats


def activations(model: ir.Model, plan: Plan, feeds: list[Feeds]) -> dict[int, np.ndarray]:
    """The activation criterion: per prunable group, each channel's mean |x| where weights read it."""
    groups = plan.prunable()
    wanted = {name: axis for g in groups for name, axis, _, _ in g.values}
    stats = channel_stats(model, feeds, wanted)
    out = {}
    for g in groups:
        parts = []
        for name, _, offset, inner in g.values:
            a = stats[name].mean_abs[offset:offset + g.size * inner].reshape(g.size, inner).mean(axis=1)
            parts.append(a / a.mean() if a.mean() > 0 else np.ones(g.size))
        out[g.gid] = sum(parts) / len(parts) if parts else np.ones(g.size)
    return out


@dataclass
class _Target:
    output: str
    axis: int
    kept: np.ndarray | None  # the original channels it keeps (None: all)


def reference_stats(source: ir.Model, plan: Plan, feeds: list[Feeds]) -> dict[str, Stats]:
    """The unpruned model's statistics at every layer any pruning could cut (measured once, shared by all tries)."""
    cut = {g.gid for g in plan.prunable()}
    return channel_stats(source, feeds, {t.output: t.axis for t in _targets(source, plan, {}, cut)})


def _targets(source: ir.Model, plan: Plan, keep: Mapping[int, np.ndarray], cut: set[int]) -> list[_Target]:
    """The layers a pruning cuts: producers of the ``cut`` groups (their kept channels) and consumers."""
    nodes = list(source.graph)
    found: dict[str, _Target] = {}
    for g in plan.prunable():
        if g.gid not in cut:
            continue
        for p in g.producers:
            found[p.output] = _Target(p.output, p.out_axis, keep.get(g.gid))
    for edit in plan.edits:  # consumers whose weights lost input channels
        if edit.kind in ("slice", "grouped") and any(plan.root(gid) in cut for gid, _ in edit.layout.segs):
            for i, out, axis in plan.consumers:
                if i == edit.node and out not in found:
                    found[out] = _Target(out, axis, None)
    order = {v.name: i for i, n in enumerate(nodes) for v in n.outputs}
    return sorted((t for t in found.values() if nodes[order[t.output]].op_type in ("Conv", "Gemm")),
                  key=lambda t: order[t.output]) if found else []


def _levels(model: ir.Model, targets: list[_Target]) -> list[list[_Target]]:
    """Targets grouped so that none depends on another of its own level or a later one."""
    names = {t.output for t in targets}
    depth: dict[str, int] = {}
    level_of: dict[str, int] = {}
    for node in model.graph:
        d = max((depth.get(v.name, 0) for v in node.inputs if v is not None), default=0)
        for v in node.outputs:
            if v.name in names:
                level_of[v.name] = d
                depth[v.name] = d + 1
            else:
                depth[v.name] = d
    levels: dict[int, list[_Target]] = {}
    for t in targets:
        levels.setdefault(level_of[t.output], []).append(t)
    return [levels[k] for k in sorted(levels)]


def recover(source: ir.Model, pruned: ir.Model, plan: Plan, keep: Mapping[int, np.ndarray], feeds: list[Feeds],
            mode: str = "stats", reference: Mapping[str, Stats] | None = None) -> int:
    """Correct ``pruned`` in place (see the module); returns how many layers were corrected."""
    if mode == "none" or not feeds:
        return 0
    targets = _targets(source, plan, keep, {gid for gid, k in keep.items() if k.size < plan.groups[gid].size})
    if not targets:
        return 0
    if reference is None:
        reference = channel_stats(source, feeds, {t.output: t.axis for t in targets})
    by_output = {v.name: n for n in pruned.graph for v in n.outputs}
    names = Names(pruned)
    done = 0
    for level in _levels(pruned, targets):
        now = channel_stats(pruned, feeds, {t.output: t.axis for t in level})
        for t in level:
            ref = reference[t.output]
            m_o, s_o = (ref.mean, ref.std) if t.kept is None else (ref.mean[t.kept], ref.std[t.kept])
            m_p, s_p = now[t.output].mean, now[t.output].std
            scale = np.ones_like(m_p) if mode == "bias" else np.clip(
                np.where(s_p > 1e-12, s_o / np.maximum(s_p, 1e-12), 1.0), 0.0, MAX_SCALE)
            shift = m_o - scale * m_p
            done += _fold(by_output[t.output], scale, shift, names)
    return done


def _fold(node: ir.Node, scale: np.ndarray, shift: np.ndarray, names: Names) -> int:
    """``node``'s output becomes ``scale * y + shift`` per channel (Conv / Gemm weights and bias)."""
    w = const(node.inputs[1])
    if node.op_type == "Conv":
        axis = 0
    elif node.op_type == "Gemm":
        axis = 0 if attr_int(node, "transB", 0) else 1
        if attr_int(node, "transA", 0) or w.ndim != 2:
            return 0
    else:
        return 0
    n = w.shape[axis]
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    b = np.zeros(n) if bias_value is None else const(bias_value)
    if b is None or b.size not in (1, n):
        return 0
    dtype = w.dtype
    shape = [1] * w.ndim
    shape[axis] = n
    w_new = (w.astype(np.float64) * scale.reshape(shape)).astype(dtype)
    b_new = (np.broadcast_to(np.asarray(b, np.float64).ravel(), (n,)) * scale + shift).astype(dtype)
    set_const(node, 1, w_new, names)
    set_const(node, 2, b_new, names)
    return 1
