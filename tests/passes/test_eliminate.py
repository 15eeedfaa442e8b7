from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from slipway.passes import PASSES
from slipway.passes.eliminate import Eliminate
from slipway.passes.shapes import InferShapes
from tests.passes.util import assert_same, copy, make, op_types, tensor

rng = np.random.default_rng(0)
X = tensor("x", ["b", 4, 5])


def feeds(batch: int = 3) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((batch, 4, 5)).astype(np.float32)}


def eliminate(nodes, outputs, inits=None, opset=17, inputs=(X,)):
    """Build, infer shapes (as the pipeline does), run the pass; check numbers at two batches and idempotence."""
    model = make(nodes, list(inputs), outputs, inits or {}, opset=opset)
    InferShapes()(model)
    before = copy(model)
    result = Eliminate()(model)
    for batch in (1, 3):
        assert_same(before, model, feeds(batch))
    again = Eliminate()(model)
    assert not again.modified, again.changes
    return model, result


def test_registered_and_documented():
    assert PASSES["eliminate"] is Eliminate
    assert "->" in Eliminate().summary


def test_transpose_pair_identity_and_inference_dropout():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Transpose", ["t"], ["u"], perm=[0, 2, 1]),
             helper.make_node("Identity", ["u"], ["v"]),
             helper.make_node("Dropout", ["v"], ["w", "mask"]),
             helper.make_node("Relu", ["w"], ["y"])]
    model, result = eliminate(nodes, [tensor("y", ["b", 4, 5])])
    assert result.changes == {"Dropout": 1, "TransposeTranspose": 1, "Identity": 1}
    assert op_types(model) == ["Relu"]


def test_transposes_compose_into_one():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["t"], ["y"], perm=[0, 2, 1])]
    model, result = eliminate(nodes, [tensor("y", [4, 5, "b"])])
    assert result.changes == {"TransposeTranspose": 1}
    assert op_types(model) == ["Transpose"]
    assert list(model.graph.node(0).attributes["perm"].as_ints()) == [1, 2, 0]
    assert model.graph.outputs[0].name == "y"


def test_dropout_in_training_mode_or_with_used_mask_stays():
    nodes = [helper.make_node("Dropout", ["x", "r", "train"], ["d"], name="train"),
             helper.make_node("Dropout", ["d"], ["y", "mask"], name="masked")]
    outputs = [tensor("y", ["b", 4, 5]), tensor("mask", ["b", 4, 5], TensorProto.BOOL)]
    model = make(nodes, [X], outputs, {"r": np.array(0.5, np.float32), "train": np.array(True)})
    result = Eliminate()(model)
    assert not result.modified and op_types(model) == ["Dropout", "Dropout"]
    assert any("training_mode" in line for line in Eliminate().explain(model))


def test_neutral_elements_and_no_op_shape_ops():
    inits = {"one": np.ones((4, 1), np.float32), "zero": np.zeros(5, np.float32), "s": np.array([0, -1, 5]),
             "st": np.array([0, 0]), "en": np.array([2**62, 5]), "e": np.array([1, 5]), "two": np.array(1.0, np.float32)}
    nodes = [helper.make_node("Mul", ["x", "one"], ["a"]), helper.make_node("Add", ["zero", "a"], ["b"]),
             helper.make_node("Reshape", ["b", "s"], ["c"]), helper.make_node("Slice", ["c", "st", "en"], ["d"]),
             helper.make_node("Expand", ["d", "e"], ["f"]), helper.make_node("Div", ["f", "two"], ["g"]),
             helper.make_node("Sub", ["g", "zero"], ["h"]), helper.make_node("Neg", ["h"], ["y"])]
    model, result = eliminate(nodes, [tensor("y", ["b", 4, 5])], inits)
    assert result.changes == {"NoOpReshape": 1, "NoOpSlice": 1, "NoOpExpand": 1, "MulNeutral": 1,
                              "AddLeftNeutral": 1, "DivNeutral": 1, "SubNeutral": 1}
    assert op_types(model) == ["Neg"]


@pytest.mark.parametrize("op, x_shape, const, y_shape", [
    ("Mul", ["b", 4, 5], np.ones((2, 1, 1, 1), np.float32), [2, "b", 4, 5]),  # adds a dim
    ("Add", [3, 1, 5], np.zeros((4, 1), np.float32), [3, 4, 5]),  # stretches a 1
    ("Div", ["b", 4, 5], np.full((1, 1), 2.0, np.float32), ["b", 4, 5]),  # not 1
    ("Expand", ["b", 4, 5], np.array([2, 1, 1, 1]), [2, "b", 4, 5]),
])
def test_what_would_change_the_result_is_kept(op, x_shape, const, y_shape):
    model = make([helper.make_node(op, ["x", "c"], ["y"])], [tensor("x", x_shape)], [tensor("y", y_shape)], {"c": const})
    InferShapes()(model)
    result = Eliminate()(model)
    assert not result.modified and op_types(model) == [op]
    assert Eliminate().explain(model)  # says why


def test_reshape_chain_and_flatten_into_reshape():
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Reshape", ["f", "s1"], ["g"]),
             helper.make_node("Reshape", ["g", "s2"], ["h"]), helper.make_node("Flatten", ["h"], ["y"])]
    model, result = eliminate(nodes, [tensor("y", ["n", 10])], {"s1": np.array([-1, 5]), "s2": np.array([-1, 10])})
    assert result.changes == {"ReshapeOfFlatten": 1, "ReshapeReshape": 1, "NoOpFlatten": 1}
    assert op_types(model) == ["Reshape"]


def test_slice_chain_and_unsqueeze_squeeze_chains():
    inits = {"s1": np.array([1]), "e1": np.array([4]), "a1": np.array([1]), "s2": np.array([1, 1]),
             "e2": np.array([3, 4]), "a2": np.array([1, 2]), "u1": np.array([0]), "u2": np.array([-1]),
             "u3": np.array([0, 4])}
    nodes = [helper.make_node("Slice", ["x", "s1", "e1", "a1"], ["p"]),
             helper.make_node("Slice", ["p", "s2", "e2", "a2"], ["q"]),
             helper.make_node("Unsqueeze", ["q", "u1"], ["r"]), helper.make_node("Unsqueeze", ["r", "u2"], ["s"]),
             helper.make_node("Squeeze", ["s", "u3"], ["t"]), helper.make_node("Unsqueeze", ["t", "u3"], ["y"])]
    model, result = eliminate(nodes, [tensor("y", [1, "b", 2, 3, 1])], inits)
    assert result.changes == {"SliceSlice": 1, "UnsqueezeUnsqueeze": 1, "SqueezeUnsqueeze": 1}
    assert [t for t in op_types(model) if t != "Constant"] == ["Slice", "Unsqueeze"]


def test_opset11_attribute_axes():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["r"], axes=[0]), helper.make_node("Unsqueeze", ["r"], ["s"], axes=[2]),
             helper.make_node("Squeeze", ["s"], ["y"], axes=[0, 2])]
    model, result = eliminate(nodes, [tensor("y", ["b", 4, 5])], opset=11)
    assert result.changes == {"UnsqueezeUnsqueeze": 1, "SqueezeUnsqueeze": 1}
    assert op_types(model) == ["Identity"]  # input straight to output: ONNX needs the Identity


def test_graph_output_names_are_kept():
    # an Identity between two outputs must stay; an Identity after a node gives that node its name
    nodes = [helper.make_node("Relu", ["x"], ["y1"]), helper.make_node("Identity", ["y1"], ["y2"]),
             helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Identity", ["n"], ["y3"])]
    outs = [tensor(n, ["b", 4, 5]) for n in ("y1", "y2", "y3")]
    model, result = eliminate(nodes, outs)
    assert result.changes == {"Identity": 1}
    assert [v.name for v in model.graph.outputs] == ["y1", "y2", "y3"]
    assert op_types(model) == ["Relu", "Identity", "Neg"]
    assert model.graph.node(2).outputs[0].name == "y3"


def test_if_branches_are_walked():
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["t_out"])],
                               "then", [], [tensor("t_out", ["b", 4, 5])])
    one = helper.make_tensor("v", TensorProto.FLOAT, [], [1.0])
    else_g = helper.make_graph([helper.make_node("Constant", [], ["one"], value=one),
                                helper.make_node("Mul", ["x", "one"], ["m"]), helper.make_node("Neg", ["m"], ["n"]),
                                helper.make_node("Identity", ["n"], ["e_out"])], "else", [], [tensor("e_out", ["b", 4, 5])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    model, result = eliminate(nodes, [tensor("y", ["b", 4, 5])], {"zero": np.array(0, np.float32)})
    assert result.changes == {"MulNeutral": 1, "Identity": 2}
    branches = {name: [n.op_type for n in a.as_graph()] for name, a in model.graph.node(2).attributes.items()}
    assert branches["then_branch"] == ["Relu"]
    assert [t for t in branches["else_branch"] if t != "Constant"] == ["Neg"]
    before = make(nodes, [X], [tensor("y", ["b", 4, 5])], {"zero": np.array(0, np.float32)})
    for sign in (1, -1):  # both branches taken
        assert_same(before, model, {"x": sign * np.abs(feeds()["x"])})
