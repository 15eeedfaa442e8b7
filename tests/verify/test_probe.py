"""Inputs derived by running the model: micro graphs with the restrictions real models have."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from slipway.errors import UserError
from slipway.verify.probe import at_batch, plan_inputs


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def strided() -> ir.Model:
    """y = x + Resize(MaxPool(x, 32x32, stride 32), x32): runs only when H and W are multiples of 32
    (PP-OCR det's FPN restriction in four nodes)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 32, 32])
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[32, 32], strides=[32, 32]),
             helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Add", ["x", "u"], ["y"])]
    return _model(nodes, [x], [y], [scales])


def test_sizes_are_derived_where_the_model_runs():
    plan = plan_inputs(strided())
    shapes = [f["x"].shape for f in plan.feeds]
    assert shapes[0] == (1, 1, 32, 32) and shapes[1][0] == 3  # cheapest first, then batch 3
    assert all(h % 32 == 0 and w % 32 == 0 for _, _, h, w in shapes)
    assert shapes[1][2:] != shapes[0][2:]  # the second run takes the next sizes that run
    assert "derived by running the model" in plan.notes[0]


def test_given_shapes_are_used_exactly_or_refused():
    plan = plan_inputs(strided(), shapes={"x": [2, 1, 64, 96]})
    assert [f["x"].shape for f in plan.feeds] == [(2, 1, 64, 96), (1, 1, 64, 96)]
    with pytest.raises(UserError, match=r"does not run at the given --shape \(x\[1,1,48,48\]\)"):
        plan_inputs(strided(), shapes={"x": [1, 1, 48, 48]})
    with pytest.raises(UserError, match="not a model input"):
        plan_inputs(strided(), shapes={"z": [1, 1, 32, 32]})


def test_nothing_runs_is_one_line_naming_the_input():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "L"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["R", 7])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7])
    m = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [x], [y], [shape])
    with pytest.raises(UserError) as e:
        plan_inputs(m)
    text = str(e.value)
    assert "\n" not in text and "'x'" in text and "--shape x=1,L" in text and "--data" in text


def branchy() -> ir.Model:
    """out = If(sr == 16000) then x * 2 else x[:, :8] (a length the else branch needs): silero's shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    s_out = helper.make_tensor_value_info("s_out", TensorProto.FLOAT, None)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)], [two])
    starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
    ends = helper.make_tensor("ends", TensorProto.INT64, [1], [8])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    else_g = helper.make_graph([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)], [starts, ends, axes])
    k = helper.make_tensor("k", TensorProto.INT64, [], [16000])
    nodes = [helper.make_node("Equal", ["sr", "k"], ["c"]),
             helper.make_node("If", ["c"], ["out"], then_branch=then_g, else_branch=else_g),
             # the state's unnamed dim must equal the batch: Concat along axis 2 of [2, N, 4] and [2, N, T]
             helper.make_node("Unsqueeze", ["x", "zero"], ["x3"]),
             helper.make_node("Concat", ["x3", "x3"], ["xx"], axis=0),
             helper.make_node("Concat", ["state", "xx"], ["s_out"], axis=2)]
    zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
    return _model(nodes, [x, sr, state], [out, s_out], [k, zero])


def test_compared_constants_and_a_state_that_follows_the_batch():
    plan = plan_inputs(branchy())
    srs = [int(f["sr"]) for f in plan.feeds]
    assert srs[:2] == [16000, 16000] and srs[2] == 8000  # both sides of Equal(sr, 16000)
    for f in plan.feeds:
        assert f["sr"].shape == () and f["state"].shape[1] == f["x"].shape[0]
    assert [f["x"].shape[0] for f in plan.feeds[:2]] == [1, 3]
    assert plan.feeds[2]["x"].shape[1] >= 8  # the else branch slices 8 samples


def test_data_runs_as_given_and_a_state_tiles_with_the_batch():
    data = {"x": np.ones((1, 16), np.float32), "sr": np.array(16000, np.int64), "state": np.zeros((2, 1, 4), np.float32)}
    plan = plan_inputs(branchy(), data=data)
    assert plan.feeds[0]["sr"].shape == () and plan.feeds[0]["x"].shape == (1, 16)
    assert plan.feeds[1]["x"].shape == (3, 16) and plan.feeds[1]["state"].shape == (2, 3, 4)
    with pytest.raises(UserError, match="either --data or --shape"):
        plan_inputs(branchy(), data=data, shapes={"x": [1, 16]})


def test_at_batch_moves_unnamed_state_dims_with_the_batch():
    from slipway.verify.inputs import input_specs

    specs = input_specs(branchy())
    assert at_batch(specs, {"N": 1, "T": 16, "state.1": 1}, 4) == {"N": 4, "T": 16, "state.1": 4}
    assert at_batch(specs, {"N": 1, "T": 16, "state.1": 5}, 4)["state.1"] == 5  # not the batch: stays


def test_paddle_dims_minus_one_and_question_marks_are_dynamic_and_distinct():
    from slipway.verify.inputs import input_specs

    proto = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, "?", "?"])]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    spec = input_specs(ir.serde.deserialize_model(proto))[0]
    assert spec.dims == ["x.0", 3, "x.2", "x.3"] and spec.anonymous == (0, 2, 3)
