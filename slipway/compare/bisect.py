"""Bisect graph passes: the first pass after which the model's outputs diverge from the original's."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from slipway.backends import Options
from slipway.compare.layers import compare
from slipway.compare.metrics import tensor_diff
from slipway.compare.run import load_model, make_feeds, run_model, typed_copy
from slipway.compare.types import BisectReport, BisectStep
from slipway.errors import UserError, VerificationError, one_line
from slipway.graph import copy_model
from slipway.passes.base import Pass
from slipway.passes.manager import make_passes

__all__ = ["run_bisect", "as_passes"]


def as_passes(passes: Sequence[Pass | str]) -> list[Pass]:
    """Pass objects as they are; names made into passes with their default options."""
    out: list[Pass] = []
    for p in passes:
        if isinstance(p, str):
            out += make_passes([p])
        elif callable(p):
            out.append(p)
        else:
            raise UserError(f"not a pass: {p!r} (give Pass objects or pass names)")
    return out


def _name(p: Pass) -> str:
    return getattr(p, "name", "") or type(p).__name__


def run_bisect(model: object, passes: Sequence[Pass | str], *, backend: str, options: Options | None,
               feeds: Mapping[str, np.ndarray] | str | os.PathLike | None, atol: float, rtol: float,
               batch: int, seed: int, dims: Mapping[str, int] | None,
               shapes: Mapping[str, Sequence[int]] | None = None) -> BisectReport:
    if atol < 0 or rtol < 0:
        raise UserError(f"tolerances must be >= 0, got atol={atol} rtol={rtol}")
    chosen = as_passes(passes)
    original = typed_copy(load_model(model, "to bisect"))
    inputs = make_feeds(original, original, feeds, batch=batch, seed=seed, dims=dims, shapes=shapes)
    reference = run_model(original, inputs, backend=backend, options=options)
    current = copy_model(original)
    steps: list[BisectStep] = []
    for index, p in enumerate(chosen):
        before = copy_model(current)
        try:
            result = p(current)
        except (UserError, VerificationError):
            raise
        except Exception as e:  # the pass itself failed: it is the culprit
            steps.append(BisectStep(_name(p), False, float("nan"), float("nan"), False, f"raised {one_line(e, typed=True)}"))
            return BisectReport(steps, _name(p), index, None)
        current = result.model
        if not result.modified:  # trusted, as the pass manager does: same model, same outputs
            last = steps[-1] if steps else BisectStep("", False, 0.0, 0.0, True)
            steps.append(BisectStep(_name(p), False, last.max_abs, last.max_rel, True))
            continue
        step, failed = _check_step(_name(p), result.modified, current, inputs, reference, backend, options, atol,
                                   rtol)
        steps.append(step)
        if failed:
            report = None
            if not step.error:
                report = compare(before, current, backend_a=backend, options_a=options, feeds=inputs, atol=atol,
                                 rtol=rtol)
                report.a, report.b = f"the model before {step.name}", f"the model after {step.name}"
            return BisectReport(steps, step.name, index, report)
    return BisectReport(steps, None, None, None)


def _check_step(name: str, modified: bool, model: ir.Model, inputs: dict[str, np.ndarray],
                reference: dict[str, np.ndarray], backend: str, options: Options | None, atol: float,
                rtol: float) -> tuple[BisectStep, bool]:
    try:
        outputs = run_model(model, inputs, backend=backend, options=options)
    except UserError as e:
        return BisectStep(name, modified, float("nan"), float("nan"), False,
                          f"the model after this pass does not run: {e}"), True
    missing = [n for n in reference if n not in outputs]
    if missing:
        return BisectStep(name, modified, float("inf"), float("inf"), False,
                          f"the model after this pass has no output {missing[0]!r}"), True
    diffs = [tensor_diff(n, reference[n], outputs[n], atol=atol, rtol=rtol) for n in reference]
    ok = all(d.ok for d in diffs)
    step = BisectStep(name, modified, max((d.max_abs for d in diffs), default=0.0),
                      max((d.max_rel for d in diffs), default=0.0), ok)
    return step, not ok
