from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from slipway.passes import PASSES
from slipway.passes.shape_fold import FoldShapeSubgraphs
from slipway.passes.shapes import InferShapes
from tests.passes.util import assert_same, copy, make, op_types, tensor

rng = np.random.default_rng(0)


def shape_of(model: ir.Model, node_index: int) -> list[int]:
    return model.graph.node(node_index).inputs[1].const_value.numpy().tolist()


def fold(model: ir.Model, x_shape, batches=(1, 3)):
    InferShapes()(model)
    before = copy(model)
    result = FoldShapeSubgraphs()(model)
    for b in batches:
        assert_same(before, model, {"x": rng.standard_normal((b, *x_shape)).astype(np.float32)})
    assert not FoldShapeSubgraphs()(model).modified
    return result


def view_batch(x: str, first: str, rest: str, out: str, allowzero: int = 0) -> list[onnx.NodeProto]:
    """x.view(first.size(0), rest...) as the legacy exporter writes it."""
    return [helper.make_node("Shape", [first], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
            helper.make_node("Concat", ["n1", rest], ["target"], axis=0),
            helper.make_node("Reshape", [x, "target"], [out], allowzero=allowzero)]


INITS = {"zero": np.array(0), "axes0": np.array([0]), "minus1": np.array([-1])}


def test_registered_and_documented():
    assert PASSES["fold-shape-subgraphs"] is FoldShapeSubgraphs
    assert "->" in FoldShapeSubgraphs().summary


def test_view_batch_minus_one_becomes_zero_minus_one():
    model = make(view_batch("x", "x", "minus1", "y"), [tensor("x", ["batch", 3, 4])], [tensor("y", ["batch", 12])], INITS)
    result = fold(model, (3, 4))
    assert result.changes == {"Reshape": 1}
    assert op_types(model) == ["Reshape"]
    assert shape_of(model, 0) == [0, -1]


def test_dim_of_another_tensor_with_the_same_symbol():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), *view_batch("r", "x", "minus1", "y")]
    model = make(nodes, [tensor("x", ["batch", 3, 4])], [tensor("y", ["batch", 12])], INITS)
    result = fold(model, (3, 4))
    assert result.changes == {"Reshape": 1} and op_types(model) == ["Relu", "Reshape"]
    assert shape_of(model, 1) == [0, -1]


def test_dim_at_another_position_becomes_minus_one_not_zero():
    # x: [b, 6] -> [2, b, 3]: the batch dim lands at position 1, where 0 would copy the wrong dim
    nodes = view_batch("x", "x", "three", "y")
    nodes[3] = helper.make_node("Concat", ["two", "n1", "three"], ["target"], axis=0)
    inits = {**INITS, "two": np.array([2]), "three": np.array([3])}
    model = make(nodes, [tensor("x", ["b", 6])], [tensor("y", [2, "b", 3])], inits)
    result = fold(model, (6,), batches=(2, 4))
    assert result.changes == {"Reshape": 1}
    assert shape_of(model, 0) == [2, -1, 3]


def test_not_folded_when_it_cannot_be_expressed():
    # allowzero=1 forbids 0-copies, and the shape already has a -1: nothing equivalent exists
    model = make(view_batch("x", "x", "minus1", "y", allowzero=1), [tensor("x", ["batch", 3, 4])],
                 [tensor("y", ["batch", 12])], INITS, opset=17)
    InferShapes()(model)
    assert not FoldShapeSubgraphs()(model).modified
    assert op_types(model) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    assert "neither static nor input dim" in FoldShapeSubgraphs().explain(model)[0]


def test_static_shape_slices_fold_to_constants():
    # flatten all but the first dim, written with Shape(x, start=1) (static) and the dynamic batch
    nodes = view_batch("x", "x", "tail", "y")
    nodes.insert(0, helper.make_node("Shape", ["x"], ["tail"], start=1))
    model = make(nodes, [tensor("x", ["batch", 3, 4])], [tensor("y", ["batch", 3, 4])], INITS)
    result = fold(model, (3, 4))
    assert result.changes == {"static-Shape": 1, "Reshape": 1}
    assert op_types(model) == ["Reshape"] and shape_of(model, 0) == [0, 3, 4]


def test_fully_static_shape_feeding_other_ops():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Add", ["x", "f"], ["y"])]
    model = make(nodes, [tensor("x", [3, 2])], [tensor("y", [3, 2])], {})
    before = copy(model)
    result = FoldShapeSubgraphs()(model)
    assert result.changes == {"static-Shape": 1}
    assert op_types(model) == ["Cast", "Add"]
    assert_same(before, model, {"x": rng.standard_normal((3, 2)).astype(np.float32)})


def test_legacy_exporter_view_with_dynamic_batch():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(1, 3, 8, 8),), f, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    model = ir.serde.deserialize_model(onnx.load_from_string(f.getvalue()))
    assert "Shape" in op_types(model)
    result = fold(model, (3, 8, 8))
    assert result.changes == {"Reshape": 1}
    assert op_types(model) == ["Conv", "Relu", "Reshape", "Gemm"]
    assert shape_of(model, 2) == [0, -1]


def test_head_split_and_merge_fold_in_one_sweep():
    # x.view(b, s, 2, d // 2).transpose(-1, -2).view(b, s, -1): the second Reshape's input shape is only
    # known once the first one is folded; the pass infers it on the way and folds both.
    u = [helper.make_node("Unsqueeze", [v, "axes0"], [f"{v}1"]) for v in ("b", "s", "half")]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             *[helper.make_node("Gather", ["shape", i], [v], axis=0) for i, v in (("zero", "b"), ("one", "s"), ("two", "c"))],
             helper.make_node("Div", ["c", "two"], ["half"]), *u,
             helper.make_node("Concat", ["b1", "s1", "two1", "half1"], ["t1"], axis=0),
             helper.make_node("Reshape", ["x", "t1"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("Concat", ["b1", "s1", "minus1"], ["t2"], axis=0),
             helper.make_node("Reshape", ["t", "t2"], ["y"])]
    inits = {**INITS, "one": np.array(1), "two": np.array(2), "two1": np.array([2])}
    model = make(nodes, [tensor("x", ["b", "s", 8])], [tensor("y", ["b", "s", 8])], inits)
    InferShapes()(model)
    before = copy(model)
    result = FoldShapeSubgraphs()(model)
    assert result.changes == {"static-Gather": 1, "static-Div": 1, "static-Unsqueeze": 1, "Reshape": 2}
    assert op_types(model) == ["Reshape", "Transpose", "Reshape"]
    assert shape_of(model, 0) == [0, 0, 2, 4] and shape_of(model, 2) == [0, 0, -1]
    for b, s in ((1, 5), (3, 2)):
        assert_same(before, model, {"x": rng.standard_normal((b, s, 8)).astype(np.float32)})
    assert not FoldShapeSubgraphs()(model).modified


def test_reshape_inside_an_if_branch():
    then_g = helper.make_graph(view_batch("x", "x", "minus1", "r"), "then", [], [tensor("r", ["b", 12])])
    else_g = helper.make_graph([helper.make_node("Flatten", ["x"], ["e"])], "else", [], [tensor("e", ["b", 12])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "fzero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    model = make(nodes, [tensor("x", ["b", 3, 4])], [tensor("y", ["b", 12])], {**INITS, "fzero": np.array(0, np.float32)})
    InferShapes()(model)
    before = copy(model)
    assert FoldShapeSubgraphs()(model).changes == {"Reshape": 1}
    branch = model.graph.node(2).attributes["then_branch"].as_graph()
    assert [n.op_type for n in branch] == ["Constant", "Reshape"]  # a body holds its constant as a node
    for sign in (1, -1):
        assert_same(before, model, {"x": sign * np.abs(rng.standard_normal((3, 3, 4))).astype(np.float32)})
