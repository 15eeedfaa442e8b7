"""``quantize()``: INT8 (QDQ), FP16 or BF16, evaluated against FP32, within an accuracy budget, timed.

The INT8 pipeline, in order:

1. **prepare** - the verified, engine-neutral graph passes of ``slipway optimize`` (Conv-BN
   folding, constant folding, clean-ups; no speed check) so that Q/DQ lands where engines fuse;
   unnamed nodes are named ``OpType_index``;
2. **calibrate** - the data streams through the FP32 model once (:func:`calibrate.collect`,
   cached with ``cache=``), and ``method`` turns the statistics into one range per activation;
3. **quantize** - :func:`qdq.quantize_qdq` places Q/DQ (per-channel int8 weights, int32 biases);
4. **evaluate** - FP32 and the quantized model run on the evaluation data on the target engine;
   the metric (:mod:`slipway.quantize.evaluate`) gives the drop, plus output SNR and agreement.
   ``method="auto"`` (the default) keeps entropy ranges unless they lose more than
   :data:`AUTO_DROP` points (or ``max_drop``), then places and evaluates minmax, percentile and mse
   ranges too and keeps the best (PP-OCRv4 rec: entropy reads 0% of the characters, minmax 100%);
5. **sensitivity** - every quantized layer's local and accumulated error, ranked
   (:mod:`slipway.quantize.sensitivity`);
6. **budget** - with ``max_drop``, while the drop exceeds it the most sensitive layers go back to
   float (FP32, or FP16 with ``fallback="fp16"``): 1, 2, 4 ... layers, then a bisection for the
   fewest that meet the budget; if even all of them do not, a ``VerificationError`` and no file;
7. **speed guard** - the CPU's INT8 instructions are checked (a warning without VNNI / AMX / SDOT)
   and FP32 vs quantized latency is always measured on the target (:mod:`slipway.quantize.speed`);
8. **write** - the outputs are compared with FP32 on the evaluation data at two batch sizes (a
   broken model fails here), and the result goes into ``metadata_props`` and is written atomically.

FP16 / BF16 skip calibration and the budget: prepare (as for INT8: a BatchNormalization folded into
its Conv, whose running variance FP16 cannot hold - PP-OCRv4 det's first BN is off by 72 in FP16
otherwise), convert (:mod:`slipway.quantize.precision`), evaluate, time, verify, write. onnxruntime's CPU engine has no BF16 kernels, so a BF16 model is
evaluated and timed on OpenVINO. Bad input (no or empty calibration data, wrong shapes, a model
without float tensors, a metric that raises) is one ``UserError`` and nothing is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from slipway import backends
from slipway import verify as v
from slipway.errors import UserError, VerificationError
from slipway.graph import copy_model
from slipway.model import ModelLike, as_model, check_output
from slipway.optimize import optimize
from slipway.perf.ab import TARGETS
from slipway.quantize import evaluate as ev
from slipway.quantize import qdq, speed
from slipway.quantize import sensitivity as sens
from slipway.quantize.precision import convert_precision, to_fp16
from slipway.quantize.result import FloatLayer, QuantizeResult, Step
from slipway.quantize.types import METHODS
from slipway.verify.inputs import load_inputs, shared_batch
from slipway.verify.probe import derive_dim_sizes, plan_inputs

AUTO = "auto"  # entropy ranges, unless they lose more than AUTO_DROP: then the best of the other methods
AUTO_ORDER = ("entropy", "minmax", "percentile", "mse")
AUTO_DROP = 1.0  # points of the metric (top-1, agreement, output cosine x 100)

__all__ = ["quantize", "QuantizeResult", "FloatLayer", "METHODS", "PRECISIONS", "FALLBACKS", "TOLERANCE"]

PRECISIONS = ("int8", "fp16", "bf16")
FALLBACKS = ("fp32", "fp16")
# Verification of the written model against FP32 (outputs on the evaluation data): it catches a
# broken model, not quantization noise - the metric and max_drop judge that.
TOLERANCE = {"int8": (1e-3, 1.0), "fp16": (1e-3, 0.05), "bf16": (1e-2, 0.2)}  # (atol, rtol)
EVAL_FROM_CALIB = 512  # samples of the calibration data evaluated on when no eval_data is given
SENSITIVITY_SAMPLES = 128
SENSITIVITY_BATCH = 8
RANDOM_SAMPLES = 32
Progress = Callable[[str, int, "int | None"], None]


def quantize(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    *,
    calib: Any = None,
    method: str = "auto",
    precision: str = "int8",
    symmetric: bool | None = None,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    max_drop: float | None = None,
    eval_data: Any = None,
    metric: str | Callable | None = "top1",
    fallback: str = "fp32",
    target: str = "ort",
    cache: str | os.PathLike | None = None,
    preprocess: Any = None,
    calib_limit: int | None = None,
    eval_limit: int | None = None,
    prepare: bool = True,
    speed_check: bool = True,
    speed_budget_s: float = 2.0,
    progress: Progress | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: Any = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> QuantizeResult:
    """Quantize ``model`` (path, ModelProto or ir.Model; not modified); see the module docstring.

    ``calib`` and ``eval_data``: anything :func:`slipway.quantize.data.calibration_data` reads
    (images are pre-processed by ``preprocess``); ``eval_data`` may carry labels (an ``.npz``
    with a ``labels`` array, or ``(feeds, label)`` pairs). Without ``eval_data`` the first
    samples of ``calib`` are the evaluation set (agreement with FP32). ``symmetric`` (activations)
    and ``reduce_range`` (7-bit weights) default to what this CPU's int8 kernels run best
    (:func:`speed.int8_defaults`: asymmetric uint8 on x86, plus 7-bit weights without VNNI/AMX;
    symmetric int8 on ARM; an explicit ``symmetric=True`` means symmetric int8). ``max_drop`` is in the metric's units (points for top-1 / agreement).
    ``speed_budget_s`` is the time given to the FP32 vs quantized latency measurement.
    ``progress(stage, done, total)`` reports each stage (and the calibration's samples).
    ``shapes`` / ``data`` (``--shape`` / ``--data``) are the inputs the graph preparation is verified
    on and, with neither ``eval_data`` nor ``calib``, the evaluation set (``data``) or the sizes of
    its random inputs (``shapes``); without them sizes are derived from the model.
    ``atol`` / ``rtol`` replace the final check's tolerances (default :data:`TOLERANCE`: what marks
    a broken model, not a small accuracy loss - that is ``max_drop``'s job).
    """
    t0 = time.perf_counter()
    _check_args(method, precision, fallback, target, max_drop)
    if (atol is not None and not atol >= 0) or (rtol is not None and not rtol >= 0):
        raise UserError(f"tolerances must be >= 0, got atol={atol} rtol={rtol}")
    say = _Say(progress)
    source = as_model(model, validate=True)
    check_output(output, model, create_dirs=True)
    _require_floats(source)
    result = QuantizeResult(precision=precision, method=method if precision == "int8" else "", target=target,
                            max_drop=max_drop)
    if precision == "int8":
        formats = _formats(symmetric, per_channel, reduce_range, result)
        inputs = _Inputs(shapes, data)
        final = _int8(source, result, say, inputs, calib=calib, method=method, formats=formats, max_drop=max_drop,
                      eval_data=eval_data, metric=metric, fallback=fallback, cache=cache, preprocess=preprocess,
                      calib_limit=calib_limit, eval_limit=eval_limit, prepare=prepare)
    else:
        final = _low(source, result, say, _Inputs(shapes, data), eval_data=eval_data, calib=calib, metric=metric,
                     preprocess=preprocess, eval_limit=eval_limit, max_drop=max_drop, prepare=prepare)
    engine = result.engine
    result.speed = speed.isa_check(precision, engine)
    if speed_check:
        say("timing FP32 vs quantized on " + engine)
        speed.measure(result.speed, source, final, budget_s=speed_budget_s, feeds=result.verify_feeds[0])
    say("verifying")
    report = _verify(source, final, result, precision, atol, rtol)
    committed = v.commit(final, report, output, prefix="slipway.quantize", metadata=result.metadata())
    result.model, result.path, result.verification = final, committed.path, report
    result.seconds = time.perf_counter() - t0
    return result


def _check_args(method: str, precision: str, fallback: str, target: str, max_drop: float | None) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if method not in (AUTO, *METHODS):
        raise UserError(f"unknown calibration method {method!r} (choose from {', '.join((AUTO, *METHODS))})")
    if fallback not in FALLBACKS:
        raise UserError(f"unknown fallback {fallback!r} (choose from {', '.join(FALLBACKS)})")
    speed.check_target(target)
    if max_drop is not None and (not isinstance(max_drop, (int, float)) or not max_drop >= 0):
        raise UserError(f"max_drop must be a number >= 0, got {max_drop!r}")


class _Say:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def __call__(self, stage: str, done: int = 0, total: int | None = None) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)


def _require_floats(model: ir.Model) -> None:
    floats = (ir.DataType.FLOAT, ir.DataType.DOUBLE)
    weights = any(t.const_value is not None and t.dtype in floats for t in model.graph.initializers.values())
    inputs = any(x.dtype in floats for x in model.graph.inputs if x.name not in model.graph.initializers)
    if not (weights or inputs):
        raise UserError("the model has no float32 tensors (weights or inputs) to quantize")


def _name_nodes(model: ir.Model) -> None:
    used = {n.name for n in model.graph if n.name}
    for i, node in enumerate(model.graph):
        if not node.name:
            name, k = f"{node.op_type}_{i}", 1
            while name in used:
                name, k = f"{node.op_type}_{i}_{k}", k + 1
            node.name = name
            used.add(name)


@dataclass
class _Inputs:
    """The user's ``--shape`` / ``--data``: what preparation is verified on, and the fallback evaluation set."""

    shapes: Mapping[str, Sequence[int]] | None = None
    data: Any = None

    def random_set(self, model: ir.Model) -> ev.EvalData:
        if self.data is not None:  # one feed dict, as given (a state's batch need not be its dim 0)
            return ev.from_feeds(model, [load_inputs(self.data)[0]], what="--data")
        if not shared_batch(v.input_specs(model)):
            # no shared batch axis (a scalar input, a state batched on axis 1): the probe's runs, as given
            return ev.from_feeds(model, plan_inputs(model, shapes=self.shapes).feeds, what="random inputs")
        return ev.random_set(model, RANDOM_SAMPLES, dims=derive_dim_sizes(model, self.shapes))


def _prepared(source: ir.Model, prepare: bool, result: QuantizeResult, inputs: _Inputs) -> ir.Model:
    if prepare:
        done = optimize(source, None, skip=["sink-transposes", "matmul-add-to-gemm"], speed_check=False,
                        shapes=inputs.shapes, data=inputs.data)
        result.notes.extend(n for n in done.verification.notes if n not in result.notes)
        changes = {name: r.total for name, r in done.passes.records.items() if r.total}
        if changes:
            result.notes.append("prepared with " + ", ".join(f"{k}={n}" for k, n in changes.items()))
        model = done.model
    else:
        model = copy_model(source)
    _name_nodes(model)
    return model


def _eval_set(model: ir.Model, eval_data: Any, calib: Any, preprocess: Any, limit: int | None,
              result: QuantizeResult, inputs: _Inputs) -> ev.EvalData:
    if eval_data is not None:
        data = ev.from_feeds(model, eval_data, limit=limit, preprocess=preprocess)
    elif calib is not None and _one_shot(calib):
        if result.max_drop is not None:
            raise UserError("the calibration data is a one-shot iterator, so it cannot also be the evaluation set "
                            "for max_drop: give eval_data (--eval)")
        data = inputs.random_set(model)
        result.warnings.append("no evaluation data and the calibration data is a one-shot iterator: agreement "
                               f"with FP32 measured on {data.samples} random inputs; give eval_data")
    elif calib is not None:
        data = ev.from_feeds(model, calib, limit=limit or EVAL_FROM_CALIB, what="calibration data",
                             preprocess=preprocess)
        result.notes.append(f"no evaluation data: evaluated on {data.samples} calibration samples "
                            "(agreement with FP32 on the data the ranges came from is optimistic)")
    elif inputs.data is not None:
        data = inputs.random_set(model)
        result.notes.append(f"no evaluation data: agreement with FP32 measured on the {data.samples} --data samples")
    else:
        data = inputs.random_set(model)
        result.notes.append(f"no evaluation data: agreement with FP32 measured on {data.samples} random inputs")
    result.notes.extend(data.notes)
    result.eval_samples, result.eval_source = data.samples, data.source
    result.verify_feeds = ev.verify_feeds(data)
    return data


def _one_shot(data: Any) -> bool:
    from collections.abc import Iterator

    return isinstance(data, Iterator)


def _formats(symmetric: bool | None, per_channel: bool, reduce_range: bool | None,
             result: QuantizeResult) -> dict[str, Any]:
    """The Q/DQ formats: the caller's, else :func:`speed.int8_defaults` for this CPU (noted)."""
    choice = speed.int8_defaults()
    if symmetric is None or reduce_range is None:
        result.notes.append(f"formats for this CPU: {choice.why}")
    sym = choice.symmetric if symmetric is None else bool(symmetric)
    formats = {"symmetric_activations": sym,
               "activation_type": "int8" if sym and symmetric is not None else choice.activation_type,
               "reduce_range": choice.reduce_range if reduce_range is None else bool(reduce_range),
               "per_channel": bool(per_channel)}
    if choice.reduce_range and reduce_range is False and formats["activation_type"] == "uint8":
        result.warnings.append("full-range weights on a CPU without VNNI/AMX: onnxruntime's uint8 x int8 kernels "
                               "here sum pairs in int16 and saturate, so accuracy measured on this machine is "
                               "lower than on a CPU with VNNI, AMX or ARM dot products (omit --full-range to get "
                               "7-bit weights)")
    result.formats = formats
    return formats


def _int8(source: ir.Model, result: QuantizeResult, say: _Say, inputs: _Inputs, *, calib: Any, method: str,
          formats: dict[str, Any], max_drop: float | None, eval_data: Any, metric: Any, fallback: str, cache: Any,
          preprocess: Any, calib_limit: int | None, eval_limit: int | None, prepare: bool) -> ir.Model:
    from slipway.quantize import calibrate  # imports quantize.data, which imports slipway.ops (scipy, OpenCV)
    from slipway.quantize.data import calibration_data

    if calib is None:
        raise UserError("INT8 quantization needs calibration data: give calib= (--calib DATA)")
    result.engine = result.target
    say("preparing the graph")
    prepared = _prepared(source, prepare, result, inputs)
    data = calibration_data(calib, prepared, preprocess=preprocess, limit=calib_limit)
    cal = calibrate.collect(prepared, data, progress=lambda done, total: say("calibrating", done, total),
                            cache=cache)
    result.calib_samples = cal.samples
    result.notes.extend(cal.notes)
    judge: ev.Judge | None = None
    tried: list[tuple[str, Any, ir.Model, Any, ev.Score]] = []  # method, ranges, model, report, score
    for m in AUTO_ORDER if method == AUTO else (method,):
        ranges = calibrate.ranges(cal, m, symmetric=formats["symmetric_activations"])
        say(f"placing Q/DQ ({m} ranges)")
        quant, report = qdq.quantize_qdq(prepared, ranges, **formats)
        if not report.quantized:
            raise UserError(_nothing_to_quantize(prepared))
        if judge is None:
            say("evaluating")
            judge = ev.Judge(source, _eval_set(prepared, eval_data, calib, preprocess, eval_limit, result, inputs),
                           metric, result.engine)
        tried.append((m, ranges, quant, report, judge(quant)))
        if method != AUTO or tried[-1][4].drop <= (AUTO_DROP if max_drop is None else min(max_drop, AUTO_DROP)):
            break
    best = min(tried, key=lambda t: t[4].drop)  # the first of equals: entropy, the usual winner
    result.method, ranges, quant, result.quant, result.score = best
    result.metric = judge.metric
    if len(tried) > 1:
        result.notes.append("calibration method auto: " + ", ".join(f"{m} drops {t.drop:.3g}" for m, *_, t in tried)
                            + f" ({judge.metric.name}): {result.method} kept")
    say("sensitivity per layer")
    batches = _first_rows(judge.data, SENSITIVITY_SAMPLES)
    result.sensitivity = sens.analyze(prepared, quant, batches, progress=lambda text: say(text))
    if max_drop is not None and result.score.drop > max_drop:
        build = _Builder(prepared, ranges, formats, fallback, result)
        quant = _budget(build, judge, result, max_drop, say)
    return quant


def _nothing_to_quantize(model: ir.Model) -> str:
    """Why Q/DQ placement found nothing: no quantizable op, or only inside If / Loop / Scan bodies."""
    inside = sorted({n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)
                     if n.graph is not model.graph and n.op_type in qdq.SUPPORTED})
    if inside:
        return (f"nothing in the main graph can be quantized to INT8: its {', '.join(inside)} nodes are inside "
                "control flow (If / Loop / Scan bodies), where Q/DQ placement does not go yet")
    return "nothing in the model can be quantized to INT8 (no Conv, Gemm, MatMul, Add, pooling ...)"


def _first_rows(data: ev.EvalData, limit: int) -> list[dict[str, np.ndarray]]:
    """The first ``limit`` samples in batches of at most :data:`SENSITIVITY_BATCH` rows (every layer's
    output is kept for a batch, twice: small batches bound the memory)."""
    if data.whole:  # feed dicts as given: one sample each
        return data.batches[:limit]
    out, seen = [], 0
    for feeds in data.batches:
        rows = int(next(iter(feeds.values())).shape[0]) if feeds else 1
        step = SENSITIVITY_BATCH if data.dynamic else rows
        for i in range(0, rows, step):
            if seen >= limit:
                return out
            part = {k: x[i:i + step] for k, x in feeds.items()}
            out.append(part)
            seen += int(next(iter(part.values())).shape[0]) if part else 1
    return out


class _Builder:
    """The quantized model with the given layers kept in float (FP32, or FP16 while the engine runs it)."""

    def __init__(self, prepared: ir.Model, ranges: Any, formats: dict[str, Any], fallback: str,
                 result: QuantizeResult) -> None:
        self.prepared, self.ranges, self.result = prepared, ranges, result
        self.formats, self.fallback = formats, fallback

    def __call__(self, layers: Sequence[str]) -> tuple[ir.Model, Any]:
        model, report = qdq.quantize_qdq(self.prepared, self.ranges, exclude_nodes=layers, **self.formats)
        if self.fallback == "fp16":
            model = self._fp16(model, set(layers))
        return model, report

    def _fp16(self, model: ir.Model, layers: set[str]) -> ir.Model:
        _name_nodes(model)
        keep = [n.name for n in model.graph if n.name not in layers]
        try:
            return to_fp16(model, block_nodes=keep)
        except UserError as e:
            self._give_up(str(e))
            return model

    def _give_up(self, why: str) -> None:
        self.fallback = "fp32"
        self.result.warnings.append(f"FP16 fallback not possible ({why}); the reverted layers stay FP32")


def _budget(build: _Builder, judge: ev.Judge, result: QuantizeResult, max_drop: float, say: _Say) -> ir.Model:
    """Revert the most sensitive layers to float until the drop is within ``max_drop``.

    The last candidate (every ranked layer float) also reverts the quantized nodes the ranking leaves
    out (a Concat quantizes its inputs and output on its own; sensitivity ranks compute layers only),
    so it has no Q/DQ left: with ``fallback="fp32"`` it is the prepared FP32 graph and the budget is
    reachable unless the metric does not give the FP32 model its own score.
    """
    ranking = [s.node for s in result.sensitivity]
    ranked = set(ranking)
    unranked = [name for name in result.quant.quantized if name not in ranked]
    result.steps.append(Step(0, result.score.drop, result.score.value))
    tried: dict[int, tuple[ir.Model, Any, ev.Score, str]] = {}

    def attempt(n: int) -> bool:
        say(f"accuracy budget: {n} of {len(ranking)} layers float")
        layers = ranking[:n] if n < len(ranking) else ranking + unranked
        model, report = build(layers)
        try:
            score = judge(model)
        except UserError as e:
            if build.fallback != "fp16":
                raise
            build._give_up(f"{judge.engine} cannot run it: {e}")
            model, report = build(layers)
            score = judge(model)
        tried[n] = (model, report, score, build.fallback)
        result.steps.append(Step(n, score.drop, score.value))
        return score.drop <= max_drop

    lo, hi, n = 0, None, 1
    while n <= len(ranking):
        if attempt(n):
            hi = n
            break
        lo, n = n, (n * 2 if n < len(ranking) else len(ranking) + 1)
        n = min(n, len(ranking)) if lo < len(ranking) else n
    if hi is None:
        raise VerificationError(f"cannot meet max_drop {max_drop:g}: {_unreachable(tried.get(len(ranking)), judge)}; "
                                "nothing written")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    model, report, score, fallback = tried[hi]
    result.quant, result.score = report, score
    by_name = {s.node: s for s in result.sensitivity}
    result.float_layers = [FloatLayer.of(by_name[name], fallback, len(ranking)) for name in ranking[:hi]]
    if hi == len(ranking):
        result.warnings.append(f"every one of the {hi} quantized layers had to stay float to meet max_drop "
                               f"{max_drop:g}: the result is not quantized (try another method or more data)")
    return model


def _unreachable(last: tuple[ir.Model, Any, ev.Score, str] | None, judge: ev.Judge) -> str:
    """Why even the model with every layer float misses the budget (``last``: that attempt, None if none was made)."""
    if last is None:
        return "no quantized layer could be ranked by sensitivity, so none can be reverted"
    model, _, score, fallback = last
    said = f"with every quantized layer back in {fallback} the drop is still {score.drop:.3g} ({judge.metric.name})"
    left = sorted({n.name for n in model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")})
    if left:  # every quantized node was excluded: a placement rule quantizes nodes it was not asked to
        return f"{said}, and {len(left)} Q/DQ nodes remain ({', '.join(left[:3])}{' ...' if len(left) > 3 else ''})"
    if fallback == "fp16":
        return f"{said}: FP16 is not accurate enough for this budget (try fallback='fp32')"
    return (f"{said}, although that model has no Q/DQ left (it is the prepared FP32 graph, equal to FP32 within "
            "float rounding): the metric does not give the FP32 model its own score (is it deterministic?) or "
            "max_drop is below float rounding")


def _low(source: ir.Model, result: QuantizeResult, say: _Say, inputs: _Inputs, *, eval_data: Any, calib: Any,
         metric: Any, preprocess: Any, eval_limit: int | None, max_drop: float | None, prepare: bool) -> ir.Model:
    prepared = source
    if prepare:  # folded BatchNormalization: its variance and 1/sqrt(var + eps) are what FP16 cannot hold
        say("preparing the graph")
        prepared = _prepared(source, prepare, result, inputs)
    say(f"converting to {result.precision}")
    model, report = convert_precision(prepared, result.precision)
    result.precision_report = report
    result.engine = result.target
    if result.precision == "bf16" and result.target == "ort":
        result.engine = "openvino"
        result.warnings.append("onnxruntime's CPU engine has no BF16 kernels: the BF16 model was evaluated and "
                               "timed on openvino")
    say("evaluating")
    judge = ev.Judge(source, _eval_set(source, eval_data, calib, preprocess, eval_limit, result, inputs), metric,
                   result.engine)
    result.metric, result.score = judge.metric, judge(model)
    if max_drop is not None and result.score.drop > max_drop:
        raise VerificationError(f"the {result.precision} model drops {result.score.drop:.3g} "
                                f"({judge.metric.name}), more than max_drop {max_drop:g}; nothing written")
    return model


def _verify(source: ir.Model, final: ir.Model, result: QuantizeResult, precision: str,
            atol: float | None = None, rtol: float | None = None) -> v.VerifyReport:
    """Outputs of ``final`` on the target engine vs FP32 (onnxruntime, optimizations off) on real samples."""
    atol = TOLERANCE[precision][0] if atol is None else atol
    rtol = TOLERANCE[precision][1] if rtol is None else rtol
    feeds_list = result.verify_feeds
    session = backends.load(final, TARGETS[result.engine])
    try:
        checks, failure = v.compare_runs(v.ort_runner(source), session.run, feeds_list, atol=atol, rtol=rtol)
    finally:
        session.close()
    batches = sorted({int(next(iter(f.values())).shape[0]) for f in feeds_list if f})
    if failure:
        failure = (f"the {precision} model is broken, its outputs are off by more than {rtol:g} x the largest FP32 "
                   f"output (--atol / --rtol set this check): {failure}")
    return v.VerifyReport(checks, atol, rtol, batches, [v.describe(f) for f in feeds_list],
                          "the FP32 model in " + v.engine_name(), f"{result.engine} (engine optimizations on)",
                          failure)
