"""What ``prune()`` returns and records in the pruned model's ``metadata_props``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GroupInfo", "PruneResult"]


@dataclass
class GroupInfo:
    """One channel group: ``size`` channels, ``kept`` after pruning, the layers producing them, and why it
    cannot be pruned (``blocked``, empty when it can)."""

    gid: int
    size: int
    kept: int
    producers: list[str]
    blocked: list[str]

    @property
    def prunable(self) -> bool:
        return not self.blocked

    def to_dict(self) -> dict:
        return {"group": self.gid, "channels": self.size, "kept": self.kept, "producers": self.producers,
                "prunable": self.prunable, "why_not": self.blocked}


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


@dataclass
class PruneResult:
    criterion: str
    scope: str
    target: str
    max_drop: float | None = None
    recovery: str = "none"
    recovered: int = 0  # layers whose statistics were re-estimated
    ratio: float = 0.0
    round_to: int = 1
    round_times: dict[int, float] = field(default_factory=dict)  # round_to="auto": pruned/unpruned latency
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    metric: str = ""
    eval_samples: int = 0
    score: Any = None  # slipway.quantize.evaluate.Score: unpruned ("fp32") vs pruned
    steps: list[tuple[float, float]] = field(default_factory=list)  # (ratio, drop) tried by the budget
    groups: list[GroupInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    model: Any = None
    path: Path | None = None
    verification: Any = None

    @property
    def macs_kept(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def speedup(self) -> float | None:
        if not self.latency_before_ms or not self.latency_after_ms:
            return None
        return self.latency_before_ms / self.latency_after_ms

    def removed(self) -> list[dict]:
        """The groups that lost channels: which layers, how many of how many."""
        return [{"producers": g.producers, "channels": g.size, "kept": g.kept} for g in self.groups if g.kept < g.size]

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion, "scope": self.scope, "ratio": _r(self.ratio), "round_to": self.round_to,
            "round_times": self.round_times, "recovery": self.recovery, "recovered_layers": self.recovered,
            "macs": {"before": self.macs_before, "after": self.macs_after, "kept": _r(self.macs_kept)},
            "params": {"before": self.params_before, "after": self.params_after},
            "latency_ms": {"target": self.target, "before": _r(self.latency_before_ms),
                           "after": _r(self.latency_after_ms), "speedup": _r(self.speedup, 3)},
            "accuracy": None if self.score is None else {**self.score.to_dict(), "samples": self.eval_samples,
                                                         "max_drop": self.max_drop},
            "budget_steps": [{"ratio": _r(r), "drop": _r(d)} for r, d in self.steps],
            "groups": [g.to_dict() for g in self.groups],
            "notes": self.notes, "warnings": self.warnings, "seconds": _r(self.seconds, 2),
            "path": str(self.path) if self.path else None,
            "verification": self.verification.to_dict() if self.verification is not None else None,
        }

    def metadata(self) -> dict[str, str]:
        """``slipway.prune.*`` entries: what was removed, MACs / parameters, accuracy and latency before and after."""
        d = self.to_dict()
        meta = {
            "slipway.prune.criterion": self.criterion,
            "slipway.prune.ratio": f"{self.ratio:.4g}",
            "slipway.prune.round_to": str(self.round_to),
            "slipway.prune.recovery": self.recovery,
            "slipway.prune.macs": json.dumps(d["macs"]),
            "slipway.prune.params": json.dumps(d["params"]),
            "slipway.prune.removed": json.dumps(self.removed(), separators=(",", ":")),
        }
        if self.latency_before_ms is not None:
            meta["slipway.prune.latency_ms"] = json.dumps(d["latency_ms"])
        if self.score is not None:
            meta["slipway.prune.accuracy"] = json.dumps(d["accuracy"])
        return meta
