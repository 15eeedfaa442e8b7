"""``prune()``: structured channel pruning of an ONNX model, without its training code.

The pipeline, in order:

1. **groups** - :func:`slipway.prune.groups.discover` finds the channels that must go together
   (residual streams, concatenations, depthwise convolutions, squeeze-excitation, Flatten -> Gemm) and
   why the others cannot be pruned (``explain()`` / ``slipway prune --explain`` lists them);
2. **importance** - :mod:`slipway.prune.criteria` scores each group's channels (l1, l2, fpgm,
   bn-scale, or activation on the calibration data);
3. **amount** - ``ratio`` (each group loses that share, or one global threshold with ``scope="global"``),
   or ``target_macs`` (the share of MACs kept, counted by :func:`slipway.analyze.analyze`; the ratio is
   found by bisection), or ``target_latency`` (ms at batch 1 on the target engine, measured); channel
   counts round up to a multiple of ``round_to`` - ``"auto"`` (the default when timing is allowed)
   prunes to the same target with 1, 8 and 16 and keeps the one that runs fastest on the engine: engines
   run some channel counts much slower than others (MobileNetV2 at 50% fewer MACs runs 0.7x as fast
   as the unpruned model on onnxruntime with unrounded counts, 1.8x with multiples of 16);
4. **surgery** - :func:`slipway.prune.surgery.apply` cuts the weights of a copy (the input is never modified);
5. **recovery** - with calibration data, the per-channel statistics of every cut layer are re-estimated
   (:mod:`slipway.prune.recover`: the folded-BatchNorm equivalent of adaptive BN, or bias compensation);
6. **budget** - with ``max_drop`` the metric (:mod:`slipway.quantize.evaluate`, as ``quantize`` uses it)
   is measured, and while the drop passes the budget the ratio is bisected down;
7. **verify** - the pruned model runs in onnxruntime at two batch sizes with the input's output shapes
   and finite outputs (its numbers differ by design: the metric judges them), passes ``onnx.checker``,
   latency before and after is measured A/B (:mod:`slipway.perf.ab`), and what was removed, the metric and
   the latencies go into ``metadata_props``; the file is written atomically.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from slipway import verify as v
from slipway.analyze import analyze
from slipway.errors import UserError, VerificationError
from slipway.graph import copy_model
from slipway.model import ModelLike, as_model, check_output
from slipway.passes.shapes import infer
from slipway.perf.ab import TARGETS, latency_compare
from slipway.prune import criteria, recover
from slipway.prune.groups import discover
from slipway.prune.plan import Plan
from slipway.prune.result import GroupInfo, PruneResult
from slipway.prune.surgery import apply
from slipway.verify.inputs import batch_dim
from slipway.verify.probe import derive_dim_sizes

__all__ = ["prune", "explain", "PruneResult", "GroupInfo", "CRITERIA", "SCOPES", "RECOVERY", "ROUND_CHOICES"]

CRITERIA = criteria.CRITERIA
SCOPES = criteria.SCOPES
RECOVERY = ("auto", *recover.MODES)
ROUND_CHOICES = (1, 8, 16)  # round_to="auto" measures these on the engine
CALIB_LIMIT = 64  # calibration samples the statistics are measured on
MACS_STEPS = 16  # bisection steps of the ratio for target_macs
LATENCY_STEPS = 6
BUDGET_STEPS = 6
MAX_RATIO = 0.95
Progress = Callable[[str], None]


def explain(model: ModelLike) -> list[GroupInfo]:
    """Every channel group of ``model``: its size, the layers that produce it, and why it cannot be pruned."""
    work = _working_copy(as_model(model, validate=True))
    plan = discover(work)
    return _infos(plan, {})


def prune(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    target_latency: float | None = None,
    criterion: str = "l1",
    scope: str = "uniform",
    calib: Any = None,
    eval_data: Any = None,
    metric: str | Callable | None = "top1",
    max_drop: float | None = None,
    recovery: str = "auto",
    round_to: int | str | None = None,
    target: str = "ort",
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: Any = None,
    calib_limit: int = CALIB_LIMIT,
    eval_limit: int | None = None,
    speed_check: bool = True,
    speed_budget_s: float = 2.0,
    progress: Progress | None = None,
) -> PruneResult:
    """Prune ``model`` (path, ModelProto or ir.Model; not modified); see the module docstring.

    Exactly one of ``ratio`` (share of each group's channels removed, in (0, 1)), ``target_macs`` (share of
    the MACs kept, in (0, 1): ``0.5`` keeps half) or ``target_latency`` (ms at batch 1 on ``target``).
    ``calib`` / ``eval_data`` / ``metric`` / ``max_drop`` read as in :func:`slipway.quantize.quantize`;
    ``recovery`` is ``"stats"`` (mean and std re-estimated), ``"bias"`` (mean only), ``"none"``, or
    ``"auto"`` (``stats`` when calibration data is given). ``round_to``: an integer, or ``"auto"``; None (the
    default) is ``"auto"`` with ``speed_check`` and 1 without (nothing may be timed then). ``shapes`` / ``data`` (``--shape`` / ``--data``)
    fix the input sizes MACs are counted and the result is verified at.
    """
    t0 = time.perf_counter()
    say = progress or (lambda _text: None)
    if round_to is None:
        round_to = "auto" if speed_check else 1
    _check_args(ratio, target_macs, target_latency, criterion, scope, recovery, round_to, max_drop, target)
    source = as_model(model, validate=True)
    check_output(output, model, create_dirs=True)
    work = _working_copy(source)
    plan = discover(work)
    if not plan.prunable():
        raise UserError("nothing in the model can be pruned: " + _why_nothing(plan))
    result = PruneResult(criterion=criterion, scope=scope, target=target, max_drop=max_drop)
    build = _Builder(work, plan, result, criterion, scope, recovery,
                     _calibration(calib, work, calib_limit) if calib is not None else [], say)
    macs = _Macs(work, shapes)
    result.macs_before, result.params_before = macs(work)
    candidates = []
    for rnd in list(ROUND_CHOICES) if round_to == "auto" else [int(round_to)]:
        say(f"choosing the ratio (channels rounded to {rnd})")
        candidates.append((rnd, _solve(build, macs, result, work, ratio, target_macs, target_latency, rnd, target,
                                       say)))
    rnd, r = _fastest(candidates, build, work, target, result, say) if len(candidates) > 1 else candidates[0]
    result.round_to, result.ratio = rnd, r
    say("pruning")
    pruned, keep = build(r, rnd)
    if eval_data is not None or max_drop is not None:
        pruned, keep = _budget(build, work, pruned, keep, result, eval_data, calib, metric, max_drop, rnd,
                               eval_limit, target, say)
    result.macs_after, result.params_after = macs(pruned)
    result.groups = _infos(plan, keep)
    if speed_check:
        say(f"timing unpruned vs pruned on {target}")
        _time(work, pruned, result, speed_budget_s)
    say("verifying")
    report = _verify(work, pruned, shapes, data)
    committed = v.commit(pruned, report, output, prefix="slipway.prune", metadata=result.metadata())
    result.model, result.path, result.verification = pruned, committed.path, report
    result.seconds = time.perf_counter() - t0
    return result


class _Builder:
    """``build(ratio, round_to)``: the pruned model and its kept channels, statistics re-estimated. Holds what
    every try shares: the scores, and the unpruned model's statistics (measured once)."""

    def __init__(self, work: ir.Model, plan: Plan, result: PruneResult, criterion: str, scope: str,
                 recovery: str, feeds: list[v.Feeds], say: Progress) -> None:
        if recovery == "auto":
            recovery = "stats" if feeds else "none"
            if not feeds:
                result.warnings.append("no calibration data: the statistics of the cut layers (their folded "
                                       "BatchNorm) were not re-estimated, and accuracy usually drops far more "
                                       "than it would with them (give calib= / --calib)")
        if recovery != "none" and not feeds:
            raise UserError(f"recovery {recovery!r} needs calibration data (calib=, --calib)")
        if criterion == "activation" and not feeds:
            raise UserError("criterion activation needs calibration data (calib=, --calib)")
        self.work, self.plan, self.result, self.scope, self.recovery, self.feeds = (work, plan, result, scope,
                                                                                    recovery, feeds)
        result.recovery = recovery
        if criterion == "activation":
            say("measuring activations")
        self.score = criteria.scores(work, plan, criterion, recover.activations(work, plan, feeds)
                                     if criterion == "activation" else None)
        self.blocks = {g.gid: g.blocks for g in plan.prunable()}
        self.reference = None
        if recovery != "none":
            say("measuring the unpruned model's statistics")
            self.reference = recover.reference_stats(work, plan, feeds)

    def __call__(self, ratio: float, rnd: int, recover_it: bool = True) -> tuple[ir.Model, dict[int, np.ndarray]]:
        keep = criteria.select(self.score, ratio, self.scope, rnd, self.blocks)
        pruned = apply(self.work, self.plan, keep)
        if recover_it and self.recovery != "none":
            self.result.recovered = recover.recover(self.work, pruned, self.plan, keep, self.feeds, self.recovery,
                                                    self.reference)
        return pruned, keep


def _time(work: ir.Model, pruned: ir.Model, result: PruneResult, budget_s: float) -> None:
    """Unpruned vs pruned latency at batch 1 on the target (A/B blocks); a warning when pruned is slower."""
    speed = latency_compare(work, pruned, TARGETS[result.target], budget_s)
    result.latency_before_ms, result.latency_after_ms = speed.a_ms, speed.b_ms
    if speed.slower(0.05, 0.7):
        result.warnings.append(f"the pruned model is slower than the unpruned one on {result.target} "
                               f"({speed.b_ms:.3g} vs {speed.a_ms:.3g} ms): try round_to='auto'")


def _check_args(ratio: Any, target_macs: Any, target_latency: Any, criterion: str, scope: str, recovery: str,
                round_to: Any, max_drop: Any, target: str) -> None:
    given = [n for n, x in (("ratio", ratio), ("target_macs", target_macs), ("target_latency", target_latency))
             if x is not None]
    if len(given) != 1:
        raise UserError("give exactly one of ratio (--ratio), target_macs (--target-macs) or target_latency "
                        f"(--target-latency){'; got ' + ', '.join(given) if given else ''}")
    for name, x in (("ratio", ratio), ("target_macs", target_macs)):
        if x is not None and (not isinstance(x, (int, float)) or not 0 < x < 1):
            raise UserError(f"{name} must be a number between 0 and 1 (exclusive), got {x!r}")
    if target_latency is not None and (not isinstance(target_latency, (int, float)) or not target_latency > 0):
        raise UserError(f"target_latency must be a positive number of milliseconds, got {target_latency!r}")
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r} (choose from {', '.join(SCOPES)})")
    if recovery not in RECOVERY:
        raise UserError(f"unknown recovery {recovery!r} (choose from {', '.join(RECOVERY)})")
    if round_to != "auto" and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise UserError(f"round_to must be a positive integer or 'auto', got {round_to!r}")
    if max_drop is not None and (not isinstance(max_drop, (int, float)) or not max_drop >= 0):
        raise UserError(f"max_drop must be a number >= 0, got {max_drop!r}")
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")


def _working_copy(source: ir.Model) -> ir.Model:
    work = copy_model(source)
    infer(work)
    return work


def _why_nothing(plan: Plan) -> str:
    reasons = [f"{g.producers[0].name}: {g.blocked[0] if g.blocked else 'one channel'}"
               for g in plan.groups.values() if g.producers]
    if not reasons:
        return "it has no Conv, ConvTranspose, Gemm or MatMul with constant weights"
    more = f" (and {len(reasons) - 3} more; see --explain)" if len(reasons) > 3 else ""
    return "; ".join(reasons[:3]) + more


def _calibration(calib: Any, model: ir.Model, limit: int) -> list[v.Feeds]:
    from slipway.quantize.data import calibration_data

    return list(calibration_data(calib, model, limit=limit))


class _Macs:
    """MACs and parameters of a model (:func:`slipway.analyze.analyze`) at the user's shapes, the batch at 1 and
    other dynamic dims at the sizes the probe derives (as ``quantize`` sizes its random inputs)."""

    def __init__(self, model: ir.Model, shapes: Mapping[str, Sequence[int]] | None) -> None:
        self.shapes = {k: list(x) for k, x in (shapes or {}).items()}
        specs = v.input_specs(model)
        batch = batch_dim(specs)
        if any(isinstance(d, str) and d != batch for s in specs if s.name not in self.shapes for d in s.dims):
            sizes = derive_dim_sizes(model, shapes)
            for s in specs:
                if s.name not in self.shapes:
                    self.shapes[s.name] = [1 if d == batch else sizes.get(d, 1) if isinstance(d, str) else d
                                           for d in s.dims]

    def __call__(self, model: ir.Model) -> tuple[int, int]:
        totals = analyze(model, self.shapes).totals
        return int(totals["macs"]), int(totals["params"])


def _solve(build: Callable, macs: _Macs, result: PruneResult, work: ir.Model, ratio: float | None,
           target_macs: float | None, target_latency: float | None, rnd: int, target: str, say: Progress) -> float:
    """The ratio that meets the request: as given, or the smallest meeting the MACs / latency target."""
    if ratio is not None:
        return float(ratio)
    if target_macs is not None:
        goal = target_macs * result.macs_before

        def meets(r: float) -> bool:
            return macs(build(r, rnd, False)[0])[0] <= goal
        what = f"{target_macs:g} of the MACs"
        steps = MACS_STEPS
    else:
        from slipway.perf.ab import latency

        now = latency(work, TARGETS[target], budget_s=0.5)
        if now <= target_latency:
            raise UserError(f"the model already runs in {now:.3g} ms on {target}, within target_latency "
                            f"{target_latency:g} ms: nothing to prune for")

        def meets(r: float) -> bool:
            say(f"timing ratio {r:.3f}")
            return latency(build(r, rnd, False)[0], TARGETS[target], budget_s=0.5) <= target_latency
        what = f"{target_latency:g} ms on {target}"
        steps = LATENCY_STEPS
    if not meets(MAX_RATIO):
        raise UserError(f"cannot reach {what} by pruning: even {MAX_RATIO:.0%} of every prunable group's channels "
                        "removed is not enough (the rest of the cost is in layers that cannot be pruned; see --explain)")
    lo, hi = 0.0, MAX_RATIO
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi


def _fastest(candidates: list[tuple[int, float]], build: Callable, work: ir.Model, target: str,
             result: PruneResult, say: Progress) -> tuple[int, float]:
    """The channel multiple whose pruned model runs fastest on the target (each timed A/B against the input)."""
    times = []
    for rnd, r in candidates:
        say(f"timing channels rounded to {rnd}")
        speed = latency_compare(work, build(r, rnd, False)[0], TARGETS[target], 1.0)
        times.append((speed.b_ms / speed.a_ms, rnd, r))
    result.round_times = {rnd: round(t, 4) for t, rnd, _ in times}
    _, rnd, r = min(times)
    return rnd, r


def _budget(build: Callable, work: ir.Model, pruned: ir.Model, keep: dict, result: PruneResult, eval_data: Any,
            calib: Any, metric: Any, max_drop: float | None, rnd: int, eval_limit: int | None,
            target: str, say: Progress) -> tuple[ir.Model, dict]:
    """Score the pruned model; with ``max_drop``, bisect the ratio down until the drop is within it."""
    from slipway.quantize import evaluate as ev

    if eval_data is not None:
        data = ev.from_feeds(work, eval_data, limit=eval_limit)
    elif calib is not None:
        data = ev.from_feeds(work, calib, limit=eval_limit or 512, what="calibration data")
        result.notes.append(f"no evaluation data: agreement with the unpruned model on {data.samples} calibration "
                            "samples")
    else:
        data = ev.random_set(work, 32)
        result.notes.append("no evaluation or calibration data: agreement with the unpruned model on 32 random inputs "
                            "(says little about accuracy; give eval_data)")
    say("evaluating")
    judge = ev.Judge(work, data, metric, target)
    result.metric, result.eval_samples = judge.metric.name, data.samples
    result.score = judge(pruned)
    result.steps.append((result.ratio, result.score.drop))
    if max_drop is None or result.score.drop <= max_drop:
        return pruned, keep
    lo, hi, best = 0.0, result.ratio, None
    for _ in range(BUDGET_STEPS):
        mid = (lo + hi) / 2
        say(f"accuracy budget: ratio {mid:.3f}")
        cand, cand_keep = build(mid, rnd)
        s = judge(cand)
        result.steps.append((mid, s.drop))
        if s.drop <= max_drop:
            lo, best = mid, (cand, cand_keep, s, mid)
        else:
            hi = mid
    if best is None:
        raise VerificationError(f"cannot meet max_drop {max_drop:g}: even pruning {hi:.1%} of the channels drops "
                                f"{result.steps[-1][1]:.3g} ({judge.metric.name}); nothing written")
    pruned, keep, result.score, ratio = best
    result.warnings.append(f"ratio lowered from {result.ratio:.3g} to {ratio:.3g} to keep the drop within max_drop "
                           f"{max_drop:g}")
    result.ratio = ratio
    return pruned, keep


def _infos(plan: Plan, keep: Mapping[int, np.ndarray]) -> list[GroupInfo]:
    out = []
    for g in sorted(plan.groups.values(), key=lambda g: g.gid):
        kept = keep.get(g.gid)
        out.append(GroupInfo(g.gid, g.size, int(kept.size) if kept is not None else g.size,
                             [p.name for p in g.producers], list(g.blocked) or (["a single channel"] if g.size < 2
                                                                                else [])))
    return out


def _verify(source: ir.Model, pruned: ir.Model, shapes: Mapping[str, Sequence[int]] | None,
            data: Any) -> v.VerifyReport:
    """The pruned model runs, at two batch sizes, with the source's output shapes and finite outputs."""
    try:
        onnx.checker.check_model(ir.serde.serialize_model(pruned), full_check=True)
    except Exception as e:
        raise VerificationError(f"the pruned model fails onnx.checker: {str(e).strip().splitlines()[0]}") from None
    plan = v.plan_inputs(source, shapes=shapes, data=data)
    checks, failure = v.compare_runs(v.ort_runner(source), v.ort_runner(pruned), plan.feeds, atol=math.inf, rtol=0.0)
    report = v.VerifyReport(checks, math.inf, 0.0, sorted({int(next(iter(f.values())).shape[0]) for f in plan.feeds
                                                            if f}), [v.describe(f) for f in plan.feeds],
                            "the unpruned model in " + v.engine_name(), v.engine_name(), failure,
                            ["pruning changes the outputs by design: checked are running, output shapes and finite "
                             "values; the metric judges accuracy"])
    if not failure:
        for c in checks:
            if not math.isfinite(c.max_abs):
                report.failure = f"the pruned model's output {c.name!r} is not finite (NaN or infinity)"
    return report
