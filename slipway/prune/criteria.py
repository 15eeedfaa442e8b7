"""Channel importance: one score per channel of a group (higher = keep), and the kept channels per group.

Criteria (``criterion=``):

- ``l1`` / ``l2`` - the norm of each producer's filter (the weight slice of that output channel);
- ``fpgm`` - filter pruning via the geometric median: a filter's summed distance to the others in its
  layer; the filters nearest the median (lowest sum) are the most replaceable;
- ``bn-scale`` - network slimming: ``|gamma|`` of the BatchNormalization nodes on the group's channels
  (a model whose BatchNorm is folded into its convolutions has none: an error names the others);
- ``activation`` - the mean ``|x|`` of each channel where a weight reads it, over the calibration data.

A group's score sums its members' scores, each divided by its own mean (so that a residual stream of
three convolutions weighs each alike). Selection is ``uniform`` (every group keeps ``1 - ratio`` of its
channels) or ``global`` (one threshold over all groups' normalized scores, each group keeping at least
:data:`GLOBAL_FLOOR` of its channels); kept counts round up to a multiple of ``round_to``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from slipway.errors import UserError
from slipway.graph import const
from slipway.prune.plan import Group, Plan

__all__ = ["CRITERIA", "SCOPES", "GLOBAL_FLOOR", "scores", "select", "kept_count"]

CRITERIA = ("l1", "l2", "fpgm", "bn-scale", "activation")
SCOPES = ("uniform", "global")
GLOBAL_FLOOR = 0.1  # a group keeps at least this share of its channels under global selection


def _filters(nodes: list[ir.Node], group: Group) -> list[np.ndarray]:
    """Each producer's weight as ``[channels, -1]`` (float64), output channel first."""
    out = []
    for p in group.producers:
        w = np.asarray(const(nodes[p.node].inputs[p.weight]), dtype=np.float64)
        out.append(np.moveaxis(w, p.axis, 0).reshape(w.shape[p.axis], -1))
    return out


def _norm(x: np.ndarray) -> np.ndarray:
    mean = float(np.mean(x)) if x.size else 0.0
    return x / mean if mean > 0 else np.ones_like(x)


def _fpgm(f: np.ndarray) -> np.ndarray:
    sq = (f * f).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
    return np.sqrt(d2).sum(axis=1)


def scores(model: ir.Model, plan: Plan, criterion: str,
           activations: Mapping[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Per prunable group (root id), one normalized score per channel."""
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")
    nodes = list(model.graph)
    groups = plan.prunable()
    if criterion == "bn-scale" and not any(g.bn for g in groups):
        raise UserError("criterion bn-scale needs BatchNormalization nodes on prunable channels, and this model has "
                        "none (exporters fold BatchNorm into the convolutions): use l1, l2, fpgm or activation")
    out: dict[int, np.ndarray] = {}
    for g in groups:
        if criterion == "activation":
            if activations is None or g.gid not in activations:
                raise UserError("criterion activation needs calibration data (calib=, --calib)")
            out[g.gid] = _norm(np.asarray(activations[g.gid], dtype=np.float64))
            continue
        if criterion == "bn-scale" and g.bn:
            parts = [np.abs(np.asarray(const(nodes[i].inputs[1]), dtype=np.float64)) for i, _ in g.bn]
            out[g.gid] = sum(_norm(p) for p in parts if p.size == g.size) / len(parts)
            continue
        per = []
        for f in _filters(nodes, g):
            if criterion == "l2":
                per.append(np.sqrt((f * f).sum(axis=1)))
            elif criterion == "fpgm":
                per.append(_fpgm(f))
            else:  # l1, and bn-scale for a group without BatchNorm
                per.append(np.abs(f).sum(axis=1))
        out[g.gid] = sum(_norm(p) for p in per) / len(per)
    return out


def kept_count(size: int, ratio: float, round_to: int = 1) -> int:
    """Channels a group of ``size`` keeps at ``ratio`` removed: at least 1, rounded up to ``round_to``."""
    keep = max(1, int(round(size * (1.0 - ratio))))
    if round_to > 1:
        keep = min(size, int(math.ceil(keep / round_to)) * round_to)
    return keep


def select(score: Mapping[int, np.ndarray], ratio: float, scope: str = "uniform", round_to: int = 1,
           blocks: Mapping[int, int] | None = None) -> dict[int, np.ndarray]:
    """The sorted indices each group keeps; a group read by a grouped Conv (``blocks[gid] > 1``) keeps as
    many in each of its equal runs (the best of each run)."""
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r} (choose from {', '.join(SCOPES)})")
    blocks = blocks or {}
    counts: dict[int, int] = {}
    if scope == "uniform":
        counts = {gid: kept_count(s.size, ratio, round_to) for gid, s in score.items()}
    else:
        allv = np.concatenate(list(score.values())) if score else np.zeros(0)
        cut = float(np.quantile(allv, ratio)) if allv.size else 0.0
        for gid, s in score.items():
            floor = max(1, int(math.ceil(s.size * GLOBAL_FLOOR)))
            counts[gid] = kept_count(s.size, 1.0 - max(floor, int((s > cut).sum())) / s.size, round_to)
    out = {}
    for gid, n in counts.items():
        s, b = score[gid], blocks.get(gid, 1)
        if b == 1:
            out[gid] = np.sort(np.argsort(-s, kind="stable")[:n])
            continue
        run = s.size // b
        k = max(1, min(run, int(round(n / b))))
        out[gid] = np.sort(np.concatenate([i * run + np.argsort(-s[i * run:(i + 1) * run], kind="stable")[:k]
                                           for i in range(b)]))
    return out
