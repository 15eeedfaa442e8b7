from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from slipway.passes import PASSES
from slipway.passes.fold import FoldConstants, tensor_bytes
from tests.passes.util import assert_same, copy, make, op_types, tensor

rng = np.random.default_rng(0)


def feeds(shape) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal(shape).astype(np.float32)}


def fold(model: ir.Model, shapes, **kwargs):
    before = copy(model)
    result = FoldConstants(**kwargs)(model)
    for shape in shapes:
        assert_same(before, model, feeds(shape))
    again = FoldConstants(**kwargs)(model)
    assert not again.modified, again.changes
    return result


def test_registered_and_documented():
    assert PASSES["fold-constants"] is FoldConstants
    assert "->" in FoldConstants().summary


def test_constant_chain_folds_into_one_initializer():
    value = helper.make_tensor("v", TensorProto.DOUBLE, [4], [1, 2, 3, 4])
    nodes = [helper.make_node("Constant", [], ["c"], value=value),
             helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["cf", "two"], ["c2"]),
             helper.make_node("Add", ["x", "c2"], ["y"])]
    model = make(nodes, [tensor("x", ["batch", 4])], [tensor("y", ["batch", 4])], {"two": np.array(2, np.float32)})
    result = fold(model, [(1, 4), (3, 4)])
    assert result.changes == {"Constant": 1, "Cast": 1, "Mul": 1}
    assert op_types(model) == ["Add"]
    folded = model.graph.node(0).inputs[1]
    assert folded.is_initializer() and folded.const_value.numpy().tolist() == [2, 4, 6, 8]
    assert list(model.graph.initializers) == [folded.name]  # the inputs of the fold are gone


def test_shape_of_static_tensor_and_gather_fold():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["n"], axis=0),
             helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "nf"], ["y"])]
    model = make(nodes, [tensor("x", [2, 5])], [tensor("y", [2, 5])], {"i": np.array(1)})
    result = fold(model, [(2, 5)])
    assert result.changes == {"Shape": 1, "Gather": 1, "Cast": 1}
    assert op_types(model) == ["Mul"]
    assert model.graph.node(0).inputs[1].const_value.numpy().item() == 5.0


def test_size_guard_refuses_a_big_fold_and_names_the_node():
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["z"], name="big_fill", value=fill),
             helper.make_node("ReduceSum", ["z", "axes"], ["zs"], keepdims=0),
             helper.make_node("Add", ["x", "zs"], ["y"])]
    inits = {"shape": np.array([1000, 4]), "axes": np.array([0]), "w": rng.standard_normal(1000).astype(np.float32)}
    model = make(nodes, [tensor("x", ["b", 4])], [tensor("y", ["b", 4])], inits)
    result = fold(model, [(3, 4)])
    assert not result.modified
    assert any("'big_fill'" in w and "not folded" in w for w in result.warnings)
    assert op_types(model) == ["ConstantOfShape", "ReduceSum", "Add"]
    # allowed to grow, the fill and the reduction over it fold into a 4-element constant
    result = fold(model, [(3, 4)], allow_growth=True)
    assert result.changes == {"ConstantOfShape": 1, "ReduceSum": 1}
    assert op_types(model) == ["Add"]


def test_small_constant_of_shape_is_folded():
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["z"], value=fill), helper.make_node("Mul", ["x", "z"], ["y"])]
    model = make(nodes, [tensor("x", ["b", 4])], [tensor("y", ["b", 4])], {"shape": np.array([4])})
    result = fold(model, [(1, 4), (3, 4)])
    assert result.changes == {"ConstantOfShape": 1}
    assert op_types(model) == ["Mul"]


def test_widening_cast_of_weights_counts_against_the_budget():
    w = rng.standard_normal((64, 64)).astype(np.float16)
    nodes = [helper.make_node("Cast", ["w"], ["wf"], name="widen", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    model = make(nodes, [tensor("x", ["b", 64])], [tensor("y", ["b", 64])], {"w": w})
    size = tensor_bytes(model)
    result = fold(model, [(2, 64)])
    assert any("'widen'" in w for w in result.warnings) and op_types(model) == ["Cast", "MatMul"]
    assert tensor_bytes(model) == size
    result = fold(model, [(2, 64)], max_growth=1.5)
    assert result.changes == {"Cast": 1} and tensor_bytes(model) == 2 * size


def test_custom_domain_ops_are_left_alone():
    nodes = [helper.make_node("Neg", ["c"], ["n"]), helper.make_node("Foo", ["n"], ["f"], domain="my.ops"),
             helper.make_node("Add", ["x", "n"], ["y"])]
    graph = helper.make_graph(nodes, "g", [tensor("x", [3])], [tensor("y", [3]), tensor("f", [3])],
                              [helper.make_tensor("c", TensorProto.FLOAT, [3], [1, 2, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17),
                                                    helper.make_operatorsetid("my.ops", 1)])
    model = ir.serde.deserialize_model(proto)
    result = FoldConstants()(model)
    assert result.changes == {"Neg": 1}
    assert op_types(model) == ["Foo", "Add"]


def test_constants_inside_if_branches_fold():
    then_g = helper.make_graph([helper.make_node("Add", ["a", "a"], ["a2"]), helper.make_node("Mul", ["x", "a2"], ["t"])],
                               "then", [], [tensor("t", ["b", 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [tensor("e", ["b", 3])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    inits = {"a": np.array([1, 2, 3], np.float32), "zero": np.array(0, np.float32)}
    model = make(nodes, [tensor("x", ["b", 3])], [tensor("y", ["b", 3])], inits)
    before = copy(model)
    result = FoldConstants()(model)
    assert result.changes == {"Add": 1}
    then_branch = model.graph.node(2).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_branch] == ["Mul"]
    assert then_branch.node(0).inputs[1].const_value.numpy().tolist() == [2, 4, 6]
    for sign in (1, -1):
        assert_same(before, model, {"x": sign * np.abs(feeds((2, 3))["x"])})


def test_external_weights_are_not_loaded(tmp_path):
    w = rng.standard_normal((256, 8)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [3.0])),
             helper.make_node("Mul", ["k", "k"], ["k2"]), helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Mul", ["m", "k2"], ["y"])]
    model = make(nodes, [tensor("x", ["b", 256])], [tensor("y", ["b", 8])], {"w": w})
    ir.save(model, tmp_path / "m.onnx", external_data="m.data")
    lazy = ir.load(tmp_path / "m.onnx")
    result = FoldConstants()(lazy)
    assert result.changes == {"Constant": 1, "Mul": 1}
    assert isinstance(lazy.graph.initializers["w"].const_value, ir.ExternalTensor)
    ir.external_data.load_to_model(lazy)
    assert_same(model, lazy, feeds((2, 256)))


def test_static_shape_and_value_floats_constants_end_as_initializers():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["z", "s"], ["y"]),
             helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0]), helper.make_node("Add", ["z", "k"], ["y2"])]
    model = make(nodes, [tensor("x", [2, 3]), tensor("z", [3, 2])], [tensor("y", [2, 3]), tensor("y2", [3, 2])])
    before = copy(model)
    result = FoldConstants()(model)
    assert result.changes == {"Shape": 1, "Constant": 1}
    assert op_types(model) == ["Reshape", "Add"]
    assert {k: v.const_value.numpy().tolist() for k, v in model.graph.initializers.items()} == {"k": [1, 2], "s": [2, 3]}
    feed = {"x": np.zeros((2, 3), np.float32), "z": rng.standard_normal((3, 2)).astype(np.float32)}
    assert_same(before, model, feed)
    assert not FoldConstants()(model).modified
