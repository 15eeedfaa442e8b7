"""slipway.compare.bisect: the first pass whose result diverges, with its layer report."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from slipway.compare import bisect
from slipway.errors import UserError
from slipway.passes import PASSES, Pass, PassResult
from tests.compare import util
from tests.passes.util import make, tensor

X = np.random.default_rng(7).standard_normal(util.SHAPE).astype(np.float32)


class FlipConvSign(Pass):
    """Conv(x, W) -> Conv(x, -W): a deliberately wrong pass."""

    name = "test-flip-sign"

    def __init__(self, node: str) -> None:
        self.node = node

    def run(self, model: ir.Model) -> PassResult:
        node = next(n for n in model.graph if n.name == self.node)
        w = node.inputs[1]
        w.const_value = ir.tensor(-w.const_value.numpy(), name=w.name)
        return PassResult(model, True, {"flip": 1})


class Nothing(Pass):
    """x -> x: changes nothing."""

    name = "test-nothing"

    def run(self, model: ir.Model) -> PassResult:
        return PassResult(model, False)


class Crash(Pass):
    """A pass with a bug."""

    name = "test-crash"

    def run(self, model: ir.Model) -> PassResult:
        raise KeyError("boom")


def bn_chain() -> ir.Model:
    """x -> conv1 -> bn -> relu1 -> conv2 -> relu2 -> conv3 -> y."""
    rng = np.random.default_rng(3)
    w = util.weights()
    w.update(scale=rng.uniform(0.5, 1.5, 8).astype(np.float32), bias=rng.standard_normal(8).astype(np.float32),
             mean=rng.standard_normal(8).astype(np.float32), var=rng.uniform(0.5, 2.0, 8).astype(np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "scale", "bias", "mean", "var"], ["b1"], name="bn"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["y"], name="conv3"),
    ]
    return make(nodes, [tensor("x", ["batch", 3, 8, 8])], [tensor("y", ["batch", 4, 8, 8])], w)


def test_the_wrong_pass_is_found_with_its_first_divergent_conv():
    model = bn_chain()
    r = bisect(model, [Nothing(), FlipConvSign("conv2"), Nothing()], feeds={"x": X})
    assert (r.culprit, r.index) == ("test-flip-sign", 1)
    assert [s.name for s in r.steps] == ["test-nothing", "test-flip-sign"]  # stops at the culprit
    assert r.steps[0].ok and r.steps[0].max_abs == 0.0 and not r.steps[1].ok and r.steps[1].modified
    first = r.report.first_divergent_node
    assert (first.name, first.op_type, first.tensor) == ("conv2", "Conv", "c2")
    assert "before test-flip-sign" in r.report.a
    assert [n.name for n in model.graph] == ["conv1", "bn", "relu1", "conv2", "relu2", "conv3"]  # not changed
    assert model.graph.initializers["W2"].const_value.numpy()[0, 0, 0, 0] == util.weights()["W2"][0, 0, 0, 0]


def test_correct_passes_have_no_culprit():
    needed = ["fuse-batchnorm", "eliminate", "remove-dead"]
    if any(n not in PASSES for n in needed):
        pytest.skip("graph passes not available")
    r = bisect(bn_chain(), needed, batch=2)
    assert r.culprit is None and r.report is None and [s.name for s in r.steps] == needed
    assert r.steps[0].modified and all(s.ok for s in r.steps)
    assert 0 < r.steps[0].max_abs < 1e-4  # folding the BatchNormalization changes rounding only


def test_a_real_pass_then_a_wrong_one():
    if "fuse-batchnorm" not in PASSES:
        pytest.skip("graph passes not available")
    r = bisect(bn_chain(), [PASSES["fuse-batchnorm"](), FlipConvSign("conv3")], feeds={"x": X})
    assert r.culprit == "test-flip-sign" and r.index == 1 and r.steps[0].ok
    assert r.report.first_divergent_node.name == "conv3"
    assert "bn" not in {d.node for d in r.report.layers}  # the report compares the fused model with the flipped one


def test_a_crashing_pass_is_the_culprit():
    r = bisect(bn_chain(), [Nothing(), Crash()], feeds={"x": X})
    assert r.culprit == "test-crash" and r.index == 1 and r.report is None
    assert "KeyError" in r.steps[1].error and "boom" in r.steps[1].error


def test_bad_passes_are_user_errors():
    with pytest.raises(UserError, match="unknown pass"):
        bisect(bn_chain(), ["no-such-pass"])
    with pytest.raises(UserError, match="not a pass"):
        bisect(bn_chain(), [42])


def test_to_dict_is_plain_json():
    import json

    r = bisect(bn_chain(), [FlipConvSign("conv1")], feeds={"x": X})
    d = json.loads(json.dumps(r.to_dict()))
    assert d["culprit"] == "test-flip-sign" and d["report"]["first_divergent_node"]["name"] == "conv1"
