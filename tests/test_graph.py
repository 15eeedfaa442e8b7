"""slipway.graph: the one graph toolkit (constants, names, editing, dead code, copies)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from slipway import graph as g
from tests.passes.util import make, tensor


def _if_model() -> ir.Model:
    """y = If(cond, then: a + w, else: a); ``w`` and ``a`` are read inside the branches only."""
    then = helper.make_graph([helper.make_node("Add", ["a", "w"], ["t"], name="inner_add")], "then", [],
                             [tensor("t", [2])])
    other = helper.make_graph([helper.make_node("Identity", ["a"], ["e"])], "else", [], [tensor("e", [2])])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
    return make(nodes, [tensor("x", [2]), tensor("cond", [], onnx.TensorProto.BOOL)], [tensor("y", [2])],
                {"w": np.ones(2, np.float32)})


def _value(model: ir.Model, name: str) -> ir.Value:
    for graph in model.graphs():
        found = ir.convenience.create_value_mapping(graph).get(name)
        if found is not None:
            return found
    raise KeyError(name)


# --- constants ----------------------------------------------------------------------------------

def test_const_initializer_constant_node_and_runtime_values():
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", onnx.TensorProto.INT64, [2], [3, 4])),
             helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Mul", ["s", "d"], ["y"])]
    model = make(nodes, [tensor("x", [2]), tensor("d", [2])], [tensor("y", [2])], {"w": np.arange(2, dtype=np.float32)})
    assert g.const(_value(model, "w")).tolist() == [0.0, 1.0]
    assert g.const(_value(model, "c")).tolist() == [3, 4]
    assert g.const_tensor(_value(model, "c")).dtype == ir.DataType.INT64
    assert g.const(_value(model, "x")) is None  # a graph input
    assert g.const(_value(model, "s")) is None  # computed
    assert g.const(None) is None
    assert g.const(_value(model, "w"), limit=1) is None and g.const(_value(model, "w"), limit=2) is not None
    assert g.float_const(_value(model, "w")) is not None and g.float_const(_value(model, "c")) is None


def test_const_graph_input_with_default_is_not_constant():
    model = make([helper.make_node("Add", ["x", "w"], ["y"])], [tensor("x", [2]), tensor("w", [2])],
                 [tensor("y", [2])], {"w": np.ones(2, np.float32)})
    w = model.graph.initializers["w"]
    assert w.is_graph_input() and w.const_value is not None
    assert g.const(w) is None and g.const_tensor(w) is None


def test_const_reads_external_tensors(tmp_path):
    data = np.array([1.5, -2.0, 3.0], np.float32)
    (tmp_path / "w.bin").write_bytes(data.tobytes())
    model = make([helper.make_node("Add", ["x", "w"], ["y"])], [tensor("x", [3])], [tensor("y", [3])],
                 {"w": np.zeros(3, np.float32)})
    w = model.graph.initializers["w"]
    w.const_value = ir.ExternalTensor("w.bin", 0, data.nbytes, ir.DataType.FLOAT, shape=ir.Shape([3]), name="w",
                                      base_dir=tmp_path)
    np.testing.assert_array_equal(g.const(w), data)


# --- names --------------------------------------------------------------------------------------

def test_is_op_and_label():
    relu = ir.Node("", "Relu", [ir.Value(name="x")], name="r")
    assert g.is_op(relu, "Relu", "Clip") and not g.is_op(relu, "Clip") and not g.is_op(None, "Relu")
    assert not g.is_op(ir.Node("com.microsoft", "Relu", []), "Relu")
    assert g.label(relu) == "Relu 'r'"
    unnamed = ir.Node("", "Relu", [], outputs=[ir.Value(name="y")])
    assert g.label(unnamed) == "Relu (producing 'y')"
    assert g.label(ir.Node("", "Relu", [])) == "Relu (unnamed)"


def test_names_are_unique_across_subgraphs():
    model = _if_model()
    names = g.Names(model)
    for taken in ("x", "a", "w", "y", "t", "e", "relu", "inner_add"):  # t, e, inner_add live in the branches
        assert names(taken) == f"{taken}_1"
    assert names("t") == "t_2"
    assert names("fresh") == "fresh" and names("fresh") == "fresh_1"
    names.release("fresh")
    assert names("fresh") == "fresh"


# --- editing ------------------------------------------------------------------------------------

def test_add_initializer_keeps_shape_and_shares_tensors():
    model = _if_model()
    scalar = g.add_initializer(model.graph, "s", np.float32(2.0))
    assert scalar.shape == ir.Shape([]) and scalar.dtype == ir.DataType.FLOAT
    assert model.graph.initializers["s"] is scalar and g.const(scalar).shape == ()
    source = np.arange(3, dtype=np.int64)
    v = g.add_initializer(model.graph, "v", source)
    source[0] = 9  # the array was copied
    assert g.const(v).tolist() == [0, 1, 2]
    w = model.graph.initializers["w"]
    shared = g.add_initializer(model.graph, "w_again", w.const_value)
    assert shared.const_value is w.const_value and shared.shape == ir.Shape([2])


def test_node_like_only_used_by_other_user_and_replace():
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"], name="mul"), helper.make_node("Add", ["m", "b"], ["y"])]
    model = make(nodes, [tensor("x", [2])], [tensor("y", [2])],
                 {"w": np.full(2, 2, np.float32), "b": np.ones(2, np.float32)})
    graph = model.graph
    mul, add = list(graph)
    assert g.only_used_by(mul.outputs[0], add) and not g.only_used_by(add.outputs[0], add)
    assert g.other_user(add.outputs[0], add) == "a graph output"
    assert g.other_user(mul.outputs[0], add) == "nothing"
    assert g.other_user(mul.inputs[0], add) == "Mul 'mul'"
    w_new = g.add_initializer(graph, "w_fused", np.full(2, 2, np.float32))
    b_new = g.add_initializer(graph, "b_fused", np.ones(2, np.float32))
    new = g.node_like(mul, "Mul", [mul.inputs[0], w_new], [], name="fused")
    assert new.domain == mul.domain and new.version == mul.version and new.name == "fused"
    new2 = g.node_like(mul, "Add", [new.outputs[0], b_new], [])
    old_w, old_b = mul.inputs[1], add.inputs[1]
    g.replace(graph, [mul, add], [new, new2], add.outputs[0], new2.outputs[0],
              renames=[(w_new, old_w), (b_new, old_b)])
    assert [n.op_type for n in graph] == ["Mul", "Add"]
    assert sorted(graph.initializers) == ["b", "w"]  # old ones dropped, their names taken over
    assert graph.outputs[0].name == "y"


def test_remove_dead_keeps_outputs_inputs_and_captured_values():
    model = _if_model()
    graph = model.graph
    relu, if_node = list(graph)
    unused = g.add_initializer(graph, "unused", np.zeros(2, np.float32))
    chain = ir.Node("", "Neg", [unused], name="neg")
    dead = ir.Node("", "Abs", [chain.outputs[0]], name="abs")
    graph.extend([chain, dead])
    # everything a branch captures (a, w), the graph output and the graph inputs stay
    dropped = g.remove_dead([relu, if_node, *relu.inputs, graph.initializers["w"], *graph.inputs, dead])
    assert dropped == {"unused"}
    assert [n.name for n in graph] == ["relu", "if"]
    assert "w" in graph.initializers and [v.name for v in graph.inputs] == ["x", "cond"]
    assert g.is_dead(if_node) is False
    graph.outputs.clear()  # now nothing reads y: the If (a node holding subgraphs) is still kept
    g.remove_dead([if_node])
    assert [n.name for n in graph] == ["relu", "if"]


def test_remove_dead_constant_nodes():
    model = make([helper.make_node("Constant", [], ["c"], value_float=1.0), helper.make_node("Relu", ["x"], ["y"])],
                 [tensor("x", [])], [tensor("y", [])])
    c = list(model.graph)[0].outputs[0]
    assert g.is_dead(c.producer())
    assert g.remove_dead([c]) == set()
    assert [n.op_type for n in model.graph] == ["Relu"]


# --- traversal, attributes, shapes --------------------------------------------------------------

def test_all_nodes_default_opset_and_attributes():
    model = _if_model()
    nodes = [n.op_type for n in g.all_nodes(model)]
    assert nodes[:2] == ["Relu", "If"] and sorted(nodes[2:]) == ["Add", "Identity"]  # bodies after their node
    assert len(list(model.graphs())) == 3
    assert g.default_opset(model) == 17
    model.opset_imports.pop("")
    assert g.default_opset(model) is None
    model.opset_imports["ai.onnx"] = 13
    assert g.default_opset(model) == 13
    node = ir.Node("", "Conv", [], [ir.AttrInt64("group", 2), ir.AttrInt64s("pads", [1, 1]), ir.AttrFloat32("a", 0.5),
                                    ir.AttrString("auto_pad", "VALID")])
    assert g.attr_int(node, "group", 1) == 2 and g.attr_int(node, "missing", 7) == 7
    assert g.attr_ints(node, "pads", []) == [1, 1] and g.attr_ints(node, "strides", (1,)) == [1]
    assert g.attr_float(node, "a", 0.0) == 0.5 and g.attr_float(node, "b", 1.5) == 1.5
    assert g.attr_str(node, "auto_pad", "NOTSET") == "VALID" and g.attr_str(node, "x", "d") == "d"


def test_infer_node_and_known_dims():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    model = make(nodes, [tensor("x", ["N", 6])], [tensor("y", ["N", 2, 3])], {"s": np.array([0, 2, 3], np.int64)})
    reshape = list(model.graph)[0]
    reshape.outputs[0].shape = None
    assert g.infer_node(reshape, 17)
    shape = reshape.outputs[0].shape
    assert list(shape)[1:] == [2, 3] and g.is_known_dim(shape[0]) and shape[0].value == "N"
    assert not g.infer_node(reshape, 17)  # nothing more to learn
    assert g.is_known_dim(3) and not g.is_known_dim(ir.SymbolicDim(None))


# --- copies -------------------------------------------------------------------------------------

def test_copy_model_is_independent():
    model = _if_model()
    model.meta["source"] = "here"
    copy = g.copy_model(model)
    assert copy is not model and copy.meta["source"] == "here"
    assert ir.serde.serialize_model(copy) == ir.serde.serialize_model(model)
    list(copy.graph)[0].op_type = "Sigmoid"
    copy.graph.initializers.pop("w")
    copy.graph.outputs[0].name = "renamed"
    assert [n.op_type for n in model.graph] == ["Relu", "If"]
    assert "w" in model.graph.initializers and model.graph.outputs[0].name == "y"


def test_copy_model_of_an_unsorted_graph():
    model = make([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])],
                 [tensor("x", [2])], [tensor("y", [2])])
    relu, neg = list(model.graph)
    model.graph.remove(neg)
    model.graph.insert_before(relu, neg)  # out of topological order
    copy = g.copy_model(model)
    assert [n.op_type for n in copy.graph] == ["Neg", "Relu"]
    assert copy.graph is not model.graph


# --- weights ------------------------------------------------------------------------------------

def test_out_channels_and_quantize_weight():
    w = np.zeros((8, 4, 3, 3))
    assert g.out_channels("Conv", w) == 8
    assert g.out_channels("ConvTranspose", w, group=2) == 8
    assert g.out_channels("Gemm", np.zeros((5, 7))) == 7 and g.out_channels("Gemm", np.zeros((5, 7)), trans_b=1) == 5
    x = np.array([[1.0, -2.0], [0.0, 0.0]])
    q, s = g.quantize_weight(x, 0)
    assert q.dtype == np.int8 and s.tolist() == pytest.approx([2 / 127, 1.0])
    assert q[0].tolist() == [64, -127] and q[1].tolist() == [0, 0]
