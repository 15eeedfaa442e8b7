from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from slipway.passes import PASSES
from slipway.passes.batchnorm import FuseBatchNorm
from tests.passes.util import assert_same, copy, make, op_types, run, tensor

rng = np.random.default_rng(0)


def bn_params(c: int, prefix: str = "", dtype=np.float32) -> dict[str, np.ndarray]:
    return {f"{prefix}s": (rng.random(c) + 0.5).astype(dtype), f"{prefix}t": rng.standard_normal(c).astype(dtype),
            f"{prefix}m": rng.standard_normal(c).astype(dtype), f"{prefix}v": (rng.random(c) + 0.1).astype(dtype)}


def bn(x: str, y: str, prefix: str = "", **attrs) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, f"{prefix}s", f"{prefix}t", f"{prefix}m", f"{prefix}v"], [y],
                            name=f"{prefix}bn", epsilon=1e-3, **attrs)


def fuse(model):
    before = copy(model)
    result = FuseBatchNorm()(model)
    return before, result


def test_registered_and_documented():
    assert PASSES["fuse-batchnorm"] is FuseBatchNorm
    assert "->" in FuseBatchNorm().summary


def test_conv_bn_folds_into_weights_and_bias():
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    model = make([helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn("c", "y")],
                 [tensor("x", [2, 3, 8, 8])], [tensor("y", [2, 4, 8, 8])], {"W": w, "B": b, **bn_params(4)})
    before, result = fuse(model)
    assert result.modified and result.changes == {"BatchNormalization(Conv)": 1}
    assert op_types(model) == ["Conv"]
    assert sorted(model.graph.initializers) == ["B", "W"]  # BN params dropped, names kept
    assert model.graph.outputs[0].name == "y"
    assert_same(before, model, {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)})
    assert not FuseBatchNorm()(model).modified  # idempotent


def test_conv_without_bias_and_shared_weight():
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c1"], name="c1"), bn("c1", "y1", "a"),
             helper.make_node("Conv", ["x", "W"], ["c2"], name="c2"), bn("c2", "y2", "b")]
    model = make(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y1", [1, 4, 5, 5]), tensor("y2", [1, 4, 5, 5])],
                 {"W": w, **bn_params(4, "a"), **bn_params(4, "b")})
    before, result = fuse(model)
    assert result.changes == {"BatchNormalization(Conv)": 2}
    assert op_types(model) == ["Conv", "Conv"]
    assert len(model.graph.initializers) == 4  # two weights, two biases; the shared W is gone
    assert_same(before, model, {"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)})


def test_grouped_conv_transpose_scales_group_times_dim1():
    # W: [Cin=4, Cout/group=3, 2, 2] with group=2 -> 6 output channels
    w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    model = make([helper.make_node("ConvTranspose", ["x", "W"], ["c"], group=2, strides=[2, 2]), bn("c", "y")],
                 [tensor("x", [1, 4, 3, 3])], [tensor("y", [1, 6, 6, 6])], {"W": w, **bn_params(6)})
    before, result = fuse(model)
    assert result.changes == {"BatchNormalization(ConvTranspose)": 1}
    assert op_types(model) == ["ConvTranspose"]
    assert_same(before, model, {"x": rng.standard_normal((1, 4, 3, 3)).astype(np.float32)})


def test_gemm_respects_transb_alpha_beta():
    for trans_b in (0, 1):
        w = rng.standard_normal((5, 6) if trans_b else (6, 5)).astype(np.float32)
        c = rng.standard_normal((1, 5)).astype(np.float32)
        gemm = helper.make_node("Gemm", ["a", "W", "C"], ["g"], transB=trans_b, alpha=0.5, beta=2.0)
        model = make([gemm, bn("g", "y")], [tensor("a", [3, 6])], [tensor("y", [3, 5])],
                     {"W": w, "C": c, **bn_params(5)})
        before, result = fuse(model)
        assert op_types(model) == ["Gemm"], trans_b
        assert_same(before, model, {"a": rng.standard_normal((3, 6)).astype(np.float32)})


def test_shared_conv_output_is_left_with_a_warning():
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="c1"), bn("c", "y"),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    model = make(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 4, 4, 4]), tensor("r", [1, 4, 4, 4])],
                 {"W": w, **bn_params(4)})
    explained = FuseBatchNorm().explain(model)
    assert len(explained) == 1 and "'c1'" in explained[0] and "Relu 'relu'" in explained[0]
    _, result = fuse(model)
    assert not result.modified and op_types(model) == ["Conv", "BatchNormalization", "Relu"]
    assert result.warnings == explained


def test_standalone_and_training_bn_left_alone():
    model = make([helper.make_node("Relu", ["x"], ["r"]), bn("r", "y")], [tensor("x", [1, 4, 3, 3])],
                 [tensor("y", [1, 4, 3, 3])], bn_params(4))
    _, result = fuse(model)
    assert not result.modified and not result.warnings and FuseBatchNorm().explain(model) == []
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    train = helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["y", "rm", "rv"], training_mode=1)
    model = make([helper.make_node("Conv", ["x", "W"], ["c"]), train],
                 [tensor("x", [1, 4, 3, 3])], [tensor("y", [1, 4, 3, 3])], {"W": w, **bn_params(4)}, opset=15)
    _, result = fuse(model)
    assert not result.modified and "training_mode" in result.warnings[0]


def test_float16_conv_with_float32_bn_params():
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    model = make([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), bn("c", "y")],
                 [tensor("x", [1, 3, 6, 6], TensorProto.FLOAT16)], [tensor("y", [1, 4, 6, 6], TensorProto.FLOAT16)],
                 {"W": w, **bn_params(4)}, opset=15)
    before, result = fuse(model)
    assert result.modified and op_types(model) == ["Conv"]
    assert {v.const_value.dtype for v in model.graph.initializers.values()} == {ir.DataType.FLOAT16}
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float16)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    np.testing.assert_allclose(run(model, {"x": x})[0].astype(np.float32),
                               run(before, {"x": x})[0].astype(np.float32), atol=2e-2, rtol=2e-2)


def test_walks_if_branches():
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    body = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["c"]), bn("c", "yb")], "body", [],
                             [tensor("yb", [1, 4, 2, 2])])
    other = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["ye"])], "other", [], [tensor("ye", [1, 4, 2, 2])])
    model = make([helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=other)],
                 [tensor("cond", [], TensorProto.BOOL), tensor("x", [1, 3, 2, 2])], [tensor("y", [1, 4, 2, 2])],
                 {"W": w, **bn_params(4)})
    before, result = fuse(model)
    assert result.changes == {"BatchNormalization(Conv)": 1}
    then = model.graph.node(0).attributes["then_branch"].value
    assert [n.op_type for n in then] == ["Conv"]
    x = rng.standard_normal((1, 3, 2, 2)).astype(np.float32)
    for cond in (True, False):
        assert_same(before, model, {"cond": np.array(cond), "x": x})


def test_external_weights(tmp_path):
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    model = make([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), bn("c", "y")],
                 [tensor("x", [1, 3, 5, 5])], [tensor("y", [1, 8, 5, 5])], {"W": w, **bn_params(8)})
    before = copy(model)
    ir.save(model, tmp_path / "m.onnx", external_data="m.data", size_threshold_bytes=0)
    loaded = ir.load(tmp_path / "m.onnx")
    assert isinstance(loaded.graph.initializers["W"].const_value, ir.ExternalTensor)
    assert FuseBatchNorm()(loaded).modified and op_types(loaded) == ["Conv"]
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    assert_same(before, ir.external_data.load_to_model(loaded), {"x": x})


def test_conv_outside_the_if_is_not_fused_from_inside():
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    body = helper.make_graph([bn("c", "yb")], "body", [], [tensor("yb", [1, 4, 2, 2])])
    zeros = helper.make_tensor("z", TensorProto.FLOAT, [1, 4, 2, 2], [0.0] * 16)
    other = helper.make_graph([helper.make_node("Constant", [], ["ye"], value=zeros)], "other", [],
                              [tensor("ye", [1, 4, 2, 2])])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=other)]
    model = make(nodes, [tensor("cond", [], TensorProto.BOOL), tensor("x", [1, 3, 2, 2])], [tensor("y", [1, 4, 2, 2])],
                 {"W": w, **bn_params(4)})
    before, result = fuse(model)
    assert not result.modified
    assert_same(before, model, {"cond": np.array(True), "x": rng.standard_normal((1, 3, 2, 2)).astype(np.float32)})
