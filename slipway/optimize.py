"""``optimize()``: verified graph optimization that is never slower on the target engine.

The pipeline, in order:

1. **passes** - the chosen passes (:data:`slipway.passes.manager.DEFAULT_ORDER` by default) run
   to a fixed point under a :class:`PassManager`; with ``verify_each`` every modifying pass is
   checked against the model before it, which names the pass that broke the numbers;
2. **verify** - the result is compared with the input in onnxruntime (its optimizations off) at
   two or more batch sizes when dims are dynamic; a mismatch raises and nothing is written;
3. **never slower** - the result and the input are timed alternately on the target engine with
   its own optimizations on (:mod:`slipway.perf.ab`). If the result is slower, it is rebuilt without the "risky" passes
   (layout and op-choice rewrites whose effect depends on the engine); if that is still slower,
   the input is kept. The latencies and the decision are reported;
4. **write** - the verification and the pass counts go into ``metadata_props`` and the model is
   written atomically.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway import verify as v
from slipway.errors import UserError
from slipway.model import ModelLike, as_model, check_output
from slipway.passes import manager as pm
from slipway.perf.ab import SIGN_TEST_SHARE, TARGETS, Speed, latency, latency_compare
from slipway.verify.probe import Plan, hinted_specs, plan_inputs

__all__ = ["OptimizeResult", "optimize", "TARGETS"]



@dataclass
class OptimizeResult:
    model: ir.Model
    path: os.PathLike | None
    nodes_before: int
    nodes_after: int
    verification: v.VerifyReport | None
    passes: pm.ManagerReport
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    decision: str = ""  # what the never-slower check kept, in words
    dropped: list[str] = field(default_factory=list)  # passes dropped because they made it slower
    explain: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def warnings(self) -> list[str]:
        return self.passes.warnings

    def to_dict(self) -> dict[str, Any]:
        ver = self.verification
        worst_abs = max((o.max_abs for o in ver.outputs), default=0.0) if ver else None
        worst_rel = max((o.max_rel for o in ver.outputs), default=0.0) if ver else None
        return {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "verification": {"ok": ver.ok if ver else None, "max_abs": worst_abs, "max_rel": worst_rel,
                             "batch_sizes": ver.batch_sizes if ver else [],
                             "runs": ver.runs if ver else [], "notes": ver.notes if ver else [],
                             "failure": ver.failure if ver else ""},
            "latency_before_ms": _round(self.latency_before_ms),
            "latency_after_ms": _round(self.latency_after_ms),
            "decision": self.decision,
            "dropped": self.dropped,
            "passes": {name: r.total for name, r in self.passes.records.items()},
            "pass_details": self.passes.to_dict(),
            "iterations": self.passes.iterations,
            "warnings": self.warnings,
            "explain": self.explain,
            "output": os.fspath(self.path) if self.path else None,
            "seconds": round(self.seconds, 3),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def optimize(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    *,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    target: str = "ort",
    target_opset: int | None = None,
    verify_each: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
    batch_sizes: Sequence[int] = v.DEFAULT_BATCH_SIZES,
    dim_sizes: Mapping[str, Sequence[int]] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    allow_growth: bool = False,
    speed_check: bool = True,
    speed_tolerance: float = 0.01,
    speed_budget_s: float = 2.0,
    explain: bool = False,
    progress: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Optimize ``model`` (a path, ModelProto or ir.Model; the input is not modified).

    Verification and timing run on ``data`` (arrays or an ``.npz`` file), else at ``shapes``
    (``{input: dims}``), else at ``dim_sizes[name]`` for the dynamic dims, else at sizes derived
    from the model (:func:`slipway.verify.probe.plan_inputs`), plus a second batch size where
    the batch dim is dynamic.
    Tolerances default to atol 1e-4 / rtol 1e-3, and for a quantized (Q/DQ) model to 1e-3 / 2e-2:
    re-quantizing a folded weight may move an output by one quantization step.
    """
    t0 = time.perf_counter()
    if target not in TARGETS:
        raise UserError(f"unknown --target {target!r} (choose from {', '.join(TARGETS)})")
    source = as_model(model, validate=True)
    check_output(output, model, create_dirs=True)
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                    for n in ir.traversal.RecursiveGraphIterator(source.graph))
    atol = atol if atol is not None else (1e-3 if quantized else 1e-4)
    rtol = rtol if rtol is not None else (2e-2 if quantized else 1e-3)
    original = pm.snapshot(source)
    options = {"target": target, "target_opset": target_opset, "allow_growth": allow_growth}
    chosen = pm.make_passes(passes, skip, **options)
    plan = input_plan(source, shapes=shapes, data=data, dim_sizes=dim_sizes, batch_sizes=batch_sizes)

    def check(before: ir.Model, after: ir.Model) -> str:
        report = v.verify_onnx(before, after, atol=atol, rtol=rtol, batch_sizes=batch_sizes, plan=plan)
        return "" if report.ok else (report.failure or next(o.note for o in report.outputs if not o.ok))

    def run(selected: list) -> tuple[ir.Model, pm.ManagerReport]:
        manager = pm.PassManager(selected, check=check if verify_each else None, progress=progress)
        return manager(pm.restore(original))

    candidate, report = run(chosen)
    why = pm.PassManager(chosen).explain(pm.restore(original)) if explain else []
    if progress:
        progress("verifying")
    verification = v.verify_onnx(source, candidate, atol=atol, rtol=rtol, batch_sizes=batch_sizes, plan=plan)
    verification.raise_if_failed()

    result = OptimizeResult(candidate, None, count_nodes(source), count_nodes(candidate), verification, report,
                            explain=why)
    if speed_check and not any(r.total for r in report.records.values()):
        result.latency_before_ms = result.latency_after_ms = latency(source, TARGETS[target], feeds=plan.first)
        result.decision = "nothing to change"
    elif speed_check:
        timing = Timing(target, plan.first, speed_tolerance, speed_budget_s)
        _never_slower(result, source, chosen, run, timing, progress)
        if result.model is source:
            result.model = pm.restore(original)
        if result.model is not candidate:
            result.verification = v.verify_onnx(source, result.model, atol=atol, rtol=rtol,
                                                batch_sizes=batch_sizes, plan=plan)
            result.verification.raise_if_failed()
    result.nodes_after = count_nodes(result.model)
    meta = _metadata(result, target)
    committed = v.commit(result.model, result.verification, output, prefix="slipway.optimize", metadata=meta)
    result.path = committed.path
    result.seconds = time.perf_counter() - t0
    return result


def input_plan(model: ir.Model, *, shapes: Mapping[str, Sequence[int]] | None = None,
               data: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
               dim_sizes: Mapping[str, Sequence[int]] | None = None,
               batch_sizes: Sequence[int] = v.DEFAULT_BATCH_SIZES) -> Plan:
    """The inputs ``model`` is verified and timed on (see :func:`optimize`)."""
    if dim_sizes is not None and not shapes and data is None:
        specs = hinted_specs(model)
        rng = np.random.default_rng(0)
        sizes = v.plan_sizes(specs, batch_sizes, default_dim_sizes(model, dim_sizes))
        return Plan([v.random_feeds(specs, s, rng) for s in sizes], "dim_sizes")
    return plan_inputs(model, shapes=shapes, data=data, batch_sizes=batch_sizes)


def default_dim_sizes(model: ir.Model, given: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
    """Sizes for dynamic dims other than the batch: ``given``, else 16 and 32."""
    specs = v.input_specs(model)
    batch = specs[0].dims[0] if specs and specs[0].dims and isinstance(specs[0].dims[0], str) else None
    names = {d for s in specs for d in s.dims if isinstance(d, str) and d != batch}
    return {**{n: [16, 32] for n in names}, **{k: list(x) for k, x in (given or {}).items()}}


@dataclass
class Timing:
    target: str
    feeds: v.Feeds
    tolerance: float
    budget_s: float

    def pair(self, a: ir.Model, b: ir.Model) -> Speed:
        return latency_compare(a, b, TARGETS[self.target], self.budget_s, None, self.feeds)

    def slower(self, speed: Speed) -> bool:
        """B is slower than A: its median is past the tolerance AND it lost most paired blocks (a sign
        test), so machine noise - which makes either side lose about half the blocks - keeps B."""
        return speed.slower(self.tolerance, SIGN_TEST_SHARE)


def _never_slower(result: OptimizeResult, source: ir.Model, chosen: list, run: Callable, timing: Timing,
                  progress: Callable[[str], None] | None) -> None:
    target = timing.target
    if progress:
        progress(f"timing on {target}")
    speed = timing.pair(source, result.model)
    before, after = speed.a_ms, speed.b_ms
    result.latency_before_ms, result.latency_after_ms = before, after
    if not timing.slower(speed):
        result.decision = "optimized model kept"
        return
    risky = [p for p in chosen if p.risky and result.passes.records[p.name].total]
    if risky:
        safe = [p for p in chosen if p not in risky]
        candidate, report = run(safe)
        if progress:
            progress(f"timing without {', '.join(p.name for p in risky)}")
        speed2 = timing.pair(source, candidate)
        if not timing.slower(speed2):
            result.model, result.passes = candidate, report
            result.latency_before_ms, result.latency_after_ms = speed2.a_ms, speed2.b_ms
            result.dropped = [p.name for p in risky]
            result.decision = f"dropped {', '.join(result.dropped)}: they made the model slower on {target}"
            return
    result.model = source
    result.latency_after_ms = result.latency_before_ms
    result.dropped = [name for name, r in result.passes.records.items() if r.total]
    result.decision = (f"input kept: the optimized model was slower on {target} ({after:.3f} ms vs {before:.3f} ms, "
                       f"slower in {100 * speed.b_slower_share:.0f}% of {speed.blocks} paired blocks)")


def _metadata(result: OptimizeResult, target: str) -> dict[str, str]:
    meta = {
        "slipway.optimize.target": target,
        "slipway.optimize.nodes": f"{result.nodes_before} -> {result.nodes_after}",
        "slipway.optimize.passes": ", ".join(f"{n}={r.total}" for n, r in result.passes.records.items() if r.total),
    }
    if result.latency_before_ms is not None:
        meta["slipway.optimize.latency_ms"] = f"{result.latency_before_ms:.4f} -> {result.latency_after_ms:.4f}"
        meta["slipway.optimize.decision"] = result.decision
    return meta
