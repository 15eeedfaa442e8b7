"""What the fusion passes (batchnorm, conv_affine, pad_conv, repvgg, gemm, gelu, transpose,
qat_batchnorm) share: :class:`FusionPass`, :class:`Skip` and the float64 weight arithmetic.
Graph editing itself (constants, names, initializers, replacement) is :mod:`slipway.graph`.

A fusion pass looks at one node at a time: its ``match`` returns a plan (applied by ``run``), a
:class:`Skip` (a near miss: why it did not fuse, printed by ``explain`` and, when the user would
expect the fusion, warned about by ``run``) or ``None`` (not a candidate). Constants are read with
``.numpy()`` (external and lazy tensors work), arithmetic is done in float64 and cast back to the
weight's own dtype, new weights become new initializers and old ones are dropped once unused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slipway.graph import Names
from slipway.passes.base import Pass, PassResult


@dataclass
class Skip:
    """Why a candidate was not rewritten. ``warn``: the user would expect it to fuse."""

    reason: str
    warn: bool = False


def f64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def per_channel(array: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``array`` as a [channels] vector when broadcasting it against an [N, channels, ...] tensor
    of ``rank`` dims only varies along axis 1 (scalar, [C,1,1], [1,C,1,1], ...) and does not grow
    the tensor; None otherwise."""
    if array.ndim > rank:
        return None
    shape = (1,) * (rank - array.ndim) + array.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(f64(array).reshape(-1), (channels,)).copy()


def scale_outputs(op_type: str, w: np.ndarray, s: np.ndarray, group: int = 1, trans_b: int = 0) -> np.ndarray:
    """``w`` (float64) with output channel ``o`` multiplied by ``s[o]`` for Conv ([O, I/g, k..]),
    ConvTranspose ([I, O/g, k..]: the output channel is group x dim 1) and Gemm ([K, N] or [N, K])."""
    w = f64(w)
    if op_type == "Conv":
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    if op_type == "ConvTranspose":
        cin, opg = w.shape[0], w.shape[1]
        grouped = w.reshape((group, cin // group, opg) + w.shape[2:])
        return (grouped * s.reshape((group, 1, opg) + (1,) * (w.ndim - 2))).reshape(w.shape)
    return w * (s[:, None] if trans_b else s[None, :])


@dataclass
class Fuse:
    """A matched rewrite: ``apply(graph, names)`` performs it; ``rule`` is what it counts as."""

    rule: str
    apply: Callable[[ir.Graph, Names], None]


Match = Fuse | Skip | None


class FusionPass(Pass):
    """A pass that sweeps every graph (subgraphs included) calling :meth:`match` on each node and
    applying what matched, until a sweep changes nothing. Warnings come from that last sweep, so a
    near miss that a later rewrite resolved is not reported."""

    def match(self, node: ir.Node) -> Match:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, model: ir.Model) -> PassResult:
        changes: dict[str, int] = {}
        warnings: list[str] = []
        names = Names(model)
        for graph in model.graphs():
            while True:
                sweep_warnings: list[str] = []
                applied = 0
                for node in list(graph):
                    if node.graph is not graph:  # removed by an earlier rewrite in this sweep
                        continue
                    found = self.match(node)
                    if isinstance(found, Fuse):
                        found.apply(graph, names)
                        changes[found.rule] = changes.get(found.rule, 0) + 1
                        applied += 1
                    elif isinstance(found, Skip) and found.warn:
                        sweep_warnings.append(f"{self.name}: {found.reason}")
                if not applied:
                    warnings.extend(sweep_warnings)
                    break
        return PassResult(model, bool(changes), changes, list(dict.fromkeys(warnings)))

    def explain(self, model: ir.Model) -> list[str]:
        lines = []
        for graph in model.graphs():
            for node in graph:
                found = self.match(node)
                if isinstance(found, Skip):
                    lines.append(f"{self.name}: {found.reason}")
        return list(dict.fromkeys(lines))
