from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper

from slipway.passes import PASSES
from slipway.passes.qat_batchnorm import FoldQatBatchNorm, has_qdq
from tests.passes.util import copy, make, op_types, run, tensor

SX, SY = 0.02, 0.05  # input and output activation scales
# 7-bit weights, as quantize_qdq(reduce_range=True) makes them, so that the fused kernels give the
# same numbers on every CPU: without VNNI/AMX, onnxruntime's and OpenVINO's u8 x s8 kernels saturate
# int16 pair sums of full 8-bit weights (2 x 255 x 127 > 32767), which shows as 14 quantization steps
# of error on a few outputs of this very model (on AVX2; VNNI/AMX do not saturate).
QMAX = 63


def qdq(x: str, y: str, s: str, z: str, **attrs) -> list[onnx.NodeProto]:
    return [helper.make_node("QuantizeLinear", [x, s, z], [f"{y}_q"], name=f"{y}_Q", **attrs),
            helper.make_node("DequantizeLinear", [f"{y}_q", s, z], [y], name=f"{y}_DQ", **attrs)]


def qat_model(weight: str = "int8", bias: str | None = "int32", seed: int = 0, relu: bool = True) -> ir.Model:
    """x -> Q -> DQ -> Conv(W through DQ, bias) -> BatchNormalization [-> Relu] -> Q -> DQ -> y, as a
    PyTorch QAT export leaves it. ``weight``: int8 (per channel), fake (float -> Q -> DQ, per tensor)
    or uint8 (per tensor, zero point 128); ``bias``: int32 (through DQ), float or None. Some BN
    scales are negative."""
    r = np.random.default_rng(seed)
    c_out = 6
    w = (r.standard_normal((c_out, 4, 3, 3)) * 0.2).astype(np.float32)
    inits: dict[str, np.ndarray] = {
        "sx": np.array(SX, np.float32), "zx": np.array(0, np.int8),
        "sy": np.array(SY, np.float32), "zy": np.array(0 if relu else 128, np.uint8),
        "gamma": (r.standard_normal(c_out) * 1.5).astype(np.float32),
        "beta": r.standard_normal(c_out).astype(np.float32),
        "mean": (r.standard_normal(c_out) * 0.1).astype(np.float32), "var": (r.random(c_out) + 0.5).astype(np.float32),
    }
    inits["gamma"][:2] = [-0.7, -1.3]
    nodes = qdq("x", "xd", "sx", "zx")
    sw = (np.abs(w).reshape(c_out, -1).max(1) / QMAX).astype(np.float32)
    if weight == "int8":
        inits.update(Wq=np.clip(np.round(w / sw[:, None, None, None]), -QMAX, QMAX).astype(np.int8), sw=sw,
                     zw=np.zeros(c_out, np.int8))
        nodes.append(helper.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["Wd"], name="W_DQ", axis=0))
    elif weight == "fake":
        inits.update(W=w, sw=np.array(np.abs(w).max() / QMAX, np.float32), zw=np.array(0, np.int8))
        nodes += qdq("W", "Wd", "sw", "zw")
    else:
        s = np.float32((w.max() - w.min()) / 255)
        inits.update(Wq=np.clip(np.round(w / s) + 128, 0, 255).astype(np.uint8), sw=np.array(s),
                     zw=np.array(128, np.uint8))
        nodes.append(helper.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["Wd"], name="W_DQ"))
    conv_in = ["xd", "Wd"]
    b = r.standard_normal(c_out).astype(np.float32) * 0.1
    if bias == "int32":
        bs = (SX * sw).astype(np.float32) if weight == "int8" else np.float32(SX * inits["sw"])
        inits.update(Bq=np.round(b / bs).astype(np.int32), bs=bs, bz=np.zeros(bs.shape, np.int32))
        nodes.append(helper.make_node("DequantizeLinear", ["Bq", "bs", "bz"], ["Bd"], name="B_DQ", axis=0))
        conv_in.append("Bd")
    elif bias == "float":
        inits["B"] = b
        conv_in.append("B")
    nodes += [helper.make_node("Conv", conv_in, ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn")]
    if relu:
        nodes.append(helper.make_node("Relu", ["n"], ["r"], name="relu"))
    nodes += qdq("r" if relu else "n", "y", "sy", "zy")
    return make(nodes, [tensor("x", [1, 4, 8, 8])], [tensor("y", [1, c_out, 8, 8])], inits, opset=13)


def feed(seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 4, 8, 8)).astype(np.float32)}


def assert_within_one_step(before: ir.Model, after: ir.Model) -> None:
    """The folded model matches to one output quantization step (a rounding tie may flip), rarely."""
    onnx.checker.check_model(ir.serde.serialize_model(after), full_check=True)
    for seed in range(3):
        a, b = run(before, feed(seed))[0], run(after, feed(seed))[0]
        diff = np.abs(a - b)
        assert diff.max() <= SY * 1.001
        assert (diff > 1e-6).mean() < 0.01


def test_registered_and_documented():
    registered = PASSES["fold-qat-batchnorm"]()
    assert "->" in registered.summary and "->" in FoldQatBatchNorm().summary
    model = qat_model("int8", "float")
    assert registered(copy(model)).changes == FoldQatBatchNorm()(model).changes


@pytest.mark.parametrize("bias", ["int32", "float", None])
def test_int8_weight_fold_is_a_rescale(bias):
    model = qat_model("int8", bias)
    before = copy(model)
    result = FoldQatBatchNorm()(model)
    assert result.changes == {"BatchNormalization(Conv(DequantizeLinear)) rescaled": 1}
    assert "BatchNormalization" not in op_types(model)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    wdq, bdq = conv.inputs[1].producer(), conv.inputs[2].producer()
    assert wdq.op_type == "DequantizeLinear" and wdq.attributes["axis"].as_int() == 0
    wq = wdq.inputs[0].const_value.numpy()
    old_q = before.graph.initializers["Wq"].const_value.numpy()
    gamma = before.graph.initializers["gamma"].const_value.numpy()
    np.testing.assert_array_equal(np.abs(wq), np.abs(old_q))  # same levels, sign flipped where gamma < 0
    np.testing.assert_array_equal(wq[:2], -old_q[:2])
    assert gamma[0] < 0 and np.all(wdq.inputs[1].const_value.numpy() > 0)
    if bias == "int32":  # requantized at input scale x new weight scale
        assert bdq.op_type == "DequantizeLinear" and bdq.inputs[0].const_value.numpy().dtype == np.int32
        np.testing.assert_allclose(bdq.inputs[1].const_value.numpy(), SX * wdq.inputs[1].const_value.numpy(),
                                   rtol=1e-6)
    else:  # a float bias (or none) folds to a float bias
        assert bdq is None and conv.inputs[2].const_value.numpy().dtype == np.float32
    assert "Wq" not in model.graph.initializers and "gamma" not in model.graph.initializers
    assert_within_one_step(before, model)


def test_fake_quantized_float_weight():
    model = qat_model("fake", "float")
    before = copy(model)
    assert FoldQatBatchNorm()(model).changes == {"BatchNormalization(Conv(DequantizeLinear)) rescaled": 1}
    assert op_types(model).count("QuantizeLinear") == 2  # x and y; the weight's Q became an int8 initializer
    assert "W" not in model.graph.initializers
    assert_within_one_step(before, model)


def test_uint8_weight_is_requantized():
    model = qat_model("uint8", "int32", relu=False)
    before = copy(model)
    assert FoldQatBatchNorm()(model).changes == {"BatchNormalization(Conv(DequantizeLinear)) requantized": 1}
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert conv.inputs[1].producer().inputs[0].const_value.numpy().dtype == np.int8
    a, b = run(before, feed())[0], run(model, feed())[0]
    assert np.abs(a - b).max() <= 3 * SY  # requantizing the folded weight adds its own rounding
    assert np.mean(np.abs(a - b)) < 0.2 * SY


def test_fused_by_onnxruntime_after_fold(tmp_path):
    model = qat_model("int8", "int32")
    FoldQatBatchNorm()(model)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert "QLinearConv" in ops and "BatchNormalization" not in ops and "Conv" not in ops
    np.testing.assert_allclose(sess.run(None, feed())[0], run(model, feed())[0], atol=SY * 1.001)


def test_skips_shared_conv_output_and_float_weights():
    model = qat_model("int8", "int32")
    conv = next(n for n in model.graph if n.op_type == "Conv")
    model.graph.outputs.append(conv.outputs[0])
    pass_ = FoldQatBatchNorm()
    assert any("also used by a graph output" in line for line in pass_.explain(model))
    result = pass_(model)
    assert not result.modified and result.warnings
    plain = make([helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
                  helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")],
                 [tensor("x", [1, 2, 4, 4])], [tensor("y", [1, 2, 2, 2])],
                 {"W": np.ones((2, 2, 3, 3), np.float32), **{k: np.ones(2, np.float32) for k in "gbmv"}})
    assert not FoldQatBatchNorm()(plain).modified  # a float weight is fuse-batchnorm's job


def test_has_qdq():
    assert has_qdq(qat_model())
    assert not has_qdq(make([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1])], [tensor("y", [1])]))


def test_optimize_keeps_qdq():
    from slipway.optimize import optimize

    model = qat_model("int8", "float")
    skipped = optimize(model, None, speed_check=False, skip=["fold-qat-batchnorm"])  # fuse-batchnorm cannot
    ops = op_types(skipped.model)
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 3 and "BatchNormalization" in ops
    result = optimize(model, None, speed_check=False)  # the default pipeline folds it through the Q/DQ
    assert result.to_dict()["passes"]["fold-qat-batchnorm"] == 1 and result.verification.ok
    ops = op_types(result.model)
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 3
    assert "BatchNormalization" not in ops
    np.testing.assert_allclose(run(result.model, feed())[0], run(model, feed())[0], atol=SY * 1.001)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_runs_in_openvino():
    from slipway import backends

    model = qat_model("int8", "int32")
    FoldQatBatchNorm()(model)
    session = backends.load(model, "openvino")
    try:
        out = session.run(feed())
    finally:
        session.close()
    out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    np.testing.assert_allclose(np.asarray(out), run(model, feed())[0], atol=2 * SY)


def torch_qat_export(tmp_path) -> ir.Model:
    """An eager-mode PyTorch QAT model (QuantStub -> Conv -> BN -> ReLU) exported with the TorchScript
    exporter: per-channel fake-quantized weights (float -> Q -> DQ) and a Q/DQ between Conv and BN."""
    import torch
    import torch.ao.quantization as tq

    torch.manual_seed(0)
    model = torch.nn.Sequential(tq.QuantStub(), torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), tq.DeQuantStub())
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(8))  # some negative BN scales
    fake = tq.FakeQuantize.with_args
    model.qconfig = tq.QConfig(
        activation=fake(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8),
        weight=fake(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    model.train()
    tq.prepare_qat(model, inplace=True)
    with torch.no_grad():
        for _ in range(4):  # observers and BN statistics see data
            model(torch.randn(4, 3, 16, 16))
    model.eval()
    model.apply(tq.disable_observer)
    path = tmp_path / "qat.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), opset_version=13, dynamo=False,
                      input_names=["x"], output_names=["y"])
    return ir.load(path)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_pytorch_qat_export(tmp_path):
    model = torch_qat_export(tmp_path)
    assert op_types(model).count("BatchNormalization") == 1 and op_types(model).count("QuantizeLinear") == 4
    before = copy(model)
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    params = [n.const_value.numpy() for n in bn.inputs[1:]]
    bn_scale = np.abs(params[0] / np.sqrt(params[3] + 1e-5))
    step_between = bn.inputs[0].producer().inputs[1].const_value.numpy().item()  # the Q/DQ dropped with the BN
    step_out = next(iter(bn.outputs[0].uses())).node.inputs[1].const_value.numpy().item()
    w_q = next(n for n in model.graph if n.op_type == "QuantizeLinear" and n.inputs[0].is_initializer())
    w_scale = w_q.inputs[1].const_value.numpy()[:, None, None, None]
    levels = np.clip(np.round(w_q.inputs[0].const_value.numpy() / w_scale), -128, 127)
    result = FoldQatBatchNorm()(model)
    # PyTorch's weights use -128, which cannot flip sign: those channels (negative BN scale) are requantized
    how = "requantized" if np.any((levels.min(axis=(1, 2, 3)) == -128) & (params[0] < 0)) else "rescaled"
    assert result.changes == {f"BatchNormalization(QDQ(Conv(DequantizeLinear))) {how}": 1}
    assert op_types(model) == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv", "QuantizeLinear",
                               "DequantizeLinear", "Relu"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    tolerance = step_out + 0.5 * step_between * bn_scale.max() + 0.05 * step_out  # + requantized weights
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    a, b = run(before, x)[0], run(model, x)[0]
    assert np.abs(a - b).max() <= tolerance * 1.001
    assert np.abs(a - b).mean() < 0.1 * step_out


def test_analyze_counts_int8_weights_as_one_byte():
    from slipway.analyze import analyze

    model = qat_model("int8", "int32")
    FoldQatBatchNorm()(model)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    wdq = conv.inputs[1].producer()
    costs = {n.name: n for n in analyze(ir.serde.serialize_model(model)).nodes}
    wq, scale, zp = (v.const_value.numpy() for v in wdq.inputs)
    assert wq.dtype == np.int8 and costs[wdq.name].params == wq.size + scale.size + zp.size
    assert costs[wdq.name].bytes_read == wq.size * 1 + scale.size * 4 + zp.size * 1
