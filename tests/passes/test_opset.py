from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from slipway.errors import UserError
from slipway.passes import PASSES
from slipway.passes.opset import ConvertOpset
from tests.passes.util import assert_same, copy, make, op_types, tensor

rng = np.random.default_rng(0)


def opset11_model() -> ir.Model:
    """Unsqueeze/Squeeze/ReduceSum with attribute axes (inputs since opset 13/18), and a 300-column weight."""
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]), helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
             helper.make_node("MatMul", ["s", "w"], ["m"]), helper.make_node("ReduceSum", ["m"], ["y"], axes=[1])]
    return make(nodes, [tensor("x", ["b", 4])], [tensor("y", ["b", 1])],
                {"w": rng.standard_normal((4, 300)).astype(np.float32)}, opset=11)


def feeds(batch: int) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32)}


def test_registered_and_documented():
    assert PASSES["convert-opset"] is ConvertOpset
    assert "->" in ConvertOpset().summary


def test_no_target_or_same_opset_changes_nothing():
    model = opset11_model()
    assert not ConvertOpset()(model).modified
    assert not ConvertOpset(target_opset=11)(model).modified
    assert model.opset_imports[""] == 11


def test_up_then_down_keeps_numbers_and_weights():
    model = opset11_model()
    before = copy(model)
    weight = model.graph.initializers["w"].const_value
    result = ConvertOpset(target_opset=18)(model)
    assert result.changes == {"opset 11->18": 1}
    assert model.opset_imports[""] == 18
    assert op_types(model).count("Constant") == 3  # the axes became inputs
    assert model.graph.initializers["w"].const_value is weight  # not copied
    assert [v.name for v in model.graph.inputs] == ["x"] and [v.name for v in model.graph.outputs] == ["y"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    for b in (1, 3):
        assert_same(before, model, feeds(b))
    assert not ConvertOpset(target_opset=18)(model).modified
    assert ConvertOpset(target_opset=13)(model).changes == {"opset 18->13": 1}
    assert model.opset_imports[""] == 13
    assert_same(before, model, feeds(2))


def test_external_weights_are_not_loaded(tmp_path):
    model = opset11_model()
    ir.save(model, tmp_path / "m.onnx", external_data="m.data")
    lazy = ir.load(tmp_path / "m.onnx")
    ConvertOpset(target_opset=17)(lazy)
    assert isinstance(lazy.graph.initializers["w"].const_value, ir.ExternalTensor)
    ir.external_data.load_to_model(lazy)
    assert_same(model, lazy, feeds(2))


def test_an_op_without_adapter_is_a_one_line_user_error():
    model = make([helper.make_node("Gelu", ["x"], ["y"], name="act")], [tensor("x", ["b", 4])], [tensor("y", ["b", 4])],
                 opset=20)
    with pytest.raises(UserError, match=r"cannot convert opset 20 to 17: op Gelu \(node 'act'\)") as info:
        ConvertOpset(target_opset=17)(model)
    assert "\n" not in str(info.value)
    assert model.opset_imports[""] == 20 and op_types(model) == ["Gelu"]  # untouched


@pytest.mark.parametrize("bad", [3, 999, "17", True])
def test_bad_target_is_a_user_error(bad):
    with pytest.raises(UserError, match="target opset"):
        ConvertOpset(target_opset=bad)


def test_initializer_that_is_also_an_input_stays_an_input():
    model = opset11_model()
    model.graph.inputs.append(model.graph.initializers["w"])  # a weight the caller may override
    before = copy(model)
    ConvertOpset(target_opset=17)(model)
    assert [v.name for v in model.graph.inputs] == ["x", "w"] and "w" in model.graph.initializers
    assert_same(before, model, feeds(2))


def test_local_functions_are_inlined_and_converted():
    body = [helper.make_node("Unsqueeze", ["a"], ["u"], axes=[0]), helper.make_node("Squeeze", ["u"], ["b"], axes=[0])]
    function = helper.make_function("local", "Same", ["a"], ["b"], body, [helper.make_operatorsetid("", 11)])
    graph = helper.make_graph([helper.make_node("Same", ["x"], ["t"], domain="local"), helper.make_node("Neg", ["t"], ["y"])],
                              "g", [tensor("x", ["b", 4])], [tensor("y", ["b", 4])])
    proto = helper.make_model(graph, functions=[function], opset_imports=[helper.make_operatorsetid("", 11),
                                                                          helper.make_operatorsetid("local", 1)])
    proto.ir_version = 8
    model = ir.serde.deserialize_model(proto)
    before = copy(model)
    ConvertOpset(target_opset=17)(model)
    assert not model.functions and op_types(model) == ["Constant", "Unsqueeze", "Constant", "Squeeze", "Neg"]
    assert_same(before, model, feeds(3))
