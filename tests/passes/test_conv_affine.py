from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from slipway.passes import PASSES
from slipway.passes.conv_affine import FuseConvAffine
from tests.passes.util import assert_same, copy, make, op_types, run, tensor

rng = np.random.default_rng(1)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def fuse(model):
    before = copy(model)
    return before, FuseConvAffine()(model)


def test_registered():
    assert PASSES["fuse-conv-affine"] is FuseConvAffine


def test_mul_then_add_after_conv():
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["t", "m"], ["y"])]
    model = make(nodes, [tensor("x", [2, 3, 6, 6])], [tensor("y", [2, 4, 6, 6])],
                 {"W": f32(4, 3, 3, 3), "B": f32(4), "s": f32(4, 1, 1), "t": f32(1, 4, 1, 1)})
    before, result = fuse(model)
    assert result.changes == {"Mul(Conv)": 1, "Add(Conv)": 1}
    assert op_types(model) == ["Conv"] and sorted(model.graph.initializers) == ["B", "W"]
    assert_same(before, model, {"x": f32(2, 3, 6, 6)})
    assert not FuseConvAffine()(model).modified


def test_div_and_reversed_sub_after_conv_without_bias():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Div", ["c", "d"], ["m"]),
             helper.make_node("Sub", ["t", "m"], ["y"])]
    model = make(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 4, 4, 4])],
                 {"W": f32(4, 3, 1, 1), "d": np.array(2.5, np.float32), "t": f32(4, 1, 1)})
    before, result = fuse(model)
    assert result.changes == {"Div(Conv)": 1, "Sub(Conv)": 1} and op_types(model) == ["Conv"]
    assert_same(before, model, {"x": f32(1, 3, 4, 4)})


def test_grouped_conv_transpose_then_mul():
    nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["c"], group=2, strides=[2, 2]),
             helper.make_node("Mul", ["c", "s"], ["y"])]
    model = make(nodes, [tensor("x", [1, 4, 3, 3])], [tensor("y", [1, 6, 6, 6])],
                 {"W": f32(4, 3, 2, 2), "s": f32(1, 6, 1, 1)})
    before, result = fuse(model)
    assert op_types(model) == ["ConvTranspose"]
    assert_same(before, model, {"x": f32(1, 4, 3, 3)})


def test_mul_before_padded_grouped_conv_is_exact():
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node("Conv", ["m", "W", "B"], ["y"], group=2, pads=[1, 1, 1, 1])]
    model = make(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 6, 5, 5])],
                 {"s": f32(4, 1, 1), "W": f32(6, 2, 3, 3), "B": f32(6)})
    before, result = fuse(model)
    assert result.changes == {"Conv(Mul)": 1} and op_types(model) == ["Conv"]
    assert_same(before, model, {"x": f32(1, 4, 5, 5)})


def test_shift_before_conv_only_without_padding():
    def build(pads):
        nodes = [helper.make_node("Sub", ["x", "mean"], ["n"], name="norm"),
                 helper.make_node("Conv", ["n", "W"], ["y"], name="conv1", pads=pads, group=2)]
        out = 5 if pads[0] else 3
        return make(nodes, [tensor("x", [2, 4, 5, 5])], [tensor("y", [2, 6, out, out])],
                    {"mean": f32(1, 4, 1, 1), "W": f32(6, 2, 3, 3)})

    model = build([0, 0, 0, 0])
    before, result = fuse(model)
    assert result.changes == {"Conv(Add)": 1} and op_types(model) == ["Conv"]
    assert_same(before, model, {"x": f32(2, 4, 5, 5)})

    model = build([1, 1, 1, 1])
    explained = FuseConvAffine().explain(model)
    assert len(explained) == 1 and "Sub 'norm' before Conv 'conv1'" in explained[0] and "not exact" in explained[0]
    _, result = fuse(model)
    assert not result.modified and op_types(model) == ["Sub", "Conv"]


def test_non_channel_constant_and_shared_output_left_alone():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="c1"), helper.make_node("Mul", ["c", "s"], ["y"])]
    model = make(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 4, 4, 4])],
                 {"W": f32(4, 3, 1, 1), "s": f32(1, 1, 4, 4)})
    assert "not a per-channel" in FuseConvAffine().explain(model)[0]
    assert not fuse(model)[1].modified

    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="c1"), helper.make_node("Add", ["c", "t"], ["y"]),
             helper.make_node("Relu", ["c"], ["r"])]
    model = make(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 4, 4, 4]), tensor("r", [1, 4, 4, 4])],
                 {"W": f32(4, 3, 1, 1), "t": f32(4, 1, 1)})
    assert "also used by Relu" in FuseConvAffine().explain(model)[0]
    assert not fuse(model)[1].modified


def test_float16():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Add", ["m", "t"], ["y"])]
    model = make(nodes, [tensor("x", [1, 3, 5, 5], TensorProto.FLOAT16)],
                 [tensor("y", [1, 4, 5, 5], TensorProto.FLOAT16)],
                 {"W": f32(4, 3, 3, 3).astype(np.float16), "s": f32(4, 1, 1).astype(np.float16),
                  "t": f32(4, 1, 1).astype(np.float16)})
    before, result = fuse(model)
    assert op_types(model) == ["Conv"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    x = f32(1, 3, 5, 5).astype(np.float16)
    assert run(model, {"x": x})[0].dtype == np.float16
    np.testing.assert_allclose(run(model, {"x": x})[0].astype(np.float32),
                               run(before, {"x": x})[0].astype(np.float32), atol=3e-2, rtol=2e-2)


def test_constant_node_operand_is_read_and_removed():
    scale = helper.make_node("Constant", [], ["s"], value=helper.make_tensor("s", TensorProto.FLOAT, [4, 1, 1],
                                                                              f32(4).tolist()))
    nodes = [scale, helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Mul", ["s", "c"], ["y"])]
    model = make(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 4, 4, 4])], {"W": f32(4, 3, 1, 1)})
    before, result = fuse(model)
    assert result.changes == {"Mul(Conv)": 1} and op_types(model) == ["Conv"]
    assert_same(before, model, {"x": f32(1, 3, 4, 4)})
