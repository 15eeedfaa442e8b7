from __future__ import annotations

import numpy as np
from onnx import helper

from slipway.passes import PASSES
from slipway.passes.pad_conv import FusePadConv
from tests.passes.util import assert_same, copy, make, op_types, tensor

rng = np.random.default_rng(2)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def fuse(model):
    before = copy(model)
    return before, FusePadConv()(model)


def conv_pads(model) -> list[int]:
    return [list(n.attributes["pads"].as_ints()) for n in model.graph if n.op_type == "Conv"]


def test_registered():
    assert PASSES["fuse-pad-conv"] is FusePadConv


def test_pads_input_adds_to_conv_pads():
    nodes = [helper.make_node("Pad", ["x", "pads", "zero"], ["p"]),
             helper.make_node("Conv", ["p", "W", "B"], ["y"], pads=[1, 1, 1, 1])]
    model = make(nodes, [tensor("x", [2, 3, 6, 6])], [tensor("y", [2, 4, 10, 8])],
                 {"pads": i64(0, 0, 1, 2, 0, 0, 3, 0), "zero": np.array(0, np.float32), "W": f32(4, 3, 3, 3),
                  "B": f32(4)})
    before, result = fuse(model)
    assert result.changes == {"Conv(Pad)": 1} and op_types(model) == ["Conv"]
    assert conv_pads(model) == [[2, 3, 4, 1]]
    assert sorted(model.graph.initializers) == ["B", "W"]
    assert_same(before, model, {"x": f32(2, 3, 6, 6)})
    assert not FusePadConv()(model).modified


def test_axes_input_opset18_negative_axes():
    nodes = [helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"]), helper.make_node("Conv", ["p", "W"], ["y"])]
    model = make(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y", [1, 2, 5, 6])],
                 {"pads": i64(1, 2, 1, 1), "axes": i64(-2, -1), "W": f32(2, 3, 3, 3)}, opset=18)
    before, result = fuse(model)
    assert op_types(model) == ["Conv"] and conv_pads(model) == [[1, 2, 1, 1]]
    assert_same(before, model, {"x": f32(1, 3, 5, 5)})


def test_attribute_pads_opset10_and_valid_auto_pad():
    nodes = [helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 2, 0, 0, 1]),
             helper.make_node("Conv", ["p", "W"], ["y"], auto_pad="VALID")]
    model = make(nodes, [tensor("x", [1, 2, 7])], [tensor("y", [1, 3, 9])], {"W": f32(3, 2, 2)}, opset=10)
    before, result = fuse(model)
    assert op_types(model) == ["Conv"] and conv_pads(model) == [[2, 1]]
    assert_same(before, model, {"x": f32(1, 2, 7)})


def test_pad_shared_by_two_convs_and_a_relu():
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("Conv", ["p", "W"], ["a"]),
             helper.make_node("Conv", ["p", "W"], ["b"]), helper.make_node("Relu", ["p"], ["r"])]
    model = make(nodes, [tensor("x", [1, 3, 4, 4])],
                 [tensor("a", [1, 2, 4, 4]), tensor("b", [1, 2, 4, 4]), tensor("r", [1, 3, 6, 6])],
                 {"pads": i64(0, 0, 1, 1, 0, 0, 1, 1), "W": f32(2, 3, 3, 3)})
    before, result = fuse(model)
    assert result.changes == {"Conv(Pad)": 2} and sorted(op_types(model)) == ["Conv", "Conv", "Pad", "Relu"]
    assert_same(before, model, {"x": f32(1, 3, 4, 4)})


def test_what_cannot_merge_is_explained_and_left():
    cases = {
        "mode='reflect'": ({"mode": "reflect"}, i64(0, 0, 1, 1, 0, 0, 1, 1), 0.0, {}),
        "constant_value is not a constant 0": ({}, i64(0, 0, 1, 1, 0, 0, 1, 1), 1.0, {}),
        "channel axis": ({}, i64(0, 1, 1, 1, 0, 0, 1, 1), 0.0, {}),
        "crops": ({}, i64(0, 0, -1, 0, 0, 0, 0, 0), 0.0, {}),
        "auto_pad=SAME_UPPER": ({}, i64(0, 0, 1, 1, 0, 0, 1, 1), 0.0, {"auto_pad": "SAME_UPPER"}),
    }
    for reason, (pad_attrs, pads, value, conv_attrs) in cases.items():
        cin = 4 if reason == "channel axis" else 3
        nodes = [helper.make_node("Pad", ["x", "pads", "v"], ["p"], name="pad", **pad_attrs),
                 helper.make_node("Conv", ["p", "W"], ["y"], name="conv", **conv_attrs)]
        model = make(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y", ["n", "c", "h", "w"])],
                     {"pads": pads, "v": np.array(value, np.float32), "W": f32(2, cin, 3, 3)})
        explained = FusePadConv().explain(model)
        assert len(explained) == 1 and "Pad 'pad' before Conv 'conv'" in explained[0], reason
        assert reason in explained[0], explained
        assert not fuse(model)[1].modified and op_types(model) == ["Pad", "Conv"]
