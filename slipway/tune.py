"""``tune()``: find the fastest engine configuration of a model within an accuracy budget.

The search space is backend x precision x threads x batch x concurrency x engine settings,
searched coarse to fine:

1. **accuracy** - every (backend, precision) pair runs the same random inputs once; its outputs
   are compared with the FP32 reference (onnxruntime, its optimizations off). A pair whose
   ``max_rel`` error is over ``max_error`` (or whose user ``metric`` drop is over ``max_drop``)
   is out before anything is timed;
2. **coarse** - each surviving pair with its engine's defaults, all cores, every batch size of
   the objective (batch 1 for ``latency``; 1..``max_batch`` for ``throughput``), short runs;
3. **fine** - from the best two configurations, one knob at a time (threads, concurrency, each
   engine setting), keeping a change only when it measurably helps;
4. **final** - the best few are measured again with a longer budget; the winner is the best
   that meets ``max_latency_ms`` (on p90).

The winner is written beside the model as ``<model>.tune.json``; :func:`slipway.backends.load`
(given that path, or a model from :func:`slipway.load`) and the server apply it. Every measured
configuration is kept for the Pareto table (latency vs throughput).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slipway import backends as engines
from slipway import verify as v
from slipway.cpus import usable_cpus
from slipway.errors import UserError
from slipway.model import as_model, atomic_write_text
from slipway.perf.feeds import make_feeds
from slipway.perf.runner import Config, run_config, usable_backends
from slipway.perf.stats import Budget
from slipway.settings import digest, read_settings, settings_path
from slipway.verify.inputs import model_batch

__all__ = ["Candidate", "TuneResult", "tune", "settings_path", "read_settings", "pareto"]

Metric = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], float]  # (outputs, reference) -> drop
Progress = Callable[[int, int, str], None]


@dataclass
class Candidate:
    backend: str
    precision: str
    batch: int
    threads: int
    concurrency: int
    settings: dict[str, Any] = field(default_factory=dict)
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    rss_mb: float | None = None
    stage: str = ""
    error: float | None = None  # max_rel vs the FP32 reference (or the metric drop)
    feasible: bool = True
    note: str = ""

    @property
    def key(self) -> str:
        s = ",".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        return f"{self.backend}/{self.precision} b{self.batch} t{self.threads} c{self.concurrency} {s}".strip()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TuneResult:
    winner: Candidate
    candidates: list[Candidate]
    objective: str
    accuracy: dict[str, float | None]  # "backend/precision" -> error (None: not run)
    skipped: dict[str, str]
    path: Path | None = None

    def pareto(self) -> list[Candidate]:
        return pareto(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "winner": self.winner.to_dict(),
                "settings_file": os.fspath(self.path) if self.path else None,
                "accuracy": self.accuracy, "skipped": self.skipped,
                "pareto": [c.key for c in self.pareto()],
                "candidates": [c.to_dict() for c in self.candidates]}


def pareto(cands: Sequence[Candidate]) -> list[Candidate]:
    """Measured, feasible candidates that no other beats on both p50 latency and throughput."""
    pts = [c for c in cands if c.feasible and c.p50_ms is not None]
    return [c for c in pts if not any(o.p50_ms <= c.p50_ms and o.throughput >= c.throughput and
                                      (o.p50_ms < c.p50_ms or o.throughput > c.throughput) for o in pts)]


def tune(
    model: str | os.PathLike,
    *,
    objective: str = "latency",
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    max_latency_ms: float | None = None,
    max_error: float = 1e-2,
    metric: Metric | None = None,
    max_drop: float | None = None,
    max_batch: int = 32,
    batches: Sequence[int] | None = None,
    inputs: Any = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    time_per_config_s: float = 0.4,
    write: bool = True,
    progress: Progress | None = None,
) -> TuneResult:
    """Search configurations of ``model`` (an ONNX file) and write the winner beside it.

    ``batches`` fixes the batch sizes searched (default: 1 for latency, powers of two up to
    ``max_batch`` for throughput).
    """
    if objective not in ("latency", "throughput"):
        raise UserError(f"unknown objective {objective!r} (choose latency or throughput)")
    if max_latency_ms is not None and max_latency_ms <= 0:
        raise UserError(f"--max-latency-ms must be positive, got {max_latency_ms}")
    path = Path(model)
    m = as_model(path, validate=True)
    names, skipped = usable_backends(backends or [b for b in engines.BACKENDS])
    if not names:
        raise UserError("no backend is available here: " + "; ".join(f"{k}: {w}" for k, w in skipped.items()))
    batches = list(batches) if batches else _batches(m, objective, max_batch)
    feeds = make_feeds(m, batches, inputs, shapes)
    pairs = [(b, p) for b in names for p in _precisions(engines.get(b), m) if not precisions or p in precisions]
    accuracy = _accuracy(path, m, pairs, feeds[1] if 1 in feeds else feeds[batches[0]], max_error, metric, max_drop,
                         skipped)
    ok_pairs = [bp for bp in pairs if accuracy.get(f"{bp[0]}/{bp[1]}") is not None
                and f"{bp[0]}/{bp[1]}" not in skipped]
    if not ok_pairs:
        raise UserError("no backend/precision is within the accuracy budget: "
                        + "; ".join(f"{k}: {w}" for k, w in skipped.items()))
    search = _Search(path, feeds, objective, max_latency_ms, time_per_config_s, progress)
    for b, p in ok_pairs:
        for batch in batches:
            search.measure(Candidate(b, p, batch, 0, 1, stage="coarse"), accuracy[f"{b}/{p}"])
    for start in search.best(2):
        search.refine(start)
    if not search.best(1):
        fastest = min((c.p90_ms for c in search.all if c.p90_ms is not None), default=None)
        raise UserError("no configuration meets the limits"
                        + (f": the lowest p90 latency measured is {fastest:.3f} ms" if fastest is not None else ""))
    finals = [search.measure(replace(c, stage="final"), c.error, budget_scale=3.0) for c in search.best(3)]
    winner = min([c for c in finals if c.feasible] or finals, key=search.score)
    result = TuneResult(winner, search.all, objective, accuracy, skipped)
    if write:
        result.path = _write(path, winner, objective)
    return result


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                 "ConvInteger", "DynamicQuantizeLinear"}


def _precisions(backend, m) -> list[str]:
    """What a backend can run this model in: a quantized (Q/DQ) model runs as int8 only; a float
    model as fp32 or a reduced float precision the engine converts to itself (fp16/bf16) - never
    "int8", which needs a quantized model (``slipway quantize``)."""
    import onnx_ir as ir

    quantized = any(n.op_type in QUANTIZED_OPS for n in ir.traversal.RecursiveGraphIterator(m.graph))
    if quantized:
        return ["int8"] if "int8" in backend.precisions else []
    return [p for p in backend.precisions if p != "int8"]


def _batches(m, objective: str, max_batch: int) -> list[int]:
    b = model_batch(v.input_specs(m))
    if isinstance(b, int):
        return [b]
    if objective == "latency":
        return [1]
    out, n = [], 1
    while n <= max_batch:
        out.append(n)
        n *= 2
    return out


def _accuracy(path: Path, m, pairs, feeds, max_error, metric, max_drop, skipped) -> dict[str, float | None]:
    reference = v.ort_runner(m)(feeds)
    out: dict[str, float | None] = {}
    for b, p in pairs:
        key = f"{b}/{p}"
        try:
            sess = engines.get(b).load(path, engines.Options(precision=p))[0]
            got = sess.run(feeds)
            sess.close()
        except UserError as e:
            skipped[key] = str(e)
            out[key] = None
            continue
        if metric is not None:
            try:
                err = float(metric(got, reference))
            except Exception as e:
                raise UserError(f"the metric raised {type(e).__name__}: {e}") from None
            limit = max_drop if max_drop is not None else max_error
        else:
            checks = [v.compare(n, reference[n], got[n], atol=0.0, rtol=max_error) for n in reference]
            err = max((c.max_rel for c in checks), default=0.0)
            limit = max_error
        out[key] = err
        if err > limit:
            skipped[key] = f"error {err:.3g} over the budget {limit:g}"
    return out


class _Search:
    def __init__(self, path: Path, feeds, objective: str, max_latency_ms: float | None, seconds: float,
                 progress: Progress | None) -> None:
        self.path, self.feeds, self.objective = path, feeds, objective
        self.max_latency_ms, self.seconds, self.progress = max_latency_ms, seconds, progress
        self.all: list[Candidate] = []
        self.seen: dict[str, Candidate] = {}
        self.cores = usable_cpus()

    def score(self, c: Candidate) -> float:
        if c.p50_ms is None:
            return float("inf")
        return c.p50_ms if self.objective == "latency" else -c.throughput

    def best(self, n: int) -> list[Candidate]:
        ok = [c for c in self.seen.values() if c.feasible and c.p50_ms is not None]
        return sorted(ok, key=self.score)[:n]

    def measure(self, c: Candidate, error: float | None, budget_scale: float = 1.0) -> Candidate:
        if c.stage != "final" and c.key in self.seen:
            return self.seen[c.key]
        if self.progress:
            self.progress(len(self.all), 0, c.key)
        budget = Budget(warmup=3, min_time_s=self.seconds * budget_scale, max_time_s=self.seconds * budget_scale * 3,
                        min_runs=5)
        try:
            r = run_config(self.path, Config(c.backend, c.batch, c.threads, c.concurrency),
                           self.feeds[c.batch], budget, dict(c.settings), precision=c.precision)
        except UserError as e:
            c.feasible, c.note = False, str(e)
        else:
            c.p50_ms, c.p90_ms, c.p99_ms, c.throughput, c.rss_mb = r.p50_ms, r.p90_ms, r.p99_ms, r.throughput, r.rss_mb
            if self.max_latency_ms is not None and r.p90_ms > self.max_latency_ms:
                c.feasible, c.note = False, f"p90 {r.p90_ms:.2f} ms over --max-latency-ms"
        c.error = error
        self.all.append(c)
        self.seen[c.key] = c
        return c

    def refine(self, start: Candidate) -> None:
        """Coordinate descent: try each knob's values; move when the score improves by over 3%."""
        current = start
        backend = engines.get(start.backend)
        knobs: list[tuple[str, Sequence[Any]]] = [("threads", sorted({1, max(1, self.cores // 2), self.cores}))]
        if self.objective == "throughput":
            knobs.append(("concurrency", [1, 2, 4][: max(1, min(3, self.cores))]))
        for name, values in TUNABLE.get(start.backend.split("-")[0], {}).items():
            if name in backend.settings:
                knobs.append((name, values))
        for name, values in knobs:
            for value in values:
                trial = _with(current, name, value)
                if trial.key == current.key:
                    continue
                trial = self.measure(trial, current.error)
                if trial.feasible and self.score(trial) < self.score(current) * 0.97:
                    current = trial


# The engine settings worth searching (the rest of Backend.settings rarely matter on CPU).
TUNABLE: dict[str, dict[str, Sequence[Any]]] = {
    "ort": {"graph_optimization_level": ["all", "extended"], "spin": [True, False],
            "execution_mode": ["sequential", "parallel"]},
    "openvino": {"hint": ["latency", "throughput"], "streams": [1, 2]},
}


def _with(c: Candidate, name: str, value: Any) -> Candidate:
    if name in ("threads", "concurrency"):
        return replace(c, **{name: value}, stage="fine", p50_ms=None, settings=dict(c.settings))
    return replace(c, settings={**c.settings, name: value}, stage="fine", p50_ms=None)


def _write(path: Path, winner: Candidate, objective: str) -> Path:
    data = {
        "version": 1,
        "model": path.name,
        "model_sha256": digest(path),
        "objective": objective,
        "backend": winner.backend,
        "batch": winner.batch,
        "concurrency": winner.concurrency,
        "options": {"threads": winner.threads, "precision": winner.precision, "settings": winner.settings},
        "measured": {"p50_ms": winner.p50_ms, "p90_ms": winner.p90_ms, "p99_ms": winner.p99_ms,
                     "throughput": winner.throughput, "error": winner.error},
    }
    return atomic_write_text(settings_path(path), json.dumps(data, indent=2) + "\n")
