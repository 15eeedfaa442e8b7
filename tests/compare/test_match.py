"""slipway.compare.match: which tensor of B corresponds to which tensor of A."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from slipway.compare.match import match as match_models
from slipway.compare.run import typed_copy
from tests.compare import util
from tests.passes.util import make, tensor

F16 = TensorProto.FLOAT16


def match(a, b):
    """Match after shape inference, as compare does (the hand-built models carry no inner types)."""
    return match_models(typed_copy(a), typed_copy(b))


def qdq_input_model():
    """x -> Q -> DQ -> conv1 (weights dequantized too) -> relu1 -> conv2 -> relu2 -> conv3 -> y."""
    w = util.weights()
    w.update(s=np.array(0.05, np.float32), z=np.array(0, np.int8),
             W1q=np.round(w["W1"] / 0.01).astype(np.int8), ws=np.array(0.01, np.float32))
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x_dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["W1q", "ws", "z"], ["W1_dq"], name="w_dq"),
        helper.make_node("Conv", ["x_dq", "W1_dq"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["y"], name="conv3"),
    ]
    del w["W1"]
    return make(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])], w)


def test_same_names_match_in_topological_order():
    m = match(util.chain(), util.chain())
    assert [(x.a, x.b, x.via, x.node, x.op_type) for x in m.matches][:2] == [
        ("c1", "c1", "", "conv1", "Conv"), ("r1", "r1", "", "relu1", "Relu")]
    assert m.unmatched_a == [] and m.unmatched_b == []


def test_dequantize_of_quantize_matches_its_source_and_weights_are_not_tensors():
    m = match(util.chain(), qdq_input_model())
    x = m.matches[0]
    assert (x.a, x.b, x.via, x.op_type) == ("x", "x_dq", "Q/DQ", "(input)")
    assert "W1_dq" not in m.unmatched_b  # computed from constants only: a weight, not compared
    assert m.unmatched_a == [] and m.unmatched_b == []


def test_cast_chains_match_backwards_and_forwards():
    w = {k: v.astype(np.float16) for k, v in util.weights().items()}
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], name="cast_in", to=F16),
        helper.make_node("Identity", ["x16"], ["x16b"], name="id"),
        helper.make_node("Conv", ["x16b", "W1"], ["c1_16"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["c1_16"], ["c1"], name="cast_c1", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["c1"], ["c1_back"], name="cast_c1_back", to=F16),
        helper.make_node("Relu", ["c1_back"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["y16"], name="conv3"),
        helper.make_node("Cast", ["y16"], ["y"], name="cast_out", to=TensorProto.FLOAT),
    ]
    b = make(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])], w)
    m = match(util.chain(), b)
    found = {x.a: (x.b, x.via) for x in m.matches}
    assert found["x"] == ("x16", "Cast")  # the shortest walk of the two (x16b is Cast>Identity)
    assert found["c1"] == ("c1", "") and found["y"] == ("y", "")
    # c1_16 and y16 reach A's names forwards through Casts, c1_back backwards: none is unmatched.
    assert m.unmatched_b == [] and m.unmatched_a == []


def test_subgraph_values_and_integer_tensors_are_not_compared():
    then = helper.make_graph([helper.make_node("Neg", ["r"], ["t"], name="neg")], "then", [],
                             [tensor("t", [1, 3, 8, 8])])
    other = helper.make_graph([helper.make_node("Identity", ["r"], ["e"], name="ident")], "else", [],
                              [tensor("e", [1, 3, 8, 8])])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["shape"], name="shape"),
        helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="gt"),
        helper.make_node("If", ["positive"], ["y"], name="if", then_branch=then, else_branch=other),
    ]
    model = make(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 3, 8, 8])],
                 {"zero": np.array(0, np.float32)})
    m = match(model, model)
    assert [x.a for x in m.matches] == ["r", "total", "y"]
