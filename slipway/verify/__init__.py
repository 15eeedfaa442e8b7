"""Shared verification: run a reference and an ONNX model on the same inputs and compare.

Every stage that produces a model (convert, optimize, quantize) verifies it the same way:

1. describe the model inputs (:class:`InputSpec`), with named dynamic dims;
2. plan two or more input shapes (:func:`plan_sizes`): the batch dim takes each of
   ``batch_sizes``, other named dims take their own list of sizes;
3. draw random inputs for each shape (:func:`random_feeds`) and run the reference and the
   candidate (:func:`ort_runner`) on them;
4. compare each output (:func:`compare`), keep the worst error per output in a
   :class:`VerifyReport`, and with :func:`commit` refuse a failed model or record the errors in
   the model's ``metadata_props`` and write it atomically.

Errors are defined per output, over all elements of all runs:

* ``max_abs = max |actual - reference|`` (NaN matching NaN and equal infinities count as equal;
  any other NaN or infinity makes the error ``inf``);
* ``max_rel = max_abs / max |reference|`` - relative to the largest reference magnitude of that
  output, not element by element, so reference values at or near zero do not blow it up; an
  all-zero reference uses ``1e-12`` as its scale;
* the output passes when ``max_abs <= atol + rtol * max |reference|``.

Integer, boolean and string outputs (labels, indices, argmax) are compared exactly: any
differing element fails, whatever the tolerance.

The candidate runs in onnxruntime on CPU with graph optimizations disabled, so the error
measured is the model's own, not that of onnxruntime's fusions.

The package is what every stage (convert, optimize, quantize, compare, bench, tune) imports:

* :mod:`slipway.verify.inputs` - input specs, size plans, THE random feed generator, user data
  (re-exported here);
* :mod:`slipway.verify.probe` - the inputs a command runs a model on (``--data``, ``--shape``, or
  sizes derived by running the model);
* :mod:`slipway.verify.engine` - the candidate's engine (:func:`ort_runner`, :func:`engine_name`);
* this module - comparison, reports, :func:`verify` / :func:`verify_onnx` and :func:`commit`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from slipway.errors import UserError, VerificationError, one_line
from slipway.model import save
from slipway.verify.engine import Runner, engine_name, ort_runner
from slipway.verify.inputs import (
    DEFAULT_BATCH_SIZES,
    Feeds,
    InputSpec,
    describe,
    input_specs,
    plan_sizes,
    random_feeds,
)
from slipway.verify.probe import Plan, plan_inputs

__all__ = [
    "DEFAULT_BATCH_SIZES", "Feeds", "InputSpec", "OutputCheck", "VerifyReport", "VerifiedModel", "Runner",
    "Adjust", "compare", "merge", "input_specs", "plan_sizes", "random_feeds", "describe", "ort_runner",
    "engine_name", "compare_runs", "verify", "verify_onnx", "record", "commit", "Plan", "plan_inputs",
]
# (feeds, reference outputs, candidate outputs) -> reference outputs to compare against
Adjust = Callable[[Feeds, dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]]
REL_FLOOR = 1e-12


@dataclass
class OutputCheck:
    """Comparison of one output (the worst over all runs once merged)."""

    name: str
    max_abs: float
    max_rel: float
    ref_scale: float  # max |reference|
    allowed: float  # atol + rtol * ref_scale; 0 for exact outputs
    exact: bool  # integer / bool / string output, compared exactly
    mismatches: int  # elements past the allowance
    size: int
    where: str = ""  # the run (input shapes) of the worst error
    note: str = ""
    ok: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("max_abs", "max_rel", "ref_scale", "allowed"):
            d[k] = _json_float(d[k])
        return d


@dataclass
class VerifyReport:
    """Result of a verification: per-output worst errors and what was run."""

    outputs: list[OutputCheck]
    atol: float
    rtol: float
    batch_sizes: list[int]
    runs: list[str]  # the input shapes of each run, e.g. "x[3,3,16,16]"
    reference: str = ""  # what produced the reference outputs
    engine: str = ""  # what ran the candidate model
    failure: str = ""  # one-line message of the first failure, "" when ok
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failure and all(o.ok for o in self.outputs)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "atol": self.atol,
            "rtol": self.rtol,
            "batch_sizes": self.batch_sizes,
            "runs": self.runs,
            "reference": self.reference,
            "engine": self.engine,
            "failure": self.failure,
            "notes": self.notes,
            "outputs": [o.to_dict() for o in self.outputs],
        }

    def metadata(self, prefix: str = "slipway.verify") -> dict[str, str]:
        """The ``metadata_props`` entries that record this verification."""
        meta = {
            f"{prefix}.ok": "true" if self.ok else "false",
            f"{prefix}.batch_sizes": ",".join(str(b) for b in self.batch_sizes),
            f"{prefix}.tolerance": f"atol={self.atol:g} rtol={self.rtol:g}",
            f"{prefix}.inputs": "; ".join(self.runs),
        }
        if self.reference:
            meta[f"{prefix}.reference"] = self.reference
        if self.engine:
            meta[f"{prefix}.engine"] = self.engine
        for o in self.outputs:
            meta[f"{prefix}.{o.name}.max_abs"] = f"{o.max_abs:.6g}"
            meta[f"{prefix}.{o.name}.max_rel"] = f"{o.max_rel:.6g}"
        return meta

    def raise_if_failed(self) -> None:
        """Raise :class:`VerificationError` (carrying this report as ``.report``) if it failed."""
        if self.ok:
            return
        message = self.failure or next(o.note for o in self.outputs if not o.ok)
        raise VerificationError(message, report=self)


@dataclass
class VerifiedModel:
    """A model that passed verification, its report, and where it was written (if anywhere)."""

    model: ir.Model
    report: VerifyReport
    path: Path | None = None


def _json_float(x: float) -> float | str:
    return x if np.isfinite(x) else str(x)


def _is_exact(dtype: np.dtype) -> bool:
    return not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating))


def compare(name: str, reference: np.ndarray, actual: np.ndarray, *, atol: float, rtol: float,
            where: str = "") -> OutputCheck:
    """Compare one output with its reference (see the module docstring for the definitions)."""
    ref, act = np.asarray(reference), np.asarray(actual)
    exact = _is_exact(ref.dtype)
    if ref.shape != act.shape:
        note = f"output {name!r} has shape {list(act.shape)} but the reference has {list(ref.shape)}"
        return OutputCheck(name, np.inf, np.inf, 0.0, 0.0, exact, ref.size, ref.size,
                           where, _at(note, where), ok=False)
    if exact:
        return _compare_exact(name, ref, act, where)
    r, a = ref.astype(np.float64), act.astype(np.float64)
    same = (a == r) | (np.isnan(a) & np.isnan(r))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - r))
    diff[np.isnan(diff)] = np.inf
    max_abs = float(diff.max()) if diff.size else 0.0
    finite = np.abs(r[np.isfinite(r)])
    scale = float(finite.max()) if finite.size else 0.0
    max_rel = max_abs / max(scale, REL_FLOOR) if max_abs else 0.0
    allowed = atol + rtol * scale
    mismatches = int((diff > allowed).sum())
    ok = max_abs <= allowed
    note = "" if ok else _at(
        f"output {name!r}: max_abs {max_abs:.3g} > allowed {allowed:.3g} "
        f"(atol {atol:g} + rtol {rtol:g} x max|ref| {scale:.3g}), max_rel {max_rel:.3g}, "
        f"{mismatches} of {diff.size} elements past tolerance", where)
    if act.dtype != ref.dtype:
        note = (note + f"; dtype {act.dtype} vs reference {ref.dtype}").lstrip("; ")
    return OutputCheck(name, max_abs, max_rel, scale, allowed, False, mismatches, diff.size, where, note, ok)


def _compare_exact(name: str, ref: np.ndarray, act: np.ndarray, where: str) -> OutputCheck:
    differ = act != ref
    mismatches = int(np.count_nonzero(differ))
    numeric = ref.dtype.kind in "biu" and act.dtype.kind in "biuf"
    if numeric and ref.size:
        max_abs = float(np.abs(act.astype(np.float64) - ref.astype(np.float64)).max())
        scale = float(np.abs(ref.astype(np.float64)).max())
    else:
        max_abs, scale = (np.inf if mismatches else 0.0), 0.0
    max_rel = max_abs / max(scale, REL_FLOOR) if max_abs else 0.0
    note = "" if not mismatches else _at(
        f"output {name!r}: {mismatches} of {ref.size} values differ (compared exactly; max_abs {max_abs:.3g})",
        where)
    return OutputCheck(name, max_abs, max_rel, scale, 0.0, True, mismatches, ref.size, where, note, mismatches == 0)


def _at(message: str, where: str) -> str:
    return f"{message} at {where}" if where else message


def merge(checks: Sequence[OutputCheck]) -> OutputCheck:
    """Worst of several checks of one output: the first failure, else the largest error."""
    failed = [c for c in checks if not c.ok]
    worst = failed[0] if failed else max(checks, key=lambda c: (c.max_abs / c.allowed) if c.allowed else c.max_abs)
    return OutputCheck(
        worst.name, max(c.max_abs for c in checks), max(c.max_rel for c in checks),
        max(c.ref_scale for c in checks), worst.allowed, worst.exact,
        sum(c.mismatches for c in checks), sum(c.size for c in checks), worst.where, worst.note, not failed,
    )


# ---------------------------------------------------------------- running


def compare_runs(
    reference: Runner,
    candidate: Runner,
    feeds_list: Sequence[Feeds],
    *,
    atol: float,
    rtol: float,
    batch_dim_of: Callable[[Feeds], int | None] | None = None,
    adjust: Adjust | None = None,
) -> tuple[list[OutputCheck], str]:
    """Run both on every feed set; returns the merged per-output checks and the first failure.

    ``adjust`` may rewrite the reference outputs of a run once the candidate's are known (for
    example to accept either class of an exact tie); it sees every run.
    """
    per_output: dict[str, list[OutputCheck]] = {}
    failure = ""
    for feeds in feeds_list:
        where = _where(feeds, batch_dim_of)
        try:
            ref = reference(feeds)
        except UserError:
            raise
        except Exception as e:  # the reference itself cannot run these inputs: the user must say which
            raise UserError(f"the reference model does not run {_at('', where).strip()}: {one_line(e)}; give "
                            "valid input sizes with --shape NAME=D0,D1,... or real inputs with --data FILE.npz") from None
        try:
            act = candidate(feeds)
        except UserError:
            raise
        except Exception as e:
            failure = failure or f"onnxruntime failed to run the model {_at('', where).strip()}: {one_line(e)}"
            continue
        missing = [n for n in act if n not in ref]
        if missing:
            raise UserError(f"the reference has no output named {missing[0]!r} (it has {list(ref)})")
        dropped = [n for n in ref if n not in act]
        if dropped and not failure:
            failure = f"the ONNX model has no output {dropped[0]!r}, which the reference returns"
        if adjust is not None:
            ref = adjust(feeds, ref, act)
        for name, value in act.items():
            check = compare(name, ref[name], value, atol=atol, rtol=rtol, where=where)
            per_output.setdefault(name, []).append(check)
            if not check.ok and not failure:
                failure = check.note
    return [merge(c) for c in per_output.values()], failure


def _where(feeds: Feeds, batch_dim_of: Callable[[Feeds], int | None] | None) -> str:
    batch = batch_dim_of(feeds) if batch_dim_of else None
    shapes = describe(feeds)
    return f"batch {batch} ({shapes})" if batch is not None else f"({shapes})"


def verify(
    reference: Runner,
    candidate: ir.Model,
    specs: Sequence[InputSpec],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    dim_sizes: Mapping[str, Sequence[int]] | None = None,
    ranges: Mapping[str, tuple[int | None, int | None]] | None = None,
    extra_feeds: Sequence[Feeds] = (),
    seed: int = 0,
    reference_name: str = "",
    optimization: str = "disabled",
    adjust: Adjust | None = None,
    feeds: Sequence[Feeds] | None = None,
    notes: Sequence[str] = (),
) -> VerifyReport:
    """Compare ``reference`` with ``candidate`` run in onnxruntime.

    Runs ``extra_feeds`` (for example the user's example inputs) and then ``feeds`` when given
    (a :func:`slipway.verify.probe.plan_inputs` plan), else random inputs at the sizes
    :func:`plan_sizes` picks. Returns the report; it does not raise on a mismatch (use
    :meth:`VerifyReport.raise_if_failed` or :func:`commit`).
    """
    if atol < 0 or rtol < 0:
        raise UserError(f"tolerances must be >= 0, got atol={atol} rtol={rtol}")
    if feeds is None:
        rng = np.random.default_rng(seed)
        feeds = [random_feeds(specs, sizes, rng) for sizes in plan_sizes(specs, batch_sizes, dim_sizes, ranges)]
    feeds_list = list(extra_feeds) + list(feeds)
    first = specs[0] if specs else None

    def batch_of(feeds: Feeds) -> int | None:
        if first is None or not first.dims or first.name not in feeds:
            return None
        return int(feeds[first.name].shape[0])

    checks, failure = compare_runs(reference, ort_runner(candidate, optimization=optimization),
                                   feeds_list, atol=atol, rtol=rtol, batch_dim_of=batch_of, adjust=adjust)
    batches = sorted({b for b in (batch_of(f) for f in feeds_list) if b is not None})
    return VerifyReport(checks, atol, rtol, batches, [describe(f) for f in feeds_list],
                        reference_name, engine_name(optimization), failure, list(notes))


def verify_onnx(
    reference_model: ir.Model,
    candidate_model: ir.Model,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    dim_sizes: Mapping[str, Sequence[int]] | None = None,
    examples: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    plan: Plan | None = None,
) -> VerifyReport:
    """Verify a transformed ONNX model against the model it came from (both in onnxruntime).

    The inputs: ``plan`` (from :func:`slipway.verify.probe.plan_inputs`: the user's data or
    shapes, or sizes derived from the model), else random ones at ``dim_sizes``; with neither,
    a plan is derived here.
    """
    specs = input_specs(reference_model, examples)
    reference = ort_runner(reference_model)
    if plan is None and dim_sizes is None and examples is None:
        plan = plan_inputs(reference_model, reference, batch_sizes=batch_sizes, seed=seed)
    return verify(reference, candidate_model, specs, atol=atol, rtol=rtol,
                  batch_sizes=batch_sizes, dim_sizes=dim_sizes, seed=seed,
                  reference_name="the input ONNX model in " + engine_name(),
                  feeds=plan.feeds if plan is not None else None, notes=plan.notes if plan is not None else ())


def record(model: ir.Model, report: VerifyReport, prefix: str = "slipway.verify") -> None:
    """Write the report into the model's ``metadata_props``."""
    for key in [k for k in model.metadata_props if k.startswith(prefix + ".")]:
        del model.metadata_props[key]
    model.metadata_props.update(report.metadata(prefix))


def commit(
    model: ir.Model,
    report: VerifyReport,
    output_path: str | os.PathLike | None = None,
    *,
    prefix: str = "slipway.verify",
    metadata: Mapping[str, str] | None = None,
) -> VerifiedModel:
    """Raise :class:`VerificationError` if the report failed (nothing is written); otherwise
    record it (and ``metadata``) in the model and, given a path, write the model atomically."""
    report.raise_if_failed()
    record(model, report, prefix)
    model.metadata_props.update(metadata or {})
    path = save(model, output_path) if output_path is not None else None
    return VerifiedModel(model, report, path)
