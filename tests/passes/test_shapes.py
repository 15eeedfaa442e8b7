from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from slipway.model import dims
from slipway.passes import PASSES
from slipway.passes.shapes import InferShapes
from tests.passes.util import assert_same, copy, make, tensor

rng = np.random.default_rng(0)


def value(model: ir.Model, name: str) -> ir.Value:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for v in node.outputs:
            if v.name == name:
                return v
    raise KeyError(name)


def test_registered_and_documented():
    assert PASSES["infer-shapes"] is InferShapes
    assert "->" in InferShapes().summary


def test_static_and_symbolic_dims_are_inferred_and_kept():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["t", "s"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT16)]
    model = make(nodes, [tensor("x", ["batch", 4, 6])], [tensor("y", [4, "batch", 2, 3], TensorProto.FLOAT16)],
                 {"s": np.array([0, 0, 2, 3])})
    before = copy(model)
    result = InferShapes()(model)
    assert result.changes == {"value": 2} and not result.warnings
    assert dims(value(model, "t")) == [4, "batch", 6]
    assert dims(value(model, "r")) == [4, "batch", 2, 3]
    assert value(model, "r").dtype == ir.DataType.FLOAT
    assert not InferShapes()(model).modified  # idempotent
    for b in (1, 3):
        assert_same(before, model, {"x": rng.standard_normal((b, 4, 6)).astype(np.float32)})


def test_custom_domain_op_does_not_stop_inference():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Foo", ["a"], ["b"], domain="my.ops"),
             helper.make_node("Relu", ["b"], ["y"]), helper.make_node("Transpose", ["a"], ["z"], perm=[1, 0])]
    graph = helper.make_graph(nodes, "g", [tensor("x", ["batch", 4])],
                              [tensor("y", ["batch", "n"]), tensor("z", [None, None])])
    proto = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17),
                                                    helper.make_operatorsetid("my.ops", 1)])
    model = ir.serde.deserialize_model(proto)
    result = InferShapes()(model)
    assert result.modified and not result.warnings
    assert dims(value(model, "a")) == ["batch", 4]
    assert dims(value(model, "z")) == [4, "batch"]
    assert value(model, "b").shape is None  # nothing is made up for the custom op
    assert dims(value(model, "y")) == ["batch", "n"]  # what the model declared stays


def test_known_dims_are_never_made_anonymous():
    # inference cannot see through a Reshape whose shape is computed; the declared output stays named
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    model = make(nodes, [tensor("x", ["batch", 4])], [tensor("y", ["batch", 4])])
    value(model, "r").shape = ir.Shape([ir.SymbolicDim("batch"), 4])
    InferShapes()(model)
    assert dims(value(model, "r")) == ["batch", 4] and dims(model.graph.outputs[0]) == ["batch", 4]


def test_if_branches_are_inferred():
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "then", [], [tensor("t", ["b", 3])])
    else_g = helper.make_graph([helper.make_node("Transpose", ["x"], ["e0"], perm=[0, 1]),
                                helper.make_node("Abs", ["e0"], ["e"])], "else", [], [tensor("e", ["b", 3])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    model = make(nodes, [tensor("x", ["b", 3])], [tensor("y", ["b", 3])], {"zero": np.array(0, np.float32)})
    InferShapes()(model)
    assert dims(value(model, "e0")) == ["b", 3]


def test_too_big_to_serialize_is_skipped_with_a_warning():
    big = helper.make_tensor("v", TensorProto.FLOAT, [64], np.ones(64, np.float32))
    nodes = [helper.make_node("Constant", [], ["c"], value=big), helper.make_node("Add", ["x", "c"], ["y"])]
    model = make(nodes, [tensor("x", ["b", 64])], [tensor("y", ["b", 64])])
    result = InferShapes(limit_bytes=100)(model)
    assert not result.modified and "skipped" in result.warnings[0]
    assert value(model, "c").shape is None


def test_external_weights_stay_on_disk(tmp_path):
    w = rng.standard_normal((512, 8)).astype(np.float32)
    model = make([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                 [tensor("x", ["b", 512])], [tensor("y", ["b", 8])], {"w": w})
    ir.save(model, tmp_path / "m.onnx", external_data="m.data")
    lazy = ir.load(tmp_path / "m.onnx")
    assert InferShapes()(lazy).modified
    assert dims(value(lazy, "m")) == ["b", 8]
    assert isinstance(lazy.graph.initializers["w"].const_value, ir.ExternalTensor)
