"""Cost formulas on hand-built micro-graphs, with hand-computed expected numbers.

Every model is also run in onnxruntime so that the shapes the analysis inferred are the
shapes the op really produces.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from slipway.analyze import analyze
from slipway.analyze.cost import ELEMENTWISE_FLOPS, matmul_macs, registered_ops
from slipway.errors import UserError

F = TensorProto.FLOAT


def make(nodes, inputs, outputs, inits=None, opset=20) -> onnx.ModelProto:
    """A model from nodes; inputs are (name, shape) pairs (float), outputs names (shape inferred)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        initializer=[numpy_helper.from_array(np.asarray(a), name) for name, a in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def run(model: onnx.ModelProto, shapes=None):
    """Analyze ``model`` and check its inferred output shapes against onnxruntime's outputs."""
    a = analyze(model, shapes)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal(a.input_shapes[i.name]).astype(np.float32) for i in sess.get_inputs()}
    for meta, value in zip(sess.get_outputs(), sess.run(None, feeds), strict=True):
        assert a.summary["outputs"][meta.name] == list(value.shape), meta.name
    return a


def w(*shape) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def node(a, op_type: str):
    return next(n for n in a.nodes if n.op_type == op_type)


def conv_model(x_shape, w_shape, bias=True, **attrs):
    inits = {"W": w(*w_shape)}
    if bias:
        inits["B"] = w(w_shape[0])
    ins = ["x", "W", "B"] if bias else ["x", "W"]
    return make([helper.make_node("Conv", ins, ["y"], **attrs)], [("x", x_shape)], ["y"], inits)


# ------------------------------------------------------------------ convolutions


def test_conv_grouped_2d_counts_macs_flops_params_and_bytes():
    # 16 outputs channels x 10x10 positions, each a dot product over C_in/group=2 channels x 3x3.
    a = run(conv_model([1, 8, 10, 10], [16, 2, 3, 3], group=4, pads=[1, 1, 1, 1]))
    c = node(a, "Conv")
    assert c.macs == 16 * 100 * 2 * 9 == 28800
    assert c.flops == 2 * 28800 + 16 * 100  # + one bias add per output element
    assert c.params == 16 * 2 * 9 + 16
    assert c.bytes_read == 4 * (8 * 100 + 16 * 2 * 9 + 16)
    assert c.bytes_written == 4 * 16 * 100
    assert c.intensity == pytest.approx(c.flops / (c.bytes_read + c.bytes_written))


def test_conv_depthwise_strided():
    a = run(conv_model([1, 8, 10, 10], [8, 1, 3, 3], bias=False, group=8, strides=[2, 2], pads=[1, 1, 1, 1]))
    assert node(a, "Conv").macs == 8 * 5 * 5 * 9  # output 5x5, one channel per group
    assert node(a, "Conv").flops == 2 * 1800


def test_conv_1d_and_3d():
    a1 = run(conv_model([2, 4, 20], [6, 4, 5], bias=False))
    assert node(a1, "Conv").macs == 2 * 6 * 16 * 4 * 5  # N x C_out x L_out x C_in x k
    a3 = run(conv_model([1, 2, 6, 6, 6], [4, 2, 3, 3, 3], bias=False))
    assert node(a3, "Conv").macs == 4 * 4 * 4 * 4 * 2 * 27


def conv_transpose_by_scatter(x: np.ndarray, wt: np.ndarray, stride: int, group: int) -> tuple[np.ndarray, int]:
    """ConvTranspose written as its definition: each input pixel scatters a weighted kernel.

    Returns the output and the number of multiply-accumulates it performed.
    """
    n, cin, h, wd = x.shape
    _, cout_g, kh, kw = wt.shape
    cin_g = cin // group
    y = np.zeros((n, cout_g * group, (h - 1) * stride + kh, (wd - 1) * stride + kw), np.float32)
    macs = 0
    for g in range(group):
        xs, ws = x[:, g * cin_g:(g + 1) * cin_g], wt[g * cin_g:(g + 1) * cin_g]
        for i in range(h):
            for j in range(wd):
                contrib = np.einsum("nc,cokl->nokl", xs[:, :, i, j], ws)
                y[:, g * cout_g:(g + 1) * cout_g, i * stride:i * stride + kh, j * stride:j * stride + kw] += contrib
                macs += n * cin_g * cout_g * kh * kw
    return y, macs


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_counts_input_pixels_times_kernel(group):
    x = w(1, 8, 5, 5)
    wt = w(8, 4 // group, 3, 3)  # [C_in, C_out/group, kH, kW]
    model = make([helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2], group=group)],
                 [("x", [1, 8, 5, 5])], ["y"], {"W": wt})
    a = run(model)
    ct = node(a, "ConvTranspose")
    y_ref, scatter_macs = conv_transpose_by_scatter(x, wt, 2, group)
    y_ort = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y_ref, y_ort, rtol=1e-4, atol=1e-4)  # the scatter loop is the real op
    assert ct.macs == scatter_macs == 1 * 8 * 25 * (4 // group) * 9
    out_numel = 4 * 11 * 11  # output [1, 4, 11, 11]
    assert ct.macs != out_numel * (8 // group) * 9  # Conv's formula on the output size is wrong
    assert ct.macs != out_numel * (4 // group) * 9  # and so is onnx-tool's (output x W[1:])


# ------------------------------------------------------------------ matrix products


@pytest.mark.parametrize(("trans_a", "trans_b", "alpha", "extra"), [(0, 0, 1.0, 0), (1, 1, 1.0, 0), (1, 0, 0.5, 20)])
def test_gemm(trans_a, trans_b, alpha, extra):
    m, k, n = 4, 6, 5
    a_shape = [k, m] if trans_a else [m, k]
    b = w(n, k) if trans_b else w(k, n)
    model = make([helper.make_node("Gemm", ["a", "B", "C"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha)],
                 [("a", a_shape)], ["y"], {"B": b, "C": w(n)})
    g = node(run(model), "Gemm")
    assert g.macs == m * k * n == 120
    assert g.flops == 2 * 120 + m * n + extra  # bias add, and alpha scaling when alpha != 1
    assert g.params == k * n + n


@pytest.mark.parametrize(("a_shape", "b_shape", "macs"), [
    ([2, 1, 3, 4], [5, 4, 6], 2 * 5 * 3 * 4 * 6),  # batch dims broadcast to [2, 5]
    ([4], [3, 4, 6], 3 * 4 * 6),  # 1-D A is a row vector, batch from B
    ([2, 3, 4], [4], 2 * 3 * 4),  # 1-D B is a column vector
    ([7, 4], [4, 2], 7 * 4 * 2),
])
def test_matmul_broadcasting(a_shape, b_shape, macs):
    model = make([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", a_shape), ("b", b_shape)], ["y"])
    mm = node(run(model), "MatMul")
    assert matmul_macs(tuple(a_shape), tuple(b_shape)) == mm.macs == macs
    assert mm.flops == 2 * macs
    assert mm.params == 0  # both operands are activations


# ------------------------------------------------------------------ pooling, resize, norms, softmax


def test_pooling():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
    ]
    a = run(make(nodes, [("x", [1, 4, 8, 8])], ["m", "p", "g"]))
    assert node(a, "MaxPool").flops == 4 * 4 * 4 * 8  # 64 outputs, 9 - 1 comparisons each
    assert node(a, "AveragePool").flops == 64 * 4  # 3 adds + 1 divide per output
    assert node(a, "GlobalAveragePool").flops == 4 * 64  # 63 adds + 1 divide per channel
    assert all(n.macs == 0 and n.counted for n in a.nodes)


@pytest.mark.parametrize(("mode", "flops"), [("linear", 2 * 8 * 8 * (2 * 4 - 1)), ("nearest", 0), ("cubic", 128 * 31)])
def test_resize(mode, flops):
    scales = np.array([1, 1, 2, 2], np.float32)
    model = make([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode)],
                 [("x", [1, 2, 4, 4])], ["y"], {"scales": scales})
    r = node(run(model), "Resize")
    assert r.counted and r.macs == 0
    assert r.flops == flops  # per output: 2^2 (linear) or 4^2 (cubic) taps, a multiply and an add each


def test_normalizations_and_softmax():
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["bn"]),
        helper.make_node("InstanceNormalization", ["x", "s", "b"], ["inorm"]),
        helper.make_node("LayerNormalization", ["t", "g", "gb"], ["ln"], axis=-1),
        helper.make_node("Softmax", ["t"], ["sm"], axis=-1),
    ]
    inits = {"s": w(3), "b": w(3), "mean": w(3), "var": np.abs(w(3)) + 1, "g": w(8), "gb": w(8)}
    a = run(make(nodes, [("x", [2, 3, 4, 4]), ("t", [2, 5, 8])], ["bn", "inorm", "ln", "sm"], inits))
    assert node(a, "BatchNormalization").flops == 2 * 96  # per-channel scale and shift
    assert node(a, "InstanceNormalization").flops == 7 * 96 + 4 * 6  # 6 (n, c) groups
    assert node(a, "LayerNormalization").flops == 7 * 80 + 4 * 10  # 10 rows of 8
    assert node(a, "Softmax").flops == 5 * 80
    assert node(a, "BatchNormalization").params == 12  # s, b, mean, var counted at first use
    assert node(a, "InstanceNormalization").params == 0  # s, b already counted


def test_elementwise_per_op_costs_and_broadcasting():
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Add", ["x", "bias"], ["a"]),  # [2, 3, 4] + [4]
        helper.make_node("Sum", ["x", "s", "a"], ["y"]),
        helper.make_node("Gelu", ["y"], ["z"]),
    ]
    a = run(make(nodes, [("x", [2, 3, 4])], ["z"], {"bias": w(4)}))
    assert node(a, "Sigmoid").flops == ELEMENTWISE_FLOPS["Sigmoid"] * 24 == 4 * 24
    assert node(a, "Add").flops == 24
    assert node(a, "Sum").flops == 2 * 24  # three operands: two adds per element
    assert node(a, "Gelu").flops == 5 * 24
    assert a.totals["macs"] == 0
    assert a.totals["flops"] == 24 * (4 + 1 + 2 + 5)


# ------------------------------------------------------------------ not counted (control flow: test_control_flow.py)


def test_unknown_op_is_not_counted_never_zero():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Det", ["m"], ["d"])]
    a = run(make(nodes, [("x", [2, 3, 3])], ["d"], {"W": w(3, 3)}))
    det = node(a, "Det")
    assert det.counted is False and det.macs is None and det.flops is None
    assert "Det" in det.note
    assert det.bytes_read == 4 * 18 and det.bytes_written == 4 * 2  # bytes are still known
    assert a.totals["not_counted"] == ["Det"]
    assert a.totals["macs"] == 2 * 3 * 3 * 3  # the MatMul alone
    assert a.to_dict()["nodes"][1]["macs"] is None


def test_op_from_another_domain_is_not_counted_and_shapes_flow_past_it():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Gelu", ["r"], ["g"], domain="com.microsoft"),
             helper.make_node("Relu", ["g"], ["y"])]
    model = make(nodes, [("x", ["N", 8])], ["y"])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.graph.value_info.append(helper.make_tensor_value_info("g", F, ["N", 8]))  # as ORT's optimizer writes
    a = run(model, {"x": [3, 8]})
    assert a.totals["not_counted"] == ["com.microsoft::Gelu"]
    assert [n.flops for n in a.nodes] == [24, None, 24]  # the second Relu still knows its 3x8 shape
    assert a.nodes[1].bytes_written == 96


# ------------------------------------------------------------------ parameters, bytes, dtypes


def test_shared_weight_counts_once_and_scalars_are_not_parameters():
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("MatMul", ["h", "W"], ["h2"]),
        helper.make_node("Mul", ["h2", "scale"], ["y"]),
    ]
    a = run(make(nodes, [("x", [2, 8])], ["y"], {"W": w(8, 8), "scale": np.array(0.5, np.float32)}))
    assert [n.params for n in a.nodes] == [64, 0, 0]
    assert a.totals["params"] == 64
    assert [n.bytes_read for n in a.nodes] == [4 * (16 + 64), 4 * (16 + 64), 4 * (16 + 1)]  # reads count every use


def test_int8_bytes_and_dequantize():
    x = helper.make_tensor_value_info("q", TensorProto.INT8, [10])
    y = helper.make_tensor_value_info("y", F, None)
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(3, np.int8), "z")]
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "g", [x], [y], inits)
    a = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10))
    dq = node(a, "DequantizeLinear")
    assert dq.bytes_read == 10 * 1 + 4 + 1  # INT8 is one byte
    assert dq.bytes_written == 10 * 4
    assert dq.flops == 2 * 10


def test_every_listed_op_has_a_formula():
    ops = set(registered_ops())
    wanted = {"Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
              "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
              "Softmax", "Resize", "Relu", "Sigmoid", "Add", "Mul", "Clip", "Gelu", "Constant", "Reshape"}
    assert wanted <= ops


# ------------------------------------------------------------------ dynamic dims


def dynamic_conv() -> onnx.ModelProto:
    return conv_model(["N", 3, 8, 8], [4, 3, 3, 3], pads=[1, 1, 1, 1])


def test_dynamic_batch_defaults_to_one_and_scales_with_shapes():
    one = run(dynamic_conv())
    four = run(dynamic_conv(), {"x": [4, 3, 8, 8]})
    assert one.input_shapes == {"x": [1, 3, 8, 8]}
    assert one.totals["macs"] == 4 * 64 * 27
    assert four.totals["macs"] == 4 * one.totals["macs"]
    assert four.totals["flops"] == 4 * one.totals["flops"]
    assert four.totals["params"] == one.totals["params"]
    assert four.peak_activation_bytes == 4 * one.peak_activation_bytes


@pytest.mark.parametrize(("shapes", "message"), [
    ({"nope": [1, 3, 8, 8]}, "unknown input 'nope'"),
    ({"x": [1, 3, 8]}, "rank 3"),
    ({"x": [1, 5, 8, 8]}, "fixes it at 3"),
])
def test_bad_shapes_are_user_errors(shapes, message):
    with pytest.raises(UserError, match=message):
        analyze(dynamic_conv(), shapes)


def test_shapes_the_model_cannot_take_are_user_errors():
    model = conv_model(["N", 3, "H", "W"], [4, 3, 3, 3])  # no padding
    assert analyze(model, {"x": [1, 3, 5, 5]}).totals["macs"] == 4 * 9 * 27
    with pytest.raises(UserError, match="negative dim"):
        analyze(model, {"x": [1, 3, 1, 1]})  # a 3x3 kernel does not fit a 1x1 image
    unranked = conv_model(None, [4, 3, 3, 3])
    with pytest.raises(UserError, match="shape inference failed"):
        analyze(unranked, {"x": [1, 3, 5]})  # rank 3 into a 2-D conv
    with pytest.raises(UserError, match="no declared shape"):
        analyze(unranked)


def test_negative_declared_dims_are_dynamic():
    # paddle2onnx declares dynamic dims as -1 (inputs and outputs alike).
    model = make([helper.make_node("Relu", ["x"], ["y"])], [("x", [-1, 8])], ["y"])
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = -1
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 8
    assert analyze(model).input_shapes == {"x": [1, 8]}
    a = analyze(model, {"x": [3, 8]})
    assert a.totals["flops"] == 24 and a.summary["outputs"] == {"y": [3, 8]}


def test_dynamic_non_batch_dim_must_be_given():
    model = make([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", "seq", 8])], ["y"])
    with pytest.raises(UserError, match="dynamic dim seq at axis 1"):
        analyze(model)
    assert analyze(model, {"x": [2, 5, 8]}).totals["flops"] == 80


def test_analyze_leaves_the_model_unchanged():
    m = ir.serde.deserialize_model(dynamic_conv())
    before = ir.serde.serialize_model(m).SerializeToString()
    analyze(m, {"x": [2, 3, 8, 8]})
    assert ir.serde.serialize_model(m).SerializeToString() == before
