from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from slipway.errors import UserError
from slipway.passes import PASSES
from slipway.passes.gemm import MatMulAddToGemm
from tests.passes.util import assert_same, copy, make, op_types, tensor

rng = np.random.default_rng(3)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def model_with(a_shape, bias, bias_first=False, w_input=False):
    add_inputs = ["c", "m"] if bias_first else ["m", "c"]
    nodes = [helper.make_node("MatMul", ["a", "W"], ["m"], name="mm"),
             helper.make_node("Add", add_inputs, ["y"], name="add")]
    inputs = [tensor("a", a_shape)] + ([tensor("W", [6, 5])] if w_input else [])
    inits = {"c": bias} if w_input else {"W": f32(6, 5), "c": bias}
    return make(nodes, inputs, [tensor("y", [*a_shape[:-1], 5])], inits)


def test_registered_risky_and_targets():
    assert PASSES["matmul-add-to-gemm"] is MatMulAddToGemm and MatMulAddToGemm.risky
    assert MatMulAddToGemm(target="openvino").target == "openvino"
    with pytest.raises(UserError, match="unknown target 'tensorrt'"):
        MatMulAddToGemm(target="tensorrt")


@pytest.mark.parametrize("target", ["ort", "openvino"])
@pytest.mark.parametrize("bias_shape,bias_first", [((5,), False), ((1, 5), True), ((), False)])
def test_2d_matmul_add_becomes_gemm(target, bias_shape, bias_first):
    model = model_with([4, 6], f32(*bias_shape), bias_first)
    before = copy(model)
    result = MatMulAddToGemm(target=target)(model)
    assert result.changes == {"Add(MatMul)": 1} and op_types(model) == ["Gemm"]
    assert model.graph.outputs[0].name == "y"
    assert_same(before, model, {"a": f32(4, 6)})
    assert not MatMulAddToGemm(target=target)(model).modified


def test_3d_matmul_is_left_for_ort_fusions():
    model = model_with([2, 4, 6], f32(5))
    assert "A is 3-D" in MatMulAddToGemm().explain(model)[0]
    result = MatMulAddToGemm()(model)
    assert not result.modified and op_types(model) == ["MatMul", "Add"]


def test_row_bias_and_runtime_weight_are_left():
    model = model_with([4, 6], f32(4, 5))
    assert "not broadcastable to [5]" in MatMulAddToGemm().explain(model)[0]
    assert not MatMulAddToGemm()(model).modified
    model = model_with([4, 6], f32(5), w_input=True)
    assert "not a constant" in MatMulAddToGemm().explain(model)[0]
    assert not MatMulAddToGemm()(model).modified


def test_residual_add_is_not_a_candidate():
    nodes = [helper.make_node("MatMul", ["a", "W"], ["m"]), helper.make_node("Add", ["m", "a"], ["y"])]
    model = make(nodes, [tensor("a", [4, 6])], [tensor("y", [4, 6])], {"W": f32(6, 6)})
    assert MatMulAddToGemm().explain(model) == [] and not MatMulAddToGemm()(model).modified
