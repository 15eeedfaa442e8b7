"""PassManager: fixed point with early stop, rollback of a failing pass, --verify-each bisection."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from slipway.errors import UserError, VerificationError
from slipway.passes import PASSES
from slipway.passes.base import Pass, PassResult
from slipway.passes.manager import DEFAULT_ORDER, PassManager, make_passes
from slipway.verify import verify_onnx
from tests.passes.util import make, op_types, run, tensor


def _chain(n: int = 3) -> ir.Model:
    """x -> Relu -> Relu -> ... -> y"""
    names = ["x"] + [f"t{i}" for i in range(n - 1)] + ["y"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}") for i in range(n)]
    return make(nodes, [tensor("x", ["batch", 4])], [tensor("y", ["batch", 4])])


class DropOneRelu(Pass):
    """Relu(Relu(x)) -> Relu(x), one pair per call (so it needs several iterations)."""

    name = "test-drop-relu"

    def run(self, model: ir.Model) -> PassResult:
        for node in model.graph:
            prev = node.inputs[0].producer()
            if node.op_type == "Relu" and prev is not None and prev.op_type == "Relu":
                node.replace_input_with(0, prev.inputs[0])
                model.graph.remove(prev, safe=True)
                return PassResult(model, True, {"Relu-Relu": 1})
        return PassResult(model, False)


class Explodes(Pass):
    """x -> x, but half-rewrites the graph and then raises."""

    name = "test-explodes"

    def run(self, model: ir.Model) -> PassResult:
        node = next(iter(model.graph))
        node.op_type = "Sigmoid"  # a half-done rewrite the manager must undo
        raise RuntimeError("boom")


class Negate(Pass):
    """Relu(x) -> Neg(x): wrong on purpose."""

    name = "test-negate"

    def run(self, model: ir.Model) -> PassResult:
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Neg"
                return PassResult(model, True, {"Relu": 1})
        return PassResult(model, False)


def _check(before: ir.Model, after: ir.Model) -> str:
    report = verify_onnx(before, after)
    return "" if report.ok else report.failure or "mismatch"


def test_runs_to_a_fixed_point_and_counts_per_rule():
    model, report = PassManager([DropOneRelu()], max_iterations=10)(_chain(4))
    assert op_types(model) == ["Relu"]
    assert report.records["test-drop-relu"].changes == {"Relu-Relu": 3}
    assert report.converged and report.iterations == 4  # 3 changing iterations + 1 that finds nothing


def test_stops_at_max_iterations():
    _, report = PassManager([DropOneRelu()], max_iterations=2)(_chain(4))
    assert not report.converged and report.iterations == 2


def test_a_failing_pass_is_rolled_back_disabled_and_named():
    model, report = PassManager([Explodes(), DropOneRelu()])(_chain(3))
    assert op_types(model) == ["Relu"]  # no Sigmoid left from the half-done rewrite
    assert "test-explodes failed" in report.records["test-explodes"].failed
    assert any("boom" in w for w in report.warnings)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(run(model, {"x": x})[0], np.maximum(x, 0))


def test_verify_each_names_the_pass_that_broke_the_numbers():
    with pytest.raises(VerificationError, match=r"pass test-negate changed the results.*passes before it: test-drop-relu"):
        PassManager([DropOneRelu(), Negate()], check=_check)(_chain(2))


def test_make_passes_by_name_skip_and_unknown():
    names = [n for n in DEFAULT_ORDER if n in PASSES]
    assert [p.name for p in make_passes()] == names
    if names:
        assert names[0] not in [p.name for p in make_passes(skip=[names[0]])]
    with pytest.raises(UserError, match="unknown pass 'nope'"):
        make_passes(["nope"])
