"""analyze.shapes: the input shapes an analysis runs at, and every intermediate shape inferred from them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.analyze._proto import model_view
from slipway.analyze.shapes import ValueInfo, graph_inputs, infer_static_shapes, resolve_input_shapes
from slipway.errors import UserError


def _conv_model(x_shape: list, out_shape: list | None = None) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_given_shape_is_used_and_the_batch_defaults_to_one():
    view = model_view(_conv_model(["N", 3, 32, 32]))
    assert resolve_input_shapes(view, None) == {"x": [1, 3, 32, 32]}
    assert resolve_input_shapes(view, {"x": [4, 3, 32, 32]}) == {"x": [4, 3, 32, 32]}


@pytest.mark.parametrize(("shape", "given", "message"), [
    (["N", 3, 32, 32], {"y": [1, 3, 32, 32]}, "--shape names unknown input 'y'; the model's inputs are: x"),
    (["N", 3, 32, 32], {"x": [1, 3, 32]}, "--shape for input 'x' has rank 3, the model's input has rank 4 (Nx3x32x32)"),
    (["N", 3, 32, 32], {"x": [1, 4, 32, 32]}, "--shape for input 'x' sets axis 1 to 4, but the model fixes it at 3"),
    (["N", 3, 32, 32], {"x": [1, 3, 0, 32]}, "--shape for input 'x' must have positive dims, got [1, 3, 0, 32]"),
    (["N", 3, "H", "W"], None, "input 'x' has dynamic dim H at axis 2; give its size with --shape x=D0,D1,..."),
])
def test_bad_shapes_are_one_line_errors(shape, given, message):
    with pytest.raises(UserError) as e:
        resolve_input_shapes(model_view(_conv_model(shape)), given)
    assert str(e.value) == message


def test_a_negative_declared_dim_is_dynamic():
    """paddle2onnx writes -1 for a dynamic dim: it must be given (or default as the batch), never kept."""
    model = _conv_model([1, 3, 32, 32])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = -1
    view = model_view(model)
    with pytest.raises(UserError, match="dynamic dim \\? at axis 3"):
        resolve_input_shapes(view, None)
    assert resolve_input_shapes(view, {"x": [2, 3, 32, 48]}) == {"x": [2, 3, 32, 48]}


def test_intermediate_shapes_follow_the_input_shapes_not_the_declared_ones():
    view = model_view(_conv_model(["N", 3, "H", "W"], [1, 8, 5, 5]))  # a stale declared output shape
    table = infer_static_shapes(view, {"x": [2, 3, 20, 24]})
    assert table["c"] == ValueInfo((2, 8, 20, 24), ir.DataType.FLOAT)
    assert table["y"].shape == (2, 8, 20, 24)
    assert table["w"] == ValueInfo((8, 3, 3, 3), ir.DataType.FLOAT)


def test_shapes_computed_in_the_graph_are_propagated():
    """Shape -> Gather -> Concat -> Reshape: data propagation gives the Reshape a static result."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    view = model_view(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert infer_static_shapes(view, {"x": [3, 4, 5]})["y"].shape == (3, 20)


def test_an_input_too_small_for_the_model_is_a_user_error():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]  # 7x7 kernel, no padding
    w = numpy_helper.from_array(np.zeros((2, 1, 7, 7), np.float32), "w")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "H"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    view = model_view(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(UserError, match=r"at input shapes x=1x1x4x4 .*the input is too small for the model"):
        infer_static_shapes(view, {"x": [1, 1, 4, 4]})


def test_outputs_of_unknown_domain_ops_take_their_declared_shape_with_input_dims_substituted():
    nodes = [helper.make_node("FusedThing", ["x"], ["f"], domain="com.example"),
             helper.make_node("Relu", ["f"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              value_info=[helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 32])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    table = infer_static_shapes(model_view(model), {"x": [5, 16]})
    assert table["f"].shape == (5, 32)
    assert table["y"].shape == (5, 32)  # inference went on from the declared shape


def test_tensor_info_sizes():
    assert ValueInfo((2, 3), ir.DataType.FLOAT).numel == 6
    assert ValueInfo((2, 3), ir.DataType.FLOAT).nbytes == 24
    assert ValueInfo((3, 3), ir.DataType.INT4).nbytes == 5  # 36 bits rounded up to whole bytes
    assert ValueInfo((), ir.DataType.FLOAT16).nbytes == 2  # a scalar holds one element
    assert ValueInfo((4,), ir.DataType.STRING).nbytes is None
    assert ValueInfo(None, ir.DataType.FLOAT).numel is None


def test_graph_inputs_leave_out_initializers_listed_as_inputs():
    model = _conv_model([1, 3, 8, 8])
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 3, 3, 3]))
    assert [v.name for v in graph_inputs(ir.serde.deserialize_model(model))] == ["x"]
    assert [name for name, _ in model_view(model).inputs] == ["x"]
