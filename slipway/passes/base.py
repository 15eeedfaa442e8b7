"""The pass interface: a pass is a small named object, ``pass_(model) -> PassResult``.

A pass rewrites an ``onnx_ir.Model`` in place and returns what it changed as counts per rule
(``{"Identity": 3, "Dropout": 1}``). It must never leave a broken model: a node it cannot handle
is left unchanged and named in ``warnings``. ``explain(model)`` returns, without changing the
model, one line per place where a rule *almost* matched and why it did not (``--explain``).

:class:`Pass` is an ``onnx_ir.passes.InPlacePass`` (so it runs inside onnx_ir's ``Sequential`` /
``PassManager`` too, and its ``requires`` / ``ensures`` hooks are onnx_ir's) and its
:class:`PassResult` an ``onnx_ir.passes.PassResult``; slipway adds the name, the per-rule counts,
the warnings and ``explain``. Subclasses implement :meth:`Pass.run`.

Rule-based passes built on onnxscript's pattern rewriter derive from :class:`RulesPass`: they
list their rules and get per-rule counts and explanations for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx_ir as ir
from onnxscript.rewriter import MatchingTracer, MatchStatus, RewriteRuleSet

from slipway.graph import label

__all__ = ["PassResult", "Pass", "RulesPass", "rule_name", "PASSES", "register"]


@dataclass
class PassResult(ir.passes.PassResult):
    """onnx_ir's result (``model``, ``modified``) plus what changed, per rule, and the warnings."""

    changes: dict[str, int] = field(default_factory=dict)  # rule name -> times applied
    warnings: list[str] = field(default_factory=list)  # one line each, naming the node


class Pass(ir.passes.InPlacePass):
    """Base class. Subclasses set ``name`` (kebab-case, what ``--passes`` takes), a docstring
    whose first line states the rewrite as an identity, and implement :meth:`run`."""

    name: str = ""
    # Passes that may change speed either way (layout or op-choice rewrites) are "risky": the
    # never-slower check can drop them while keeping the rest.
    risky: bool = False

    def call(self, model: ir.Model) -> PassResult:
        result = self.run(model)
        result.changes = {k: v for k, v in result.changes.items() if v}
        result.modified = result.modified or bool(result.changes)
        return result

    def run(self, model: ir.Model) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError

    def explain(self, model: ir.Model) -> list[str]:
        """Why rules did not match (without changing the model). Default: nothing to say."""
        return []

    @property
    def summary(self) -> str:
        doc = (type(self).__doc__ or "").strip().splitlines()
        return doc[0] if doc else self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def rule_name(rule: object) -> str:
    return getattr(rule, "name", None) or type(rule).__name__


class RulesPass(Pass):
    """A pass made of onnxscript rewrite rules, applied one rule at a time to count each."""

    def rules(self, model: ir.Model) -> Sequence[object]:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, model: ir.Model) -> PassResult:
        changes: dict[str, int] = {}
        for rule in self.rules(model):
            n = RewriteRuleSet([rule]).apply_to_model(model)
            if n:
                changes[rule_name(rule)] = changes.get(rule_name(rule), 0) + n
        return PassResult(model, bool(changes), changes)

    def explain(self, model: ir.Model) -> list[str]:
        tracer = MatchingTracer()
        RewriteRuleSet(list(self.rules(model))).apply_to_model(model, tracer=tracer)
        lines = []
        for rule, matches in tracer.best_matches_map.items():
            for m in matches:
                # A pattern that matched but whose check or replacement failed is a near miss worth
                # telling; a plain structural mismatch ("OpType mismatch") is noise.
                if m.status not in (MatchStatus.CONDITION_FAILED, MatchStatus.REPLACEMENT_FAILED):
                    continue
                reason = m.match_result.reason or "pattern did not match"
                lines.append(f"{self.name}/{rule_name(rule)}: {label(m.root_node)}: {reason}")
        return lines


PASSES: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    PASSES[cls.name] = cls
    return cls
