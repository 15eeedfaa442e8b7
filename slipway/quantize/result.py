"""What :func:`slipway.quantize.quantize` returns: the model, its scores, the float layers, the timings."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway.quantize.evaluate import Metric, Score
from slipway.quantize.sensitivity import LayerSensitivity
from slipway.quantize.speed import SpeedReport

__all__ = ["FloatLayer", "Step", "QuantizeResult"]


@dataclass
class FloatLayer:
    """A layer the accuracy budget kept in float, and the numbers that chose it."""

    node: str
    op_type: str
    precision: str  # "fp32" | "fp16"
    rank: int
    local_snr_db: float
    snr_db: float
    why: str

    @classmethod
    def of(cls, s: LayerSensitivity, precision: str, layers: int) -> FloatLayer:
        why = (f"most sensitive #{s.rank} of {layers}: local SNR {s.local_snr_db:.1f} dB, "
               f"accumulated SNR {s.snr_db:.1f} dB")
        return cls(s.node, s.op_type, precision, s.rank, s.local_snr_db, s.snr_db, why)

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "precision": self.precision, "rank": self.rank,
                "local_snr_db": _r(self.local_snr_db), "snr_db": _r(self.snr_db), "why": self.why}


@dataclass
class Step:
    """One evaluation of the accuracy-budget search: ``layers`` most sensitive layers in float."""

    layers: int
    drop: float
    value: float

    def to_dict(self) -> dict:
        return {"float_layers": self.layers, "drop": _r(self.drop), "value": _r(self.value)}


def _r(x: float | None, digits: int = 4) -> float | str | None:
    if x is None:
        return None
    return round(float(x), digits) if math.isfinite(x) else str(x)


@dataclass
class QuantizeResult:
    precision: str
    method: str
    target: str
    engine: str = ""  # where it was evaluated and timed (target, or openvino for bf16 on "ort")
    model: ir.Model | None = None
    path: Path | None = None
    metric: Metric | None = None
    score: Score | None = None
    max_drop: float | None = None
    eval_samples: int = 0
    eval_source: str = ""
    calib_samples: int = 0
    formats: dict[str, Any] = field(default_factory=dict)  # quantize_qdq's format options
    quant: Any = None  # qdq.QuantReport (int8)
    precision_report: Any = None  # precision.PrecisionReport (fp16 / bf16)
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    float_layers: list[FloatLayer] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    speed: SpeedReport | None = None
    verification: Any = None  # convert.verify.VerifyReport
    verify_feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def all_warnings(self) -> list[str]:
        """The pipeline's warnings and the speed guard's."""
        return self.warnings + (self.speed.warnings if self.speed else [])

    @property
    def labelled(self) -> bool:
        return self.metric is not None and self.metric.kind in ("top1", "custom")

    def nodes_quantized(self) -> int:
        return len(self.quant.quantized) if self.quant is not None else 0

    def accuracy(self) -> dict | None:
        if not self.labelled or self.score is None:
            return None
        return {"metric": self.score.metric, "fp32": _r(self.score.fp32), "quantized": _r(self.score.value),
                "drop": _r(self.score.drop)}

    def to_dict(self) -> dict[str, Any]:
        s, sp = self.score, self.speed
        return {
            "precision": self.precision,
            "method": self.method or None,
            "target": self.target,
            "engine": self.engine,
            "metric": s.metric if s else None,
            "accuracy": self.accuracy(),
            "agreement": _r(s.agreement) if s else None,
            "drop": _r(s.drop) if s else None,
            "max_drop": self.max_drop,
            "snr_db": _r(s.snr_db) if s else None,
            "cosine": _r(s.cosine, 6) if s else None,
            "latency_fp32_ms": _r(sp.latency_fp32_ms) if sp else None,
            "latency_quant_ms": _r(sp.latency_quant_ms) if sp else None,
            "speedup": sp.to_dict()["speedup"] if sp else None,
            "int8_isa": sp.isa if sp else None,
            "float_layers": [f.to_dict() for f in self.float_layers],
            "nodes_quantized": self.nodes_quantized(),
            "formats": dict(self.formats) or None,
            "quantized": dict(self.quant.counts) if self.quant is not None else None,
            "not_quantized": dict(self.quant.skipped) if self.quant is not None else None,
            "sensitivity": [x.to_dict() for x in self.sensitivity],
            "budget_steps": [x.to_dict() for x in self.steps],
            "eval_samples": self.eval_samples,
            "eval_source": self.eval_source,
            "calib_samples": self.calib_samples,
            "verification": self.verification.to_dict() if self.verification is not None else None,
            "warnings": self.all_warnings(),
            "notes": self.notes,
            "output": os.fspath(self.path) if self.path else None,
            "seconds": round(self.seconds, 3),
        }

    def metadata(self) -> dict[str, str]:
        """``metadata_props`` entries (prefix ``slipway.quantize.``) describing the result."""
        p = "slipway.quantize."
        s, sp = self.score, self.speed
        meta = {p + "precision": self.precision, p + "target": self.target}
        if self.method:
            meta[p + "method"] = self.method
        if self.quant is not None:
            meta[p + "nodes_quantized"] = str(self.nodes_quantized())
        if self.formats:
            f = self.formats
            meta[p + "formats"] = (f"activations {f['activation_type']} "
                                   f"{'symmetric' if f['symmetric_activations'] else 'asymmetric'}, "
                                   f"weights {'per-channel' if f['per_channel'] else 'per-tensor'} "
                                   f"{'7-bit' if f['reduce_range'] else '8-bit'}")
        if s is not None:
            meta[p + "metric"] = s.metric
            meta[p + "score"] = f"fp32 {s.fp32:.4f} -> {s.value:.4f} (drop {s.drop:.4f})"
            meta[p + "snr_db"] = f"{s.snr_db:.2f}"
            if s.agreement is not None:
                meta[p + "agreement"] = f"{s.agreement:.4f}"
            meta[p + "eval_samples"] = str(self.eval_samples)
        if self.max_drop is not None:
            meta[p + "max_drop"] = f"{self.max_drop:g}"
        meta[p + "float_layers"] = ", ".join(f"{f.node} ({f.precision})" for f in self.float_layers) or "none"
        if sp is not None and sp.latency_fp32_ms is not None:
            meta[p + "latency_ms"] = f"fp32 {sp.latency_fp32_ms:.4f} -> {sp.latency_quant_ms:.4f} on {self.engine}"
            meta[p + "int8_isa"] = sp.isa
        return meta
