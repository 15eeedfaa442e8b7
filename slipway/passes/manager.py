"""Run passes to a fixed point, with per-pass reports, safe rollback and optional per-pass checks.

:class:`PassManager` runs its passes in order, again and again, until an iteration changes
nothing (early stop) or ``max_iterations`` is reached. For every pass it records what changed
(counts per rule, summed over iterations), the time it took and its warnings.

Safety: before each pass the manager keeps a snapshot of the model (:func:`slipway.graph.copy_model`:
new nodes and values, weights shared). A pass that raises is rolled back to the snapshot, disabled for the
rest of the run and named in a warning - a half-rewritten graph is never kept. With a ``check``
callable (``--verify-each``), the model after each modifying pass is compared with the model
before it; a failure raises :class:`VerificationError` naming that pass and the passes before it,
which bisects a numerical problem to the pass that caused it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from slipway.errors import UserError, VerificationError, one_line
from slipway.graph import copy_model
from slipway.passes.base import PASSES, Pass

__all__ = ["DEFAULT_ORDER", "PassRecord", "ManagerReport", "PassManager", "make_passes"]

# The default pipeline, in order. Cheap clean-ups come first so fusions see canonical graphs;
# dead code and duplicate removal come last so the result carries nothing unused.
DEFAULT_ORDER = [
    "convert-opset",
    "infer-shapes",
    "fold-constants",
    "eliminate",
    "fold-shape-subgraphs",
    "fold-qat-batchnorm",
    "fuse-batchnorm",
    "fuse-pad-conv",
    "fuse-conv-affine",
    "merge-repvgg",
    "fuse-layernorm",
    "fuse-gelu",
    "sink-transposes",
    "matmul-add-to-gemm",
    "cse",
    "dedup-initializers",
    "remove-dead",
]

# (model before the pass, model after it) -> a one-line failure, or "" when they agree
Check = Callable[[ir.Model, ir.Model], str]


def make_passes(names: Sequence[str] | None = None, skip: Sequence[str] = (), **options: Any) -> list[Pass]:
    """Instantiate passes by name (default: :data:`DEFAULT_ORDER`), minus ``skip``.

    ``options`` (``target``, ``target_opset``, ``max_growth``, ``allow_growth``, ...) go to every
    pass whose constructor accepts them.
    """
    chosen = list(names) if names else [n for n in DEFAULT_ORDER if n in PASSES]
    unknown = [n for n in [*chosen, *skip] if n not in PASSES]
    if unknown:
        raise UserError(f"unknown pass {unknown[0]!r} (available: {', '.join(sorted(PASSES))})")
    passes = []
    for name in chosen:
        if name in skip:
            continue
        cls = PASSES[name]
        accepted = inspect.signature(cls).parameters
        passes.append(cls(**{k: v for k, v in options.items() if k in accepted}))
    return passes


@dataclass
class PassRecord:
    name: str
    changes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    failed: str = ""  # why the pass was rolled back and disabled

    @property
    def total(self) -> int:
        return sum(self.changes.values())

    def to_dict(self) -> dict[str, Any]:
        return {"changes": dict(self.changes), "total": self.total, "seconds": round(self.seconds, 4),
                "warnings": list(self.warnings), "failed": self.failed}


@dataclass
class ManagerReport:
    records: dict[str, PassRecord]
    iterations: int
    converged: bool

    @property
    def warnings(self) -> list[str]:
        return [w for r in self.records.values() for w in ([r.failed] if r.failed else []) + r.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {name: r.to_dict() for name, r in self.records.items()}


def snapshot(model: ir.Model) -> ir.Model:
    """A copy of the model to roll back to (:func:`slipway.graph.copy_model`); later edits of
    ``model`` do not reach it."""
    return copy_model(model)


def restore(state: ir.Model) -> ir.Model:
    """A fresh copy of a :func:`snapshot` (the snapshot itself stays as it is, for another restore)."""
    return copy_model(state)


class PassManager:
    def __init__(self, passes: Sequence[Pass], *, max_iterations: int = 8, check: Check | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.passes = list(passes)
        self.max_iterations = max_iterations
        self.check = check
        self.progress = progress

    def __call__(self, model: ir.Model) -> tuple[ir.Model, ManagerReport]:
        records = {p.name: PassRecord(p.name) for p in self.passes}
        disabled: set[str] = set()
        done: list[str] = []
        iterations, converged = 0, False
        while iterations < self.max_iterations:
            iterations += 1
            changed = False
            for p in self.passes:
                if p.name in disabled:
                    continue
                if self.progress:
                    self.progress(f"iteration {iterations}: {p.name}")
                model, modified = self._run_one(p, model, records[p.name], done, disabled)
                changed = changed or modified
                done.append(p.name)
            if not changed:
                converged = True
                break
        return model, ManagerReport(records, iterations, converged)

    def _run_one(self, p: Pass, model: ir.Model, record: PassRecord, done: list[str],
                 disabled: set[str]) -> tuple[ir.Model, bool]:
        state = snapshot(model)
        t0 = time.perf_counter()
        try:
            result = p(model)
        except (UserError, VerificationError):
            raise
        except Exception as e:  # a bug or an unhandled case in the pass: roll back, go on without it
            record.seconds += time.perf_counter() - t0
            record.failed = f"pass {p.name} failed and was skipped: {one_line(e, typed=True)}"
            disabled.add(p.name)
            return state, False  # the snapshot itself: nothing else holds it
        record.seconds += time.perf_counter() - t0
        for w in result.warnings:
            if w not in record.warnings:
                record.warnings.append(w)
        for rule, n in result.changes.items():
            record.changes[rule] = record.changes.get(rule, 0) + n
        if result.modified and self.check is not None:
            failure = self.check(state, result.model)  # the snapshot is not needed after this
            if failure:
                before = ", ".join(dict.fromkeys(done)) or "none"
                raise VerificationError(f"pass {p.name} changed the results: {failure} (passes before it: {before})")
        return result.model, result.modified

    def explain(self, model: ir.Model) -> list[str]:
        """Why rules did not match, pass by pass, on a copy of ``model``."""
        lines: list[str] = []
        state = snapshot(model)
        for p in self.passes:
            try:
                lines.extend(p.explain(restore(state)))
            except Exception as e:
                lines.append(f"{p.name}: cannot explain ({one_line(e, typed=True)})")
        return lines
