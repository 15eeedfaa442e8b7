"""What a comparison returns: per-tensor differences, the first divergent node, bisection steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TensorDiff", "Divergence", "CompareReport", "BisectStep", "BisectReport"]


def json_float(x: float) -> float | str:
    """Finite floats as they are; ``inf``, ``-inf`` and ``nan`` as strings (strict JSON has none)."""
    return float(x) if np.isfinite(x) else str(float(x))


@dataclass
class TensorDiff:
    """One tensor of A compared with its counterpart in B.

    ``name`` is the tensor's name in A, ``b_name`` its counterpart's name in B; ``via`` says how
    they were matched: ``""`` by name, else the ops walked in B (``"Cast"``, ``"Q/DQ"``, ...).
    ``node`` / ``op_type`` name the node of A that produces the tensor (``""`` / ``"(input)"``
    for a graph input, matched to what B computes from it, e.g. its quantized copy).
    """

    name: str
    node: str
    op_type: str
    b_name: str
    via: str
    shape_a: list[int]
    shape_b: list[int]
    dtype_a: str
    dtype_b: str
    max_abs: float
    max_rel: float  # max_abs / max |ref|
    cosine: float
    snr_db: float  # 10 log10(sum ref^2 / sum (ref - x)^2); inf when identical
    allowed: float  # atol + rtol * max |ref|
    ok: bool

    @property
    def shape_mismatch(self) -> bool:
        return self.shape_a != self.shape_b

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "node": self.node, "op_type": self.op_type, "b_name": self.b_name,
            "via": self.via, "shape_a": self.shape_a, "shape_b": self.shape_b, "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b, "max_abs": json_float(self.max_abs), "max_rel": json_float(self.max_rel),
            "cosine": json_float(self.cosine), "snr_db": json_float(self.snr_db),
            "allowed": json_float(self.allowed), "ok": self.ok, "shape_mismatch": self.shape_mismatch,
        }


@dataclass
class Divergence:
    """The first node of A (in topological order) whose output is past tolerance in B."""

    name: str  # node name
    op_type: str
    tensor: str  # the output of that node that diverged
    diff: TensorDiff

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "tensor": self.tensor,
                "max_abs": json_float(self.diff.max_abs), "max_rel": json_float(self.diff.max_rel),
                "cosine": json_float(self.diff.cosine), "snr_db": json_float(self.diff.snr_db)}


@dataclass
class CompareReport:
    """Layer-by-layer comparison of run A (the reference) and run B.

    ``layers`` holds every matched tensor in A's topological order, from runs of both models with
    every intermediate exposed as an output; ``outputs`` compares the final outputs of the models
    run as they are (exposing intermediates can stop an engine from fusing nodes, so only these
    show the effect of engine fusions).
    """

    a: str  # what ran as A: "<model> on <backend> (<options>)"
    b: str
    atol: float
    rtol: float
    inputs: dict[str, list[int]]  # the input shapes the models ran on
    layers: list[TensorDiff]
    outputs: list[TensorDiff]
    unmatched_a: list[str]  # float tensors of A with no counterpart in B
    unmatched_b: list[str]  # float tensors of B with no counterpart in A
    first_divergent_node: Divergence | None
    notes: list[str] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        """True when a layer or a final output is past tolerance."""
        return self.first_divergent_node is not None or any(not o.ok for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergent_node
        return {
            "a": self.a, "b": self.b, "atol": self.atol, "rtol": self.rtol, "inputs": self.inputs,
            "diverged": self.diverged,
            "first_divergent_node": first.to_dict() if first else None,
            "layers": [t.to_dict() for t in self.layers],
            "outputs": [t.to_dict() for t in self.outputs],
            "unmatched": {"a": self.unmatched_a, "b": self.unmatched_b},
            "notes": self.notes,
        }


@dataclass
class BisectStep:
    """One pass applied during :func:`slipway.compare.bisect`; errors are of the final outputs."""

    name: str
    modified: bool
    max_abs: float  # worst final-output max_abs against the original model (carried over when unmodified)
    max_rel: float
    ok: bool
    error: str = ""  # one line when the pass raised

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "modified": self.modified, "max_abs": json_float(self.max_abs),
                "max_rel": json_float(self.max_rel), "ok": self.ok, "error": self.error}


@dataclass
class BisectReport:
    """Result of bisecting passes: the first pass whose result diverges and its layer report."""

    steps: list[BisectStep]
    culprit: str | None  # name of the first diverging (or raising) pass, None when all agree
    index: int | None  # its position in the pass list
    report: CompareReport | None  # the model before that pass vs after it, layer by layer

    def to_dict(self) -> dict[str, Any]:
        return {"culprit": self.culprit, "index": self.index, "steps": [s.to_dict() for s in self.steps],
                "report": self.report.to_dict() if self.report else None}
